using Spt.Ir;
using Spt.Passes.Tests.Training;
using Spt.Passes.Training;
using Spt.Runtime;
using Xunit.Abstractions;

namespace Spt.Passes.Tests;

/// <summary>
/// The recognition-zoo fixtures (manifest <c>suite: recognition</c>, and the sliding-window mask) past the exact proof: the sparse rewrite (default
/// options, LoRA 4) runs in ORT with finite outputs, and a few AdamW steps of its training graphs on one batch lower
/// the loss (causal LM on logits, MSE to a fixed target on hidden states).
/// </summary>
public class FixtureSparseTrainingTests(ITestOutputHelper output)
{
    public static TheoryData<string> Models()
    {
        var data = new TheoryData<string>();
        foreach (var file in Fixtures.Names)
        {
            var entry = Fixtures.Entry(file);
            if ((entry.TryGetProperty("suite", out var suite) && suite.GetString() == "recognition") || entry.TryGetProperty("attention_window", out _))
                data.Add(file);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void SparseRewriteRunsAndTrainingLowersTheLoss(string file)
    {
        using var model = Fixtures.Load(file);
        var report = SptOptimizer.Optimize(model, new SptOptions { LoraRank = 4, TopKRatio = 0.5 });
        var entry = Fixtures.Entry(file);
        Assert.Equal(entry.GetProperty("attention_blocks").GetInt32(), report.AttentionRewritten);
        Assert.Equal(entry.GetProperty("ffn_blocks").GetInt32(), report.FfnRewritten);

        var generated = InputGenerator.Generate(model, new InputGeneratorOptions { Batch = 2, Sequence = 8, Seed = 5 });
        var run = TestSupport.Run(Model.FromBytes(model.ToBytes()), generated);
        Assert.All(run, o => Assert.True(o.Value.Floats!.All(float.IsFinite), $"output {o.Key} is not finite"));

        bool lm = model.Graph.Outputs[0].Name == "logits";
        var art = TrainingCompiler.Compile(model, new TrainingOptions { Loss = lm ? LossKind.CausalLm : LossKind.Mse });
        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, data) in generated)
            feeds[name] = Tensor.Create(name, data.Longs!, data.Shape);
        if (lm)
        {
            feeds["labels"] = feeds["input_ids"];
        }
        else
        {
            var shape = run[0].Value.Shape;
            var rng = new Random(3);
            float[] target = [.. Enumerable.Range(0, (int)shape.Aggregate(1L, (a, b) => a * b)).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
            feeds["target"] = Tensor.Create("target", target, shape);
        }
        var trainable = art.Parameters.Where(p => p.Trainable).ToList();
        var state = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var p in art.Parameters)
            feeds[p.Name] = model.Graph.FindValue(p.Name)!.Initializer!;
        foreach (var p in trainable)
        {
            var zeros = Tensor.Create("", new float[p.Shape.Aggregate(1L, (a, b) => a * b)], [.. p.Shape]);
            state["m." + p.Name] = zeros;
            state["v." + p.Name] = zeros;
        }
        using var grad = new OrtRunner(art.Grad, customOps: true);
        using var opt = new OrtRunner(art.Optimizer);
        var losses = new List<double>();
        for (int step = 1; step <= 8; step++)
        {
            foreach (var p in trainable)
                feeds[ArtifactContract.Accumulator(p.Name)] = Tensor.Create("", new float[p.Shape.Aggregate(1L, (a, b) => a * b)], [.. p.Shape]);
            var outs = grad.Run(feeds);
            losses.Add(outs["task_loss"].ToFloatArray()[0]);
            var optFeeds = new Dictionary<string, Tensor>(StringComparer.Ordinal)
            {
                ["lr"] = Tensor.Scalar("", 1e-2f),
                ["step"] = Tensor.Scalar("", (float)step),
                ["grad_scale"] = Tensor.Scalar("", 1f),
            };
            foreach (var p in trainable)
            {
                optFeeds[p.Name] = feeds[p.Name];
                optFeeds["grad." + p.Name] = outs[ArtifactContract.AccumulatorOutput(p.Name)];
                optFeeds["m." + p.Name] = state["m." + p.Name];
                optFeeds["v." + p.Name] = state["v." + p.Name];
            }
            var updated = opt.Run(optFeeds);
            foreach (var p in trainable)
            {
                feeds[p.Name] = updated["new." + p.Name];
                state["m." + p.Name] = updated["new.m." + p.Name];
                state["v." + p.Name] = updated["new.v." + p.Name];
            }
        }
        output.WriteLine($"{file}: task loss {string.Join(" ", losses.Select(l => l.ToString("0.0000", System.Globalization.CultureInfo.InvariantCulture)))}");
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));
        Assert.True(losses[^1] < losses[0], $"loss did not go down: {losses[0]} -> {losses[^1]}");
    }
}
