using Spt.Ir;
using Spt.Passes.Lora;
using Spt.Passes.Training;

namespace Spt.Passes.Tests;

/// <summary>The parameter set that `optimize --lora` records for training (spec §1), on real exports.</summary>
public class SptParameterSetTests
{
    // y = x·Wᵀ + b as torch exports Linear on 3-D input: Transpose(W [out, in]) then MatMul, bias first in the Add.
    [Fact]
    public void LoraAdaptsTransposedExportWeights()
    {
        var rng = new Random(5);
        float[] Rand(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5))];
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 8);
        var w = b.Initializer("proj.weight", Rand(6 * 8), 6, 8);
        var bias = b.Initializer("proj.bias", Rand(6), 6);
        var wt = b.Op("Transpose", [w], ("perm", new long[] { 1, 0 }));
        b.Output(b.Op("Add", bias, b.Op("MatMul", x, wt)), "y");

        var result = TestSupport.AssertSameOutputs(b.Build(),
            m => Assert.True(new LoraPass(new LoraOptions { Rank = 3 }).Run(m, new PassContext())));

        Assert.Equal([8L, 3L], result.Graph.FindValue("proj.weight_lora_A")!.Initializer!.Dims);
        Assert.Equal([3L, 6L], result.Graph.FindValue("proj.weight_lora_B")!.Initializer!.Dims);
        Assert.Equal(["proj.weight", "proj.bias"], LoraPass.ReadList(result, LoraPass.FrozenKey));
    }

    [Theory]
    [InlineData("opt_op17.onnx", 8)]
    [InlineData("bert_mask_op14.onnx", 8)]
    [InlineData("llama_op17.onnx", 4)]
    public void OptimizeWithLoraRecordsTheSptParameterSet(string fixture, int codewordDim)
    {
        using var model = Fixtures.Load(fixture);
        var report = SptOptimizer.Optimize(model, new SptOptions { LoraRank = 4, CodewordDim = codewordDim });
        Assert.Equal(report.Attention.Count, report.Attention.Count(a => a.Rewritten));

        var trainable = LoraPass.ReadList(model, LoraPass.TrainableKey).ToHashSet();
        var frozen = LoraPass.ReadList(model, LoraPass.FrozenKey).ToHashSet();
        Assert.Empty(trainable.Intersect(frozen));

        var nodes = model.Graph.Nodes.ToList();
        foreach (var ffn in nodes.Where(n => n.OpType == "RoutedFFN"))
        {
            Assert.Contains(Weight(ffn.Inputs[5]), trainable);  // router weight
            Assert.Contains(Weight(ffn.Inputs[1]), frozen);     // W1
            Assert.Contains(Weight(ffn.Inputs[3]), frozen);     // W2
            Assert.Contains(Weight(ffn.Inputs[8]), trainable);  // A1
        }

        foreach (var encode in nodes.Where(n => n.OpType == "PQEncode"))
        {
            Assert.Contains(encode.Inputs[1]!.Name, trainable);  // codebook
        }

        // Every attention projection got LoRA factors and its base weight is frozen.
        var loraFactors = trainable.Where(n => n.Contains("_lora_")).ToList();
        Assert.True(loraFactors.Count >= 2 * 4 * report.Attention.Count, $"{loraFactors.Count} LoRA factors");
        // Norm parameters train (LayerNormalization at opset 17, decomposed LayerNorm at 14, RMSNorm in LLaMA).
        var norms = trainable.Where(n => n.Contains("norm", StringComparison.OrdinalIgnoreCase)).ToList();
        Assert.NotEmpty(norms);

        // The training compiler takes exactly this set as trainable.
        var selected = TrainingCompiler.SelectParameters(model).Where(p => p.Trainable).Select(p => p.Name).ToHashSet();
        Assert.Equal(trainable.Order(), selected.Order());
    }

    // The initializer behind a weight input, through the Transpose exporters put on Linear weights.
    private static string Weight(Value? input)
    {
        while (input is { IsInitializer: false, Producer: { OpType: "Transpose" } t })
        {
            input = t.Inputs[0];
        }

        Assert.True(input is { IsInitializer: true }, $"{input?.Name} is not an initializer");
        return input!.Name;
    }

    // Without --lora there is no metadata: RoutedFFN (frozen_base = 1) still must not ask for base-weight gradients,
    // also when the exporter reads the weight through a Transpose.
    [Theory]
    [InlineData("opt_op17.onnx")]
    [InlineData("ffn_silu_op14.onnx")]
    public void RoutedFfnBaseWeightsAreFrozenWithoutMetadata(string fixture)
    {
        using var model = Fixtures.Load(fixture);
        SptOptimizer.Optimize(model, new SptOptions());
        Assert.Empty(LoraPass.ReadList(model, LoraPass.TrainableKey));

        var parameters = TrainingCompiler.SelectParameters(model).ToDictionary(p => p.Name);
        var ffns = model.Graph.Nodes.Where(n => n.OpType == "RoutedFFN").ToList();
        Assert.NotEmpty(ffns);
        foreach (var ffn in ffns)
        {
            Assert.False(parameters[Weight(ffn.Inputs[1])].Trainable);
            Assert.False(parameters[Weight(ffn.Inputs[3])].Trainable);
            Assert.True(parameters[Weight(ffn.Inputs[5])].Trainable);
        }

        // Everything else keeps the default rule: e.g. the embedding trains.
        Assert.Contains(parameters.Values, p => p.Trainable && p.Shape.Count == 2 && !ffns.Any(f => f.Inputs.Any(i => i?.Name == p.Name)));
    }
}
