using Spt.Ir;
using Spt.Ir.Samples;
using Spt.Passes;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Training;
using Xunit.Abstractions;

namespace Spt.Runtime.Tests;

/// <summary>
/// Acceptance: on the embedded corpus both the dense sample decoder and its SPT rewrite learn, and after the same
/// steps on the same data order the SPT model's held-out loss is within 5% of the dense one (or better).
/// </summary>
public sealed class TrainingLearningTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-learning-tests-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_root))
        {
            Directory.Delete(_root, recursive: true);
        }
    }

    private static readonly SampleDecoderConfig Config = new(Layers: 2, DModel: 64, Heads: 4, DFf: 256, Vocab: 128, MaxSequence: 64, Seed: 1);

    [Fact]
    public void Dense_and_spt_models_learn_the_corpus_and_spt_eval_loss_is_within_5_percent()
    {
        var (train, eval) = Dataset.FromText(EmbeddedCorpus.Text, 64, "corpus").Split(0.1);
        var options = new TrainerOptions
        {
            Steps = 150,
            BatchSize = 8,
            LearningRate = 3e-3,
            WarmupSteps = 10,
            Schedule = LrScheduleKind.Cosine,
            Seed = 1,
            Device = ExecutionDevice.Cpu,
        };

        using var dense = SampleModels.TinyDecoder(Config);
        using var spt = SampleModels.TinyDecoder(Config);
        var report = SptOptimizer.Optimize(spt, new SptOptions { TopKRatio = 0.25, Blocks = 4, Active = 2, LoraRank = 16 });
        Assert.Equal(2, report.AttentionRewritten);
        Assert.Equal(2, report.FfnRewritten);

        var results = new Dictionary<string, (double EvalBefore, TrainingResult Result)>();
        foreach (var (name, model) in new[] { ("dense", dense), ("spt", spt) })
        {
            var dir = Path.Combine(_root, name);
            TrainingCompiler.CompileToDirectory(model, dir, new TrainingOptions { Loss = LossKind.CausalLm });
            using var trainer = new Trainer(dir, train, eval, options);
            var before = trainer.Evaluate().TaskLoss;
            var result = trainer.Run();
            results[name] = (before, result);
            output.WriteLine($"{name}: train loss {result.FirstLoss:0.0000} -> {result.FinalLoss:0.0000}, " +
                             $"eval loss {before:0.0000} -> {result.FinalEvalLoss:0.0000}, {result.Seconds:0.0} s, {result.TokensPerSecond:0} tokens/s");
        }

        foreach (var (name, (before, result)) in results)
        {
            Assert.True(result.FinalLoss < result.FirstLoss - 1.0, $"{name}: train loss {result.FirstLoss} -> {result.FinalLoss}");
            Assert.True(result.FinalEvalLoss < before - 1.0, $"{name}: eval loss {before} -> {result.FinalEvalLoss}");
        }

        var denseEval = results["dense"].Result.FinalEvalLoss!.Value;
        var sptEval = results["spt"].Result.FinalEvalLoss!.Value;
        output.WriteLine($"spt / dense eval loss = {sptEval / denseEval:0.0000}");
        Assert.True(sptEval <= denseEval * 1.05, $"SPT eval loss {sptEval} is more than 5% above the dense {denseEval}");
    }
}
