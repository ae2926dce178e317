using System.Text.Json;
using Spt.Ir;
using Spt.Passes.Training;

namespace Spt.Passes.Tests.Training;

/// <summary>The artifact directory, the parameter and data-input rules, the losses, LR schedules and inference export.</summary>
public sealed class TrainingCompilerTests
{
    [Fact]
    public void ArtifactDirectoryFollowsTheContract()
    {
        var model = Fixtures.LoadModel("gpt2_op17");
        string dir = Path.Combine(Path.GetTempPath(), "spt-training-" + Guid.NewGuid().ToString("N"));
        try
        {
            var art = TrainingCompiler.CompileToDirectory(model, dir, new TrainingOptions { FrozenPattern = @"^wpe\." , SourceName = "gpt2_op17.onnx" });
            foreach (var f in new[] { "training.json", "grad.onnx", "eval.onnx", "optimizer.onnx", "checkpoint/state.onnx" })
                Assert.True(File.Exists(Path.Combine(dir, f)), f);

            using var json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "training.json")));
            var root = json.RootElement;
            Assert.Equal("causal_lm", root.GetProperty("loss").GetProperty("kind").GetString());
            Assert.Equal(-100, root.GetProperty("loss").GetProperty("ignore_index").GetInt64());
            var roles = root.GetProperty("data_inputs").EnumerateArray().ToDictionary(d => d.GetProperty("name").GetString()!, d => d.GetProperty("role").GetString());
            Assert.Equal("input_ids", roles["input_ids"]);
            Assert.Equal("labels", roles["labels"]);
            var parameters = root.GetProperty("parameters").EnumerateArray().ToList();
            Assert.Equal(29, parameters.Count);
            Assert.False(parameters.Single(p => p.GetProperty("name").GetString() == "wpe.weight").GetProperty("trainable").GetBoolean());
            Assert.Equal(1.0, root.GetProperty("optimizer").GetProperty("max_grad_norm").GetDouble());

            using var grad = Model.Load(Path.Combine(dir, "grad.onnx"));
            var gradInputs = grad.Graph.Inputs.Select(v => v.Name).ToHashSet();
            var paramNames = art.Parameters.Select(p => p.Name).ToList();
            Assert.All(paramNames, n => Assert.Contains(n, gradInputs));
            Assert.DoesNotContain(grad.Graph.Initializers, v => paramNames.Contains(v.Name));
            Assert.Contains("h.0.attn.tril", grad.Graph.Initializers.Select(v => v.Name)); // buffers stay constants
            Assert.DoesNotContain("grad_acc.wpe.weight", gradInputs);
            Assert.Equal(["loss", "task_loss", .. art.Parameters.Where(p => p.Trainable).Select(p => "grad_acc_out." + p.Name)],
                grad.Graph.Outputs.Select(v => v.Name));
            Assert.All(grad.Graph.AllNodes(), n => Assert.True(n.IsDefaultDomain || n.Domain == "spt", n.Domain));

            using var eval = Model.Load(Path.Combine(dir, "eval.onnx"));
            Assert.Equal(["loss", "task_loss", "logits"], eval.Graph.Outputs.Select(v => v.Name));
            using var opt = Model.Load(Path.Combine(dir, "optimizer.onnx"));
            Assert.Equal(3 + 4 * 28, opt.Graph.Inputs.Count);
            Assert.Equal("grad_norm", opt.Graph.Outputs[^1].Name);
            using var state = Model.Load(Path.Combine(dir, "checkpoint", "state.onnx"));
            Assert.Empty(state.Graph.Nodes);
            Assert.Equal(29 + 2 * 28, state.Graph.Initializers.Count);
            Assert.Contains(state.Metadata, kv => kv.Key == "step" && kv.Value == "0");

            // Export: the checkpoint's values become the model's initializers.
            var changed = Tensor.Create("ln_f.bias", Enumerable.Repeat(0.25f, 32).ToArray(), 32);
            var stateModel = Model.Load(Path.Combine(dir, "checkpoint", "state.onnx"));
            stateModel.Graph.Edit().SetInitializer(stateModel.Graph.FindValue("ln_f.bias")!, changed);
            stateModel.Save(Path.Combine(dir, "checkpoint", "state.onnx"));
            stateModel.Dispose();
            InferenceExport.FromCheckpoint(model, dir, Path.Combine(dir, "inference.onnx"));
            using var exported = Model.Load(Path.Combine(dir, "inference.onnx"));
            Assert.All(exported.Graph.FindValue("ln_f.bias")!.Initializer!.ToFloatArray(), v => Assert.Equal(0.25f, v));
            Assert.Equal(model.Graph.Nodes.Count, exported.Graph.Nodes.Count);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void EvalGraphRunsDropoutInInferenceMode()
    {
        var model = Fixtures.LoadModel("dropout_train_op17");
        var art = TrainingCompiler.Compile(model);
        Assert.All(art.Eval.Graph.Nodes.Where(n => n.OpType == "Dropout"), n => Assert.True(n.Inputs.Count <= 2));
        Assert.Contains(art.Grad.Graph.Nodes, n => n.OpType == "Dropout" && n.Inputs.Count == 3);
        // Two eval runs agree (no randomness), two grad runs do not (training-mode dropout).
        var feeds = new Dictionary<string, Tensor>
        {
            ["input_ids"] = Tensor.Create("input_ids", new long[] { 1, 2, 3, 4, 5, 6 }, 1, 6),
            ["labels"] = Tensor.Create("labels", new long[] { 2, 3, 4, 5, 6 }, 1, 5),
        };
        foreach (var p in art.Parameters)
            feeds[p.Name] = model.Graph.FindValue(p.Name)!.Initializer!;
        using var eval = new OrtRunner(art.Eval);
        Assert.Equal(eval.Run(feeds)["loss"].ToFloatArray()[0], eval.Run(feeds)["loss"].ToFloatArray()[0]);
    }

    [Fact]
    public void ClassificationLossMatchesItsDefinition()
    {
        // logits [B, S, C] from a tiny model; loss = mean over counted rows of -log softmax(logits[:, 0])[label].
        var b = new GraphBuilder(17);
        var x = b.Input("features", ElementType.Float, "batch", 3, 4);
        var w = b.Initializer("w", Autodiff.GradientCheck.Random(20, -1, 1, 9), 4, 5);
        b.Output(b.Op("MatMul", x, w), "logits");
        var model = b.Build();
        var art = TrainingCompiler.Compile(model, new TrainingOptions { Loss = LossKind.Classify });
        Assert.Equal("label", art.DataInputs[^1].Name);
        var features = Autodiff.GradientCheck.Random(2 * 3 * 4, -1, 1, 5);
        var feeds = new Dictionary<string, Tensor>
        {
            ["features"] = Tensor.Create("features", features, 2, 3, 4),
            ["label"] = Tensor.Create("label", new long[] { 3, -100 }, 2),
            ["w"] = model.Graph.FindValue("w")!.Initializer!,
        };
        using var eval = new OrtRunner(art.Eval);
        var outs = eval.Run(feeds);
        var logits = outs["logits"].ToFloatArray();
        double max = logits.Take(5).Max();
        double lse = Math.Log(logits.Take(5).Sum(v => Math.Exp(v - max))) + max;
        Assert.Equal(lse - logits[3], outs["loss"].ToFloatArray()[0], 5);
    }

    [Fact]
    public void AModelWhoseOutputCannotFeedTheLossIsReported()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", 4);
        b.Output(b.Op("MatMul", x, b.Initializer("w", new float[8], 4, 2)), "y");
        var ex = Assert.Throws<OnnxModelException>(() => TrainingCompiler.Compile(b.Build(), new TrainingOptions { Loss = LossKind.CausalLm }));
        Assert.Contains("rank 2", ex.Message);
    }

    [Fact]
    public void LrSchedulesFollowTheirFormulas()
    {
        var constant = LrSchedule.Constant(1e-3);
        Assert.Equal(1e-3, constant.At(1));
        Assert.Equal(1e-3, constant.At(1000));
        var linear = LrSchedule.Linear(1.0, warmupSteps: 10, totalSteps: 110);
        Assert.Equal(0.1, linear.At(1), 12);
        Assert.Equal(1.0, linear.At(10), 12);
        Assert.Equal(0.5, linear.At(60), 12);
        Assert.Equal(0.0, linear.At(110), 12);
        Assert.Equal(0.0, linear.At(200), 12);
        var cosine = LrSchedule.Cosine(2.0, warmupSteps: 0, totalSteps: 100, minRatio: 0.1);
        Assert.Equal(2.0, cosine.At(1) , 2);
        Assert.Equal(2.0 * (0.1 + 0.9 * 0.5), cosine.At(50), 12);
        Assert.Equal(0.2, cosine.At(100), 12);
        Assert.Equal(LrScheduleKind.Cosine, LrSchedule.Parse("cosine", 1, 0, 10).Kind);
        Assert.Throws<ArgumentException>(() => LrSchedule.Parse("step", 1, 0, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => constant.At(0));
    }

    [Fact]
    public void GradientClippingScalesByTheGlobalNorm()
    {
        var opt = AdamWGraph.Build([("a", [2]), ("b", [1])], new AdamWOptions { MaxGradNorm = 1f, WeightDecay = 0f });
        using var run = new OrtRunner(opt);
        var outs = run.Run(new Dictionary<string, Tensor>
        {
            ["lr"] = Tensor.Scalar("", 0.1f), ["step"] = Tensor.Scalar("", 1f), ["grad_scale"] = Tensor.Scalar("", 0.5f),
            ["a"] = Tensor.Create("", new[] { 1f, 1f }, 2), ["grad.a"] = Tensor.Create("", new[] { 6f, 0f }, 2),
            ["m.a"] = Tensor.Create("", new[] { 0f, 0f }, 2), ["v.a"] = Tensor.Create("", new[] { 0f, 0f }, 2),
            ["b"] = Tensor.Create("", new[] { 1f }, 1), ["grad.b"] = Tensor.Create("", new[] { 8f }, 1),
            ["m.b"] = Tensor.Create("", new[] { 0f }, 1), ["v.b"] = Tensor.Create("", new[] { 0f }, 1),
        });
        // scaled grads (3, 0) and (4): norm 5; clipped by 1/5 to (0.6, 0), (0.8); m = 0.1 g, v = 0.001 g^2.
        Assert.Equal(5f, outs["grad_norm"].ToFloatArray()[0], 5);
        Assert.Equal(0.06f, outs["new.m.a"].ToFloatArray()[0], 6);
        Assert.Equal(0.08f, outs["new.m.b"].ToFloatArray()[0], 6);
        Assert.Equal(0.00064f, outs["new.v.b"].ToFloatArray()[0], 7);
        // First Adam step moves each coordinate with a nonzero gradient by about lr.
        Assert.Equal(0.9f, outs["new.a"].ToFloatArray()[0], 4);
        Assert.Equal(1f, outs["new.a"].ToFloatArray()[1], 6);
    }

    [Fact]
    public void The_gradient_scale_applies_to_the_norm_and_the_update_without_clipping()
    {
        var opt = AdamWGraph.Build([("a", [2]), ("b", [1])], new AdamWOptions { MaxGradNorm = 0f, WeightDecay = 0f });
        using var run = new OrtRunner(opt);
        var outs = run.Run(new Dictionary<string, Tensor>
        {
            ["lr"] = Tensor.Scalar("", 0.1f), ["step"] = Tensor.Scalar("", 1f), ["grad_scale"] = Tensor.Scalar("", 0.25f),
            ["a"] = Tensor.Create("", new[] { 1f, 1f }, 2), ["grad.a"] = Tensor.Create("", new[] { 12f, 0f }, 2),
            ["m.a"] = Tensor.Create("", new[] { 0f, 0f }, 2), ["v.a"] = Tensor.Create("", new[] { 0f, 0f }, 2),
            ["b"] = Tensor.Create("", new[] { 1f }, 1), ["grad.b"] = Tensor.Create("", new[] { 16f }, 1),
            ["m.b"] = Tensor.Create("", new[] { 0f }, 1), ["v.b"] = Tensor.Create("", new[] { 0f }, 1),
        });
        // scaled grads (3, 0) and (4): norm 5, not clipped; m = 0.1 g, v = 0.001 g^2.
        Assert.Equal(5f, outs["grad_norm"].ToFloatArray()[0], 5);
        Assert.Equal(0.3f, outs["new.m.a"].ToFloatArray()[0], 6);
        Assert.Equal(0.4f, outs["new.m.b"].ToFloatArray()[0], 6);
        Assert.Equal(0.016f, outs["new.v.b"].ToFloatArray()[0], 6);
        Assert.Equal(0.9f, outs["new.b"].ToFloatArray()[0], 4);
    }
}

/// <summary>compile-training over every fixture model: stock-op models compile; contrib-op models fail naming the op.</summary>
public sealed class FixtureCoverageTests
{
    [Fact]
    public void EveryStockFixtureCompilesAndContribOpsAreNamed()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.Root, "manifest.json")));
        int compiled = 0;
        foreach (var m in doc.RootElement.GetProperty("models").EnumerateArray())
        {
            string file = m.GetProperty("file").GetString()!;
            using var model = Model.Load(Path.Combine(Fixtures.Root, file));
            var contrib = model.Graph.Nodes.FirstOrDefault(n => !n.IsDefaultDomain);
            var attention23 = model.Graph.Nodes.FirstOrDefault(n => n.IsDefaultDomain && n.OpType == "Attention");
            if (contrib != null || attention23 != null)
            {
                var ex = Assert.Throws<OnnxModelException>(() => TrainingCompiler.Compile(model));
                Assert.Contains((contrib ?? attention23)!.OpType, ex.Message);
                continue;
            }
            var art = TrainingCompiler.Compile(model);
            Assert.Equal(art.Parameters.Count(p => p.Trainable) + 2, art.Grad.Graph.Outputs.Count);
            compiled++;
        }
        Assert.True(compiled >= 30, $"only {compiled} fixtures compiled");
    }
}
