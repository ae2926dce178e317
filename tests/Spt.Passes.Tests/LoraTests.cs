using System.Text.RegularExpressions;
using Spt.Ir;
using Spt.Passes.Canonicalization;
using Spt.Passes.Lora;

namespace Spt.Passes.Tests;

public class LoraTests
{
    // h = x·W1 + b1 (bias first, as the exporter writes it); s = h·hᵀ-like activation product; y = h·W2
    private static Model Mlp()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 8);
        var w1 = b.Initializer("fc1.weight", TestValues.Uniform(32, 1), 8, 4);
        var b1 = b.Initializer("fc1.bias", TestValues.Uniform(4, 2), 4);
        var h = b.Op("Add", b1, b.Op("MatMul", x, w1));
        var scores = b.Op("MatMul", h, b.Op("Transpose", [h], ("perm", new long[] { 0, 2, 1 })));
        var w2 = b.Initializer("fc2.weight", TestValues.Uniform(24, 3), 4, 6);
        var y = b.Op("MatMul", b.Op("Relu", h), w2);
        b.Output(y, "y").Output(scores, "scores");
        return b.Build();
    }

    [Fact]
    public void AddsZeroInitializedFactorsAndKeepsOutputs()
    {
        var result = TestSupport.AssertSameOutputs(Mlp(), m => Assert.True(new LoraPass(new LoraOptions { Rank = 2, Seed = 3 }).Run(m, new PassContext())));
        // Two Linear layers adapted: 2 new MatMuls and 1 Add each; the scores MatMul is not a Linear layer.
        Assert.Equal(3 + 4, TestSupport.Count(result, "MatMul"));
        Assert.Equal(1 + 2, TestSupport.Count(result, "Add"));
        var a = result.Graph.FindValue("fc1.weight_lora_A")!.Initializer!;
        var bFactor = result.Graph.FindValue("fc1.weight_lora_B")!.Initializer!;
        Assert.Equal([8L, 2L], a.Dims);
        Assert.Equal([2L, 4L], bFactor.Dims);
        Assert.All(bFactor.ToFloatArray(), v => Assert.Equal(0f, v));
        Assert.Contains(a.ToFloatArray(), v => v != 0f);
        Assert.Equal(["fc1.weight", "fc1.bias", "fc2.weight"], LoraPass.ReadList(result, LoraPass.FrozenKey));
        Assert.Equal(["fc1.weight_lora_A", "fc1.weight_lora_B", "fc2.weight_lora_A", "fc2.weight_lora_B"], LoraPass.ReadList(result, LoraPass.TrainableKey));
        // The graph output keeps its name and now carries the adapted value.
        Assert.Equal("Add", result.Graph.Outputs[0].Producer!.OpType);
        Assert.Equal("y", result.Graph.Outputs[0].Name);
    }

    [Fact]
    public void NonZeroBChangesOutputs()
    {
        // The factor path is live: with B != 0 the output moves (so the equality above is not vacuous).
        var model = Mlp();
        new LoraPass(new LoraOptions { Rank = 2 }).Run(model, new PassContext());
        var inputs = Spt.Runtime.InputGenerator.Generate(model, new() { Sequence = 3 });
        var before = TestSupport.Run(model, inputs);
        var bValue = model.Graph.FindValue("fc2.weight_lora_B")!;
        model.Graph.Edit().SetInitializer(bValue, Tensor.Create("x", Enumerable.Repeat(0.5f, 12).ToArray(), 2, 6));
        var after = TestSupport.Run(model, inputs);
        Assert.False(Spt.Runtime.OutputComparison.Compare("y", before[0].Value, after[0].Value, 1e-3).WithinTolerance);
    }

    [Fact]
    public void FilterAndUnfrozenBase()
    {
        var model = Mlp();
        new LoraPass(new LoraOptions { Rank = 2, Include = new Regex("fc2"), FreezeBase = false }).Run(model, new PassContext());
        Assert.Null(model.Graph.FindValue("fc1.weight_lora_A"));
        Assert.NotNull(model.Graph.FindValue("fc2.weight_lora_A"));
        Assert.Empty(LoraPass.ReadList(model, LoraPass.FrozenKey));
        Assert.Contains("fc2.weight", LoraPass.ReadList(model, LoraPass.TrainableKey));
    }

    [Fact]
    public void ActivationProductIsNotALinearLayer()
    {
        var b = new GraphBuilder(17);
        var q = b.Input("q", ElementType.Float, 2, 4, 8);
        var k = b.Input("k", ElementType.Float, 2, 8, 4);
        b.Output(b.Op("MatMul", q, k), "s");
        var model = b.Build();
        var context = new PassContext();
        Assert.False(new LoraPass().Run(model, context));
        Assert.Contains(context.Diagnostics, d => d.Message.Contains("not a Linear layer"));
    }

    [Fact]
    public void WorksOnACanonicalizedFixtureAndMatchesOriginalNames()
    {
        using var model = Model.Load(TestSupport.Fixture("opt_op17.onnx"));
        var result = TestSupport.AssertSameOutputs(model, m =>
        {
            Canonicalize.Standard().Run(m);
            new LoraPass(new LoraOptions { Rank = 4, Include = new Regex(@"^layers\.0\.") }).Run(m, new PassContext());
        });
        // Layer 0 of OPT: q, k, v, out_proj, fc1, fc2 weights (read through their transposed copies).
        var frozen = LoraPass.ReadList(result, LoraPass.FrozenKey);
        Assert.Equal(12, frozen.Count);
        Assert.All(frozen, n => Assert.StartsWith("layers.0.", n));
        Assert.Equal(12, LoraPass.ReadList(result, LoraPass.TrainableKey).Count);
    }
}
