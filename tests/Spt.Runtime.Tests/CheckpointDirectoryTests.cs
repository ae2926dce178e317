using Spt.Ir;
using Spt.Runtime.Data;
using Spt.Runtime.Training;

namespace Spt.Runtime.Tests;

/// <summary>
/// The checkpoint-directory protocol: a run identity and a lock, fresh runs that refuse other runs' checkpoints,
/// keep-last over this run only, resume checks, fallback from a truncated newest checkpoint, deletions that leave no
/// half-deleted step directory, and corrupt metadata.
/// </summary>
public sealed class CheckpointDirectoryTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-ckdir-tests-" + Guid.NewGuid().ToString("N"));

    public CheckpointDirectoryTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Dir(string name) => Path.Combine(_root, name);

    private static Dataset Train(int seq = 32) => Dataset.FromText(EmbeddedCorpus.Text, seq, "corpus").Split(0.1).Train;

    private static TrainerOptions Options(string checkpoints, long steps, ulong seed = 7, int batch = 4, long every = 2, int keep = 2) => new()
    {
        Steps = steps,
        BatchSize = batch,
        LearningRate = 1e-2,
        CheckpointDir = checkpoints,
        CheckpointEvery = every,
        Keep = keep,
        Seed = seed,
        Device = ExecutionDevice.Cpu,
    };

    private string Artifact() => TrainingArtifacts.Bigram(Dir("a"));

    // A complete run to <steps> (checkpoints every 2 steps, the newest 2 kept) that lets go of the directory.
    private static void RunTo(string checkpoints, string artifact, long steps)
    {
        using var t = new Trainer(artifact, Train(), null, Options(checkpoints, steps));
        t.Run();
    }

    private static string[] StepDirs(string dir) => [.. Directory.GetDirectories(dir, "step-*").Select(Path.GetFileName).Order()!];

    [Fact]
    public void A_run_writes_its_identity_and_each_checkpoint_names_it()
    {
        var ck = Dir("ck");
        RunTo(ck, Artifact(), 4);

        var run = File.ReadAllText(Path.Combine(ck, CheckpointStore.RunFile));
        Assert.Contains("\"seed\": 7", run);
        Assert.Contains("\"batch\": 4", run);
        Assert.Contains("\"seq\": 32", run);
        Assert.Contains("\"config_hash\"", run);
        Assert.All(StepDirs(ck), s => Assert.Equal(run, File.ReadAllText(Path.Combine(ck, s, CheckpointStore.RunFile))));
    }

    [Fact]
    public void A_fresh_run_refuses_a_directory_with_another_runs_checkpoints_and_deletes_nothing()
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        RunTo(ck, artifact, 6);

        Assert.Equal(["step-00000004", "step-00000006"], StepDirs(ck));
        using var fresh = new Trainer(artifact, Train(), null, Options(ck, 3));
        var e = Assert.Throws<TrainingException>(() => fresh.Run());
        Assert.Contains("already holds checkpoints (steps 4..6)", e.Message);
        Assert.Contains("--resume", e.Message);
        Assert.Equal(["step-00000004", "step-00000006"], StepDirs(ck));
        Assert.Throws<TrainingException>(() => CheckpointStore.Preflight(ck, resume: false));
        CheckpointStore.Preflight(ck, resume: true);
    }

    [Fact]
    public void Keep_last_counts_only_this_runs_checkpoints()
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        RunTo(ck, artifact, 4);

        // A checkpoint of another run copied in (its run.json names another id) is neither counted nor deleted.
        var foreign = Path.Combine(ck, "step-00000099");
        CopyDirectory(Path.Combine(ck, "step-00000004"), foreign);
        File.WriteAllText(Path.Combine(foreign, CheckpointStore.RunFile), File.ReadAllText(Path.Combine(ck, CheckpointStore.RunFile)).Replace("\"run_id\": \"", "\"run_id\": \"other", StringComparison.Ordinal));

        using var resumed = new Trainer(artifact, Train(), null, Options(ck, 8));
        Assert.EndsWith("step-00000004", resumed.ResumeFromLatest());
        var result = resumed.Run();
        Assert.Equal(["step-00000006", "step-00000008", "step-00000099"], StepDirs(ck));
        Assert.EndsWith("step-00000008", result.LastCheckpoint);
        Assert.True(Directory.Exists(result.LastCheckpoint));
    }

    [Fact]
    public void Two_runs_on_one_directory_the_second_fails_with_one_line()
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        using var first = new Trainer(artifact, Train(), null, Options(ck, 2));
        first.Run(stopAfter: 1);  // holds the lock until disposed
        using var second = new Trainer(artifact, Train(), null, Options(ck, 2));
        var e = Assert.Throws<TrainingException>(() => second.ResumeFromLatest());
        Assert.Contains("is in use by another training process", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Throws<TrainingException>(() => CheckpointStore.Preflight(ck, resume: true));
        first.Dispose();
        CheckpointStore.Preflight(ck, resume: true);
    }

    [Fact]
    public void Resume_with_steps_not_beyond_the_checkpoint_is_an_error()
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        RunTo(ck, artifact, 6);

        using var resumed = new Trainer(artifact, Train(), null, Options(ck, 4));
        var e = Assert.Throws<TrainingException>(() => resumed.ResumeFromLatest());
        Assert.Contains("at step 6, so --steps 4 leaves nothing to train; give --steps above 6", e.Message);
    }

    [Theory]
    [InlineData("seed")]
    [InlineData("batch")]
    [InlineData("seq")]
    public void Resume_checks_seed_batch_and_sequence_against_the_run(string changed)
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        RunTo(ck, artifact, 4);

        var options = changed switch
        {
            "seed" => Options(ck, 8, seed: 8),
            "batch" => Options(ck, 8, batch: 2),
            _ => Options(ck, 8),
        };
        using var resumed = new Trainer(artifact, Train(changed == "seq" ? 16 : 32), null, options);
        var e = Assert.Throws<TrainingException>(() => resumed.ResumeFromLatest());
        Assert.Contains($"--{changed} ", e.Message);
        Assert.Contains("differs from the run being resumed", e.Message);
    }

    [Fact]
    public void A_truncated_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning()
    {
        var ck = Dir("ck");
        var artifact = Artifact();
        RunTo(ck, artifact, 6);

        var newest = Path.Combine(ck, "step-00000006", Checkpoint.FileName);
        var bytes = File.ReadAllBytes(newest);
        File.WriteAllBytes(newest, bytes[..(bytes.Length / 2)]);
        var warnings = new List<string>();
        using var resumed = new Trainer(artifact, Train(), null, Options(ck, 8));
        Assert.EndsWith("step-00000004", resumed.ResumeFromLatest(warnings.Add));
        Assert.Equal(4, resumed.Step);
        var warning = Assert.Single(warnings);
        Assert.Contains("step-00000006", warning);
        Assert.Contains("unreadable", warning);
        Assert.DoesNotContain('\n', warning);
    }

    [Fact]
    public void Old_checkpoints_are_deleted_by_renaming_away_and_stray_leftovers_are_cleaned_at_start()
    {
        var ck = Dir("ck");
        Directory.CreateDirectory(ck);
        // What a kill in the middle of deleting step 2 leaves: a renamed-away rest tagged with the dead process's id.
        var trash = Path.Combine(ck, $".step-00000002.sptc-{int.MaxValue}-{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(trash);
        File.WriteAllText(Path.Combine(trash, "half"), "x");
        RunTo(ck, Artifact(), 8);

        Assert.False(Directory.Exists(trash));
        Assert.Equal(["step-00000006", "step-00000008"], StepDirs(ck));
        Assert.All(StepDirs(ck), s => Assert.True(File.Exists(Path.Combine(ck, s, Checkpoint.FileName))));
        Assert.Empty(Directory.EnumerateFileSystemEntries(ck, "*.tmp"));

        // The deletion primitive: the directory is gone under its real name before its content is removed.
        var victim = Path.Combine(ck, "victim");
        Directory.CreateDirectory(victim);
        OutputCommit.DeleteDirectory(victim);
        Assert.False(Directory.Exists(victim));
        Assert.Empty(Directory.EnumerateFileSystemEntries(ck, "*.tmp"));
    }

    [Theory]
    [InlineData("step", "-4")]
    [InlineData("step", "abc")]
    [InlineData("data_position", "-1")]
    [InlineData("data_seed", "-3")]
    public void Checkpoint_metadata_out_of_range_is_a_training_error(string key, string value)
    {
        using var model = Checkpoint.Build([Ir.Tensor.Create("w", new float[] { 1 }, 1)], new TrainerState(3, 1, 0, 0, 0));
        var index = model.Metadata.Select((kv, i) => (kv, i)).First(p => p.kv.Key == key).i;
        model.Metadata[index] = new(key, value);
        var e = Assert.Throws<TrainingException>(() => Checkpoint.ReadState(model, 0));
        Assert.Contains($"'{key}'", e.Message);
        Assert.Contains(value, e.Message);
    }

    private static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from))
        {
            File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        }
    }
}
