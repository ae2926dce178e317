using Microsoft.ML.OnnxRuntime;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Training;
using Tensor = Spt.Ir.Tensor;

namespace Spt.Runtime.Tests;

/// <summary>The trainer on a hand-written bigram artifact: residency, accumulation, checkpoints, resume, divergence, export.</summary>
public sealed class TrainingTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-trainer-tests-" + Guid.NewGuid().ToString("N"));

    public TrainingTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Dir(string name) => Path.Combine(_root, name);

    private static (Dataset Train, Dataset Eval) Corpus(int seq = 32) => Dataset.FromText(EmbeddedCorpus.Text, seq, "corpus").Split(0.1);

    private static TrainerOptions Options(string? checkpoints = null, long steps = 20, double lr = 1e-2, int batch = 4, int accumulate = 1,
        long evalEvery = 0, long checkpointEvery = 0, string? metrics = null, LrScheduleKind schedule = LrScheduleKind.Cosine) => new()
        {
            Steps = steps,
            BatchSize = batch,
            Accumulate = accumulate,
            LearningRate = lr,
            WarmupSteps = 3,
            Schedule = schedule,
            EvalEvery = evalEvery,
            CheckpointDir = checkpoints,
            CheckpointEvery = checkpointEvery,
            Keep = 2,
            Seed = 7,
            MetricsPath = metrics,
            Device = ExecutionDevice.Cpu,
        };

    [Fact]
    public void Loss_decreases_and_eval_loss_is_reported()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var (train, eval) = Corpus();
        var metrics = Dir("metrics.jsonl");
        using var trainer = new Trainer(artifact, train, eval, Options(steps: 60, lr: 3e-2, evalEvery: 20, metrics: metrics));
        var (evalBefore, _) = trainer.Evaluate();
        var reports = new List<StepReport>();
        var result = trainer.Run(reports.Add);

        Assert.Equal(60, result.LastStep);
        Assert.Equal(Math.Log(256), result.FirstLoss, 0.05);  // near-uniform start
        Assert.True(result.FinalLoss < result.FirstLoss - 1.0, $"loss {result.FirstLoss} -> {result.FinalLoss}");
        Assert.NotNull(result.FinalEvalLoss);
        Assert.True(result.FinalEvalLoss < evalBefore - 1.0, $"eval loss {evalBefore} -> {result.FinalEvalLoss}");
        Assert.Equal([20L, 40, 60], reports.Where(r => r.EvalLoss is not null).Select(r => r.Step));
        var lines = File.ReadAllLines(metrics);
        Assert.Equal(60, lines.Length);
        Assert.Contains("\"eval_loss\"", lines[19]);
        Assert.Contains("\"grad_norm\"", lines[0]);
        Assert.Contains("\"tokens_per_s\"", lines[0]);
        Assert.True(trainer.MaxInUseBytes() > 0);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void Accumulating_micro_batches_equals_one_batch_of_their_total_size(int accumulate)
    {
        // One micro-batch per step keeps a single gradient accumulator, more ping-pong between two: both must give the
        // same sums, step after step.
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var (train, _) = Corpus();
        using var accumulated = new Trainer(artifact, train, null, Options(steps: 3, batch: 2, accumulate: accumulate));
        using var single = new Trainer(artifact, train, null, Options(steps: 3, batch: 2 * accumulate, accumulate: 1));
        var a = accumulated.Run();
        var s = single.Run();
        Assert.True(Math.Abs(s.FirstLoss - a.FirstLoss) < 1e-5, $"{s.FirstLoss} vs {a.FirstLoss}");
        Assert.True(Math.Abs(s.FinalLoss - a.FinalLoss) < 1e-5, $"{s.FinalLoss} vs {a.FinalLoss}");
        var pa = accumulated.ParameterTensors().Single(t => t.Name == "W").ToFloatArray();
        var ps = single.ParameterTensors().Single(t => t.Name == "W").ToFloatArray();
        Assert.True(pa.Zip(ps).Max(x => Math.Abs(x.First - x.Second)) < 1e-5);
    }

    [Fact]
    public void Resume_after_a_checkpoint_reaches_the_same_loss_as_a_straight_run()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var (train, eval) = Corpus();

        // 20 steps straight (epochs are 16 batches of 4, so the data order crosses an epoch boundary).
        using var straight = new Trainer(artifact, train, eval, Options(Dir("straight"), steps: 20));
        var reference = new List<StepReport>();
        straight.Run(reference.Add);

        // A run of 20 steps interrupted after 10 (checkpoint written), then a new trainer resumes and runs to 20.
        using (var first = new Trainer(artifact, train, eval, Options(Dir("split"), steps: 20, metrics: Dir("m.jsonl"))))
        {
            Assert.Equal(10, first.Run(stopAfter: 10).LastStep);
        }

        var resumedReports = new List<StepReport>();
        using var resumed = new Trainer(artifact, train, eval, Options(Dir("split"), steps: 20, metrics: Dir("m.jsonl")));
        Assert.EndsWith("step-00000010", resumed.ResumeFromLatest());
        Assert.Equal(10, resumed.Step);
        resumed.Run(resumedReports.Add);

        Assert.Equal(11, resumedReports[0].Step);
        for (var i = 0; i < 10; i++)
        {
            Assert.True(Math.Abs(reference[10 + i].Loss - resumedReports[i].Loss) <= 1e-6, $"step {11 + i}: {reference[10 + i].Loss} vs {resumedReports[i].Loss}");
        }

        Assert.Equal(reference[^1].Loss, resumedReports[^1].Loss);  // bit-identical on CPU
        Assert.Equal(reference[^1].EvalLoss, resumedReports[^1].EvalLoss);
        Assert.Equal(20, File.ReadAllLines(Dir("m.jsonl")).Length);
    }

    [Fact]
    public void A_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"), maxGradNorm: 0, weightDecay: 0);
        var (train, _) = Corpus();
        var checkpoints = Dir("ckpt");
        using var trainer = new Trainer(artifact, train, null,
            Options(checkpoints, steps: 50, lr: 1e30, checkpointEvery: 1, metrics: Dir("m.jsonl"), schedule: LrScheduleKind.Constant) with { WarmupSteps = 0 });
        var e = Assert.Throws<TrainingDivergedException>(() => trainer.Run());

        Assert.True(e.Step >= 2, $"diverged at step {e.Step}");
        Assert.Contains($"at step {e.Step}", e.Message);
        var store = new CheckpointStore(checkpoints, 2);
        var latest = store.Latest();
        Assert.NotNull(latest);
        Assert.Equal(latest, e.LastCheckpoint);
        Assert.EndsWith($"step-{e.Step - 1:D8}", latest);
        using var state = Model.Load(Path.Combine(latest!, Checkpoint.FileName));
        Assert.Equal(e.Step - 1, Checkpoint.ReadState(state, 0).Step);
        Assert.Contains("\"error\"", File.ReadAllLines(Dir("m.jsonl"))[^1]);
    }

    [Fact]
    public void A_non_finite_gradient_norm_leaves_the_state_of_the_last_good_step()
    {
        // The row of 'W' in the embedding is so large that a batch with a 'W' has a finite loss but a gradient whose
        // squared norm overflows: the optimizer runs, and its update must not become the current state.
        var (train, _) = Corpus();
        var rng = new Random(5);
        var embedding = Enumerable.Range(0, 256 * 8).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.2)).ToArray();
        for (var k = 0; k < 8; k++)
        {
            embedding[('W' * 8) + k] = k % 2 == 0 ? 1e21f : -1e21f;
        }

        var artifact = TrainingArtifacts.Bigram(Dir("a"), embedding: embedding);
        using var trainer = new Trainer(artifact, train, null, Options(steps: 50));
        var good = new List<Model>();
        try
        {
            var e = Assert.Throws<TrainingDivergedException>(() => trainer.Run(_ => good.Add(trainer.BuildCheckpoint())));

            Assert.Equal(ArtifactContract.GradNorm, e.Quantity);
            Assert.True(e.Step >= 3, $"diverged at step {e.Step}: the test wants good steps (both state buffers written) first");
            Assert.Equal(e.Step - 1, trainer.Step);
            Assert.Equal(e.Step - 1, good.Count);
            using var now = trainer.BuildCheckpoint();
            var last = good[^1].Graph.Initializers.ToDictionary(v => v.Name, v => v.Initializer!.ToFloatArray());
            Assert.Equal(["E", "m.E", "v.E", "W", "m.W", "v.W"], now.Graph.Initializers.Select(v => v.Name));
            foreach (var v in now.Graph.Initializers)
            {
                Assert.Equal(last[v.Name], v.Initializer!.ToFloatArray());
            }
        }
        finally
        {
            foreach (var m in good)
            {
                m.Dispose();
            }
        }
    }

    [Fact]
    public void A_trainer_without_held_out_data_still_evaluates_on_request()
    {
        // Without an eval set the eval session is created at the first evaluation; it must see the current parameters.
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var (train, eval) = Corpus();
        using var plain = new Trainer(artifact, train, null, Options(steps: 4));
        using var evaluating = new Trainer(artifact, train, eval, Options(steps: 4));
        plain.Run();
        evaluating.Run();
        Assert.True(plain.MaxInUseBytes() > 0);
        Assert.Equal(evaluating.Evaluate(eval), plain.Evaluate(eval));
        Assert.Throws<InvalidOperationException>(() => plain.Evaluate());
    }

    [Fact]
    public void Checkpoints_round_trip_and_only_the_newest_are_kept()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var (train, _) = Corpus();
        var checkpoints = Dir("ckpt");
        using var trainer = new Trainer(artifact, train, null, Options(checkpoints, steps: 6, checkpointEvery: 2));
        trainer.Run();

        var store = new CheckpointStore(checkpoints, 2);
        Assert.Equal([4L, 6], store.List().Select(c => c.Step));
        Assert.Empty(Directory.EnumerateFileSystemEntries(checkpoints, "*.tmp"));
        using var state = Model.Load(Path.Combine(store.Latest()!, Checkpoint.FileName));
        Assert.Empty(state.Graph.Nodes);
        Assert.Equal(["E", "m.E", "v.E", "W", "m.W", "v.W"], state.Graph.Initializers.Select(v => v.Name));
        var meta = state.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.Equal("6", meta["step"]);
        Assert.Equal("7", meta["data_seed"]);
        Assert.Equal("1", meta["spt.checkpoint.format"]);

        // Loading restores the values bit for bit (the first trainer lets go of the directory's lock first).
        var now = trainer.ParameterTensors().ToDictionary(t => t.Name, t => t.ToFloatArray());
        trainer.Dispose();
        using var reloaded = new Trainer(artifact, train, null, Options(checkpoints, steps: 7));
        reloaded.ResumeFromLatest();
        foreach (var t in reloaded.ParameterTensors())
        {
            Assert.Equal(now[t.Name], t.ToFloatArray());
        }
    }

    [Fact]
    public void Checkpoint_writes_are_atomic_and_leftovers_of_a_crash_are_ignored()
    {
        var checkpoints = Dir("ckpt");
        var store = new CheckpointStore(checkpoints, 3);
        // A crash in the middle of a write leaves a staging directory (named with the dead process's id) and, from
        // older versions, an incomplete step directory.
        var stale = Path.Combine(checkpoints, $".sptc-{int.MaxValue}-{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(Path.Combine(stale, "step-00000009"));
        Directory.CreateDirectory(Path.Combine(checkpoints, "step-00000009"));
        using var model = Checkpoint.Build([Tensor.Create("w", new float[] { 1, 2 }, 2)], new TrainerState(5, 1, 0, 3, 100));
        store.Save(model, 5);
        Assert.Equal([5L], store.List().Select(c => c.Step));

        // Rewriting a step replaces the directory as a whole.
        using var again = Checkpoint.Build([Tensor.Create("w", new float[] { 3, 4 }, 2)], new TrainerState(5, 1, 0, 3, 100));
        store.Save(again, 5);
        using var read = Model.Load(Path.Combine(store.Latest()!, Checkpoint.FileName));
        Assert.Equal(new float[] { 3, 4 }, read.Graph.Initializers.Single().Initializer!.ToFloatArray());
        Assert.Equal(new TrainerState(5, 1, 0, 3, 100), Checkpoint.ReadState(read, 0));
        Assert.Empty(Directory.EnumerateFileSystemEntries(checkpoints, "*.tmp"));
        Assert.False(Directory.Exists(stale));
    }

    [Fact]
    public void Frozen_parameters_stay_unchanged()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"), frozenEmbedding: true);
        var (train, _) = Corpus();
        using var trainer = new Trainer(artifact, train, null, Options(steps: 5));
        var before = trainer.ParameterTensors().ToDictionary(t => t.Name, t => t.ToFloatArray());
        trainer.Run();
        var after = trainer.ParameterTensors().ToDictionary(t => t.Name, t => t.ToFloatArray());
        Assert.Equal(before["E"], after["E"]);
        Assert.NotEqual(before["W"], after["W"]);
    }

    [Fact]
    public void Export_writes_the_source_model_with_trained_parameters()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"), vocab: 256, width: 8);
        var (train, _) = Corpus();
        using var trainer = new Trainer(artifact, train, null, Options(steps: 3));
        trainer.Run();

        // The source model: the same forward with E and W as initializers.
        var rng = new Random(3);
        var b = new GraphBuilder(17);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        var e = b.Initializer("E", [.. Enumerable.Range(0, 256 * 8).Select(_ => (float)rng.NextDouble())], 256, 8);
        var w = b.Initializer("W", [.. Enumerable.Range(0, 8 * 256).Select(_ => (float)rng.NextDouble())], 8, 256);
        b.Output(b.Op("MatMul", b.Op("Gather", [e, ids], ("axis", 0L)), w), "logits");
        var source = Dir("source.onnx");
        using (var m = b.Build())
        {
            m.Save(source);
        }

        var exported = Dir("out/fine-tuned.onnx");
        trainer.ExportInference(source, exported);
        using var model = Model.Load(exported);
        var trained = trainer.ParameterTensors().ToDictionary(t => t.Name, t => t.ToFloatArray());
        Assert.Equal(trained["E"], model.Graph.FindValue("E")!.Initializer!.ToFloatArray());
        Assert.Equal(trained["W"], model.Graph.FindValue("W")!.Initializer!.ToFloatArray());
        Assert.Contains(model.Metadata, kv => kv.Key == "spt.finetuned_steps" && kv.Value == "3");

        // It runs in ORT and agrees with eval.onnx's logits.
        using var session = new InferenceSession(exported);
        using var input = OrtValue.CreateTensorValueFromMemory(new long[] { 1, 2, 3 }, [1, 3]);
        using var outputs = session.Run(new RunOptions(), ["input_ids"], [input], ["logits"]);
        var logits = outputs[0].GetTensorDataAsSpan<float>().ToArray();
        var expected = Enumerable.Range(0, 256).Select(j => Enumerable.Range(0, 8).Sum(k => trained["E"][(1 * 8) + k] * trained["W"][(k * 256) + j])).ToArray();
        Assert.Equal(expected[17], logits[17], 4);

        // A model without the parameter is refused with its name.
        var other = new GraphBuilder(17);
        other.Output(other.Op("Identity", other.Input("x", ElementType.Float, 1)), "y");
        var otherPath = Dir("other.onnx");
        using (var m = other.Build())
        {
            m.Save(otherPath);
        }

        var error = Assert.Throws<TrainingException>(() => trainer.ExportInference(otherPath, Dir("x.onnx")));
        Assert.Contains("no initializer 'E'", error.Message);
    }

    [Fact]
    public void Token_ids_beyond_the_vocabulary_are_refused_with_the_place()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"), vocab: 100, width: 4);
        var (train, _) = Corpus();
        var e = Assert.Throws<DataException>(() => new Trainer(artifact, train, null, Options()));
        Assert.Contains("outside the model's vocabulary of 100", e.Message);
        Assert.Contains("embedding 'E'", e.Message);
        Assert.Contains("bytes ", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void A_missing_artifact_file_or_manifest_is_a_one_line_error()
    {
        var e = Assert.Throws<TrainingException>(() => new Trainer(Dir("nothing"), Corpus().Train, null, Options()));
        Assert.Contains("no training.json", e.Message);

        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        File.Delete(Path.Combine(artifact, "optimizer.onnx"));
        e = Assert.Throws<TrainingException>(() => new Trainer(artifact, Corpus().Train, null, Options()));
        Assert.Contains("optimizer.onnx is missing", e.Message);
    }

    [Fact]
    public void Options_are_checked_before_anything_runs()
    {
        var artifact = TrainingArtifacts.Bigram(Dir("a"));
        var e = Assert.Throws<TrainingException>(() => new Trainer(artifact, Corpus().Train, null, Options(batch: 0)));
        Assert.Contains("--batch", e.Message);
    }
}
