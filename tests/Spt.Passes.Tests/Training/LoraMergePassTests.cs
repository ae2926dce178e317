using Spt.Ir;
using Spt.Passes.Lora;
using Spt.Passes.Training;

namespace Spt.Passes.Tests.Training;

/// <summary>Folding LoRA factors into the base weights: structure, and the same outputs as the unmerged model.</summary>
public class LoraMergePassTests
{
    // y = Relu(x·W1 + b1)·Transpose(W2t) with W2 stored transposed [6, 4], as exporters write nn.Linear.
    private static Model Mlp()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 8);
        var h = b.Op("Add", b.Op("MatMul", x, b.Initializer("fc1.weight", TestValues.Uniform(32, 1), 8, 4)), b.Initializer("fc1.bias", TestValues.Uniform(4, 2), 4));
        var w2 = b.Op("Transpose", [b.Initializer("fc2.weight", TestValues.Uniform(24, 3), 6, 4)], ("perm", new long[] { 1, 0 }));
        b.Output(b.Op("MatMul", b.Op("Relu", h), w2), "y");
        return b.Build();
    }

    [Fact]
    public void Merged_model_has_no_factors_and_the_same_outputs_as_the_trained_factors()
    {
        var model = Mlp();
        new LoraPass(new LoraOptions { Rank = 2, Seed = 4 }).Run(model, new PassContext());
        // Trained factors: give every B a value (at initialization B = 0 and the test would be vacuous).
        var editor = model.Graph.Edit();
        var k = 10;
        foreach (var v in model.Graph.Initializers.Where(v => v.Name.EndsWith("_lora_B", StringComparison.Ordinal)).ToList())
            editor.SetInitializer(v, Tensor.Create(v.Name, TestValues.Uniform((int)v.Initializer!.ElementCount, k++), [.. v.Initializer.Dims]));
        Assert.Equal(2, model.Graph.Initializers.Count(v => v.Name.EndsWith("_lora_A", StringComparison.Ordinal)));

        var merged = TestSupport.AssertSameOutputs(model, m =>
        {
            var pass = new LoraMergePass();
            Assert.True(pass.Run(m, new PassContext()));
            Assert.Equal(2, pass.Merged);
        }, tolerance: 1e-5);
        Assert.DoesNotContain(merged.Graph.Initializers, v => v.Name.Contains("_lora", StringComparison.Ordinal));
        Assert.Equal(2, TestSupport.Count(merged, "MatMul"));
        Assert.Equal("y", merged.Graph.Outputs[0].Name);
        Assert.Empty(LoraPass.ReadList(merged, LoraPass.TrainableKey));
        Assert.False(new LoraMergePass().Run(merged, new PassContext()));
    }

    [Fact]
    public void A_shared_base_weight_is_left_unmerged()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", 4);
        var w = b.Initializer("w", TestValues.Uniform(16, 1), 4, 4);
        var y = b.Op("Add", b.Op("MatMul", x, w), b.Op("MatMul", b.Op("MatMul", x, b.Initializer("a", TestValues.Uniform(8, 2), 4, 2)), b.Initializer("bb", TestValues.Uniform(8, 3), 2, 4)));
        b.Output(b.Op("MatMul", y, w), "out");
        var model = b.Build();
        var context = new PassContext();
        Assert.False(new LoraMergePass().Run(model, context));
        Assert.Contains(context.Diagnostics, d => d.Message.Contains("has 2 readers"));
    }
}
