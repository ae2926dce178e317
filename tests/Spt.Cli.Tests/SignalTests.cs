using System.Diagnostics;

namespace Spt.Cli.Tests;

/// <summary>
/// SIGTERM to a running <c>sptc train</c> (a child process): the step under way finishes, a checkpoint of it is
/// written, the exit code is <see cref="ExitCodes.Interrupted"/>, and <c>--resume</c> continues from that step.
/// </summary>
public sealed class SignalTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Starts the sptc built next to the tests as a child process.</summary>
    internal static Process StartSptc(params string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "sptc.dll");
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
        var info = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(dll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        return Process.Start(info)!;
    }

    [Fact]
    public async Task Sigterm_during_train_checkpoints_the_current_step_exits_6_and_resumes()
    {
        var data = _dir.File("data.jsonl");
        var rng = new Random(2);
        File.WriteAllLines(data, Enumerable.Range(0, 64).Select(_ => "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 16).Select(_ => rng.Next(64))) + "]}"));
        var ck = _dir.File("ck");
        var metrics = _dir.File("m.jsonl");
        var gpt2 = CliRunner.Fixture("gpt2_op17.onnx");

        using var child = StartSptc("train", gpt2, "--data", data, "--steps", "1000000", "--batch", "4", "--checkpoint-dir", ck, "--metrics", metrics, "--threads", "1");
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        var watch = Stopwatch.StartNew();
        while (Lines(metrics) < 3)
        {
            if (child.HasExited)
            {
                Assert.Fail($"sptc exited early ({child.ExitCode}): {await stderr}");
            }

            Assert.True(watch.Elapsed < TimeSpan.FromMinutes(3), "training did not start");
            await Task.Delay(50);
        }

        using (var kill = Process.Start("kill", ["-TERM", child.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            kill.WaitForExit();
        }

        using (var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2)))
        {
            await child.WaitForExitAsync(timeout.Token);
        }

        var err = await stderr;
        Assert.True(child.ExitCode == ExitCodes.Interrupted, $"exit {child.ExitCode}: {err}");
        var line = Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var m = System.Text.RegularExpressions.Regex.Match(line, @"^sptc: SIGTERM received: stopped after step (\d+); checkpoint (.+step-(\d{8})) \(continue with --resume\)$");
        Assert.True(m.Success, line);
        var step = long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(step, long.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(File.Exists(Path.Combine(m.Groups[2].Value, "state.onnx")));
        Assert.Equal(step, Lines(metrics));  // the step under way finished and was recorded
        Assert.Empty(Directory.EnumerateFileSystemEntries(ck, "*.tmp"));
        _ = await stdout;

        var (code, resumedOut, resumedErr) = CliRunner.Run("train", gpt2, "--data", data, "--steps", (step + 2).ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--batch", "4", "--checkpoint-dir", ck, "--metrics", metrics, "--resume");
        Assert.True(code == 0, resumedErr);
        Assert.Contains($"(step {step})", resumedOut);
        Assert.Contains($"steps {step + 1}..{step + 2}", resumedOut);
        Assert.Equal(step + 2, Lines(metrics));
    }

    private static long Lines(string path)
    {
        try
        {
            return File.Exists(path) ? File.ReadAllLines(path).Length : 0;
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
