using System.Diagnostics;
using System.Text.Json.Nodes;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>Runs only where Open MPI's mpirun is on PATH (eng/setup.sh installs it, so CI runs these).</summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (Mpirun.Path is null)
        {
            Skip = "Open MPI's mpirun is not on PATH (install openmpi-bin libopenmpi-dev, as eng/setup.sh does)";
        }
    }
}

/// <summary>Starts the built sptc as N ranks with mpirun on this host.</summary>
internal sealed class Mpirun : IDisposable
{
    private readonly Process _process;
    private readonly Task<string> _stdout, _stderr;

    public Mpirun(int ranks, IEnumerable<string> args, IDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(Path!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // Tests run as root in CI: Open MPI refuses that unless told. The single-copy mechanism needs ptrace rights
        // that containers often lack; shared-memory copies through a buffer work everywhere.
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        start.Environment["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h ? h : "dotnet";
        foreach (var a in new[] { "-np", ranks.ToString(), "--oversubscribe", "--bind-to", "none", host, typeof(Program).Assembly.Location }.Concat(args))
        {
            start.ArgumentList.Add(a);
        }

        _process = Process.Start(start)!;
        _stdout = _process.StandardOutput.ReadToEndAsync();
        _stderr = _process.StandardError.ReadToEndAsync();
    }

    /// <summary>mpirun's full path, or null.</summary>
    public static string? Path { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Select(d => System.IO.Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    public bool HasExited => _process.HasExited;

    /// <summary>Waits for the job; returns its exit code and output, or fails after <paramref name="limit"/>.</summary>
    public (int ExitCode, string Out, string Err) Wait(TimeSpan limit)
    {
        if (!_process.WaitForExit(limit))
        {
            throw new TimeoutException($"mpirun did not finish within {limit.TotalSeconds} s");
        }

        _process.WaitForExit();
        return (_process.ExitCode, _stdout.Result, _stderr.Result);
    }

    /// <summary>The process id of rank <paramref name="rank"/> (a child of mpirun that the launcher told its rank).</summary>
    public int RankPid(int rank)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(System.IO.Path.GetFileName(dir), out var pid))
            {
                continue;
            }

            try
            {
                var stat = File.ReadAllText(System.IO.Path.Combine(dir, "stat"));
                var parent = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
                if (parent == _process.Id && File.ReadAllText(System.IO.Path.Combine(dir, "environ")).Split('\0').Contains($"OMPI_COMM_WORLD_RANK={rank}"))
                {
                    return pid;
                }
            }
            catch (IOException)
            {
            }
        }

        throw new InvalidOperationException($"rank {rank} of mpirun {_process.Id} not found");
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        _process.Dispose();
    }
}

/// <summary>
/// <c>mpirun -np N sptc train</c> on this host: N ranks of batch B/N train exactly like one process of batch B (same
/// data order, the token-weighted mean included), a killed or hung rank stops the others with a clear message, and a
/// killed run resumes exactly, with the same or a different number of ranks. The sample decoder at tiny sizes.
/// </summary>
public sealed class DataParallelTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);
    private readonly TempDir _dir = new();
    private readonly string _model;
    private readonly string _text;

    public DataParallelTests()
    {
        _model = _dir.File("m.onnx");
        var (code, _, err) = CliRunner.Run("sample", "--out", _model, "--layers", "1", "--d-model", "32", "--heads", "2", "--d-ff", "64", "--vocab", "256", "--max-seq", "32");
        Assert.True(code == 0, err);
        _text = _dir.File("d.txt");
        var rng = new Random(1);
        var words = "the quick brown fox jumps over a lazy dog while seven wizards hum".Split(' ');
        File.WriteAllText(_text, string.Join(' ', Enumerable.Range(0, 3000).Select(_ => words[rng.Next(words.Length)])));
    }

    public void Dispose() => _dir.Dispose();

    private const double Lr = 3e-3;

    // The exact gradient of a key bias is zero (it shifts all scores of a query equally, and softmax ignores that);
    // AdamW turns the float noise there into full ±lr steps, different in any two summation orders. Frozen here.
    // Likewise a value whose gradient nearly cancels in one step moves by a noisy fraction of lr: parameters must agree
    // to 1e-5 except in at most 0.1% of the values of a tensor, and those within one step (lr).
    private string[] Train(string data, int steps, string tag, params string[] extra) =>
        ["train", _model, "--data", data, "--seq", "16", "--batch", "8", "--steps", steps.ToString(), "--lr", Lr.ToString(System.Globalization.CultureInfo.InvariantCulture), "--seed", "2",
         "--device", "cpu", "--threads", "1", "--eval-fraction", "0", "--frozen", @"k_proj\.bias",
         "--metrics", _dir.File(tag + ".jsonl"), "--export", _dir.File(tag + ".onnx"), .. extra];

    private List<(long Step, double Loss)> Losses(string tag) =>
        [.. File.ReadAllLines(_dir.File(tag + ".jsonl")).Select(l => JsonNode.Parse(l)!)
            .Select(n => (n["step"]!.GetValue<long>(), n["loss"]!.GetValue<double>()))];

    private void AssertSameRun(string reference, string run, int firstStep)
    {
        var expected = Losses(reference).Where(s => s.Step >= firstStep).ToList();
        var actual = Losses(run);
        Assert.Equal(expected.Select(s => s.Step), actual.Select(s => s.Step));
        foreach (var ((step, e), (_, a)) in expected.Zip(actual))
        {
            Assert.True(Math.Abs(a - e) <= 1e-5 * Math.Abs(e), $"{run} step {step}: loss {a} vs {e}");
        }

        using var a1 = Model.Load(_dir.File(reference + ".onnx"));
        using var a2 = Model.Load(_dir.File(run + ".onnx"));
        var other = a2.Graph.Initializers.ToDictionary(v => v.Name, v => v.Initializer!);
        foreach (var value in a1.Graph.Initializers.Where(v => v.Initializer!.ElementType == ElementType.Float))
        {
            var x = value.Initializer!.ToArray<float>();
            var y = other[value.Name].ToArray<float>();
            var errors = x.Zip(y).Select(p => Math.Abs(p.First - p.Second) / Math.Max(1.0, Math.Abs(p.First))).ToArray();
            var worst = Array.IndexOf(errors, errors.Max());
            var off = errors.Count(e => e > 1e-5);
            Assert.True(off <= errors.Length / 1000 && errors[worst] <= Lr,
                $"{run}: {off} of {errors.Length} values of {value.Name} differ; [{worst}] is {y[worst]}, expected {x[worst]}");
        }
    }

    private static (int Code, string Out, string Err) Run(int ranks, string[] args, IDictionary<string, string>? environment = null)
    {
        using var job = new Mpirun(ranks, args, environment);
        return job.Wait(Limit);
    }

    [MpiFact]
    public void Mpi_check_passes_on_three_ranks()
    {
        var (code, stdout, stderr) = Run(3, ["mpi-check", "--sizes", "1", "--repeat", "2"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("mpi-check: 3 ranks", stdout);
        Assert.Contains("checks passed on every rank", stdout);
        Assert.Contains("all-reduce    1 MiB", stdout);
    }

    [MpiFact]
    public void Two_ranks_of_batch_4_train_like_one_process_of_batch_8()
    {
        var (code, _, err) = CliRunner.Run(Train(_text, 20, "one"));
        Assert.True(code == 0, err);
        var (mpiCode, stdout, stderr) = Run(2, Train(_text, 20, "two"));
        Assert.True(mpiCode == 0, stderr);
        Assert.Contains("data parallel: 2 ranks", stdout);
        Assert.Contains("global batch 8 = 2 x 4 per rank", stdout);
        Assert.Single(stdout.Split('\n'), l => l.StartsWith("done:", StringComparison.Ordinal));
        AssertSameRun("one", "two", 1);
    }

    [MpiFact]
    public void Shards_with_unequal_label_counts_are_weighted_by_tokens_across_micro_batches()
    {
        // Padded JSONL lines of 3..16 tokens: each rank's mean loss covers a different number of targets.
        var jsonl = _dir.File("d.jsonl");
        var rng = new Random(5);
        File.WriteAllLines(jsonl, Enumerable.Range(0, 96).Select(i =>
            "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 3 + rng.Next(14)).Select(j => j % 3 == 0 ? 7 : 32 + rng.Next(90))) + "]}"));
        var (code, _, err) = CliRunner.Run(Train(jsonl, 12, "one", "--accumulate", "2"));
        Assert.True(code == 0, err);
        var (mpiCode, _, stderr) = Run(2, Train(jsonl, 12, "two", "--accumulate", "2"));
        Assert.True(mpiCode == 0, stderr);
        AssertSameRun("one", "two", 1);
    }

    [MpiFact]
    public void A_killed_rank_stops_the_other_and_the_run_resumes_exactly_with_the_same_or_another_rank_count()
    {
        const int steps = 60;
        var (code, _, err) = CliRunner.Run(Train(_text, steps, "reference"));
        Assert.True(code == 0, err);

        var checkpoints = _dir.File("ck");
        string[] killedArgs = [.. Train(_text, steps, "killed", "--checkpoint-dir", checkpoints, "--checkpoint-every", "10")];
        using (var job = new Mpirun(2, killedArgs))
        {
            var first = Path.Combine(checkpoints, "step-00000010", "state.onnx");
            var wait = Stopwatch.StartNew();
            while (!File.Exists(first) && !job.HasExited && wait.Elapsed < Limit)
            {
                Thread.Sleep(5);
            }

            Assert.False(job.HasExited, "the run ended before it could be killed");
            using var survivor = Process.GetProcessById(job.RankPid(0));
            Process.GetProcessById(job.RankPid(1)).Kill();
            var stopped = Stopwatch.StartNew();
            var (killedCode, stdout, stderr) = job.Wait(TimeSpan.FromSeconds(60));
            Assert.True(stopped.Elapsed < TimeSpan.FromSeconds(60));
            Assert.NotEqual(0, killedCode);
            Assert.Contains("sptc: error: rank 0 of 2: stopped by SIGTERM", stderr);
            Assert.DoesNotContain("done:", stdout);

            // mpirun can return while the surviving rank is still writing its last checkpoint and holds the
            // directory's lock; the copy and the resume below need it gone.
            Assert.True(survivor.WaitForExit(TimeSpan.FromSeconds(60)), "rank 0 did not exit after mpirun");
        }

        var latest = Directory.GetDirectories(checkpoints, "step-*").Select(Path.GetFileName).Max()!;
        var resumedAt = int.Parse(latest["step-".Length..]);
        Assert.InRange(resumedAt, 10, steps - 1);

        // A different rank count: the data order and the checkpoint do not depend on it (1 process of batch 8).
        var copy = _dir.File("ck1");
        CopyDirectory(checkpoints, copy);
        (code, _, err) = CliRunner.Run(Train(_text, steps, "resumed1", "--checkpoint-dir", copy, "--resume"));
        Assert.True(code == 0, err);
        AssertSameRun("reference", "resumed1", resumedAt + 1);

        var (resumedCode, resumedOut, resumedErr) = Run(2, Train(_text, steps, "resumed2", "--checkpoint-dir", checkpoints, "--resume"));
        Assert.True(resumedCode == 0, resumedErr);
        Assert.Contains($"(step {resumedAt})", resumedOut);
        AssertSameRun("reference", "resumed2", resumedAt + 1);
    }

    [MpiFact]
    public void A_hung_rank_makes_the_others_fail_after_the_timeout()
    {
        using var job = new Mpirun(2, Train(_text, 100_000, "hung"), new Dictionary<string, string> { ["SPTC_MPI_TIMEOUT"] = "8" });
        var wait = Stopwatch.StartNew();
        while (!(File.Exists(_dir.File("hung.jsonl")) && File.ReadAllLines(_dir.File("hung.jsonl")).Length > 5) && wait.Elapsed < Limit)
        {
            Thread.Sleep(20);
        }

        var pid = job.RankPid(1);
        using (var stop = Process.Start("kill", ["-STOP", pid.ToString()]))
        {
            stop.WaitForExit();
        }

        var stopped = Stopwatch.StartNew();
        var (code, _, stderr) = job.Wait(TimeSpan.FromSeconds(60));
        Assert.True(stopped.Elapsed < TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, code);
        Assert.Contains("sptc: error: rank 0 of 2: MPI_Iallreduce did not complete within 8 s", stderr);
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var dir in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
        {
            Directory.CreateDirectory(dir.Replace(from, to, StringComparison.Ordinal));
        }

        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            File.Copy(file, file.Replace(from, to, StringComparison.Ordinal));
        }
    }
}
