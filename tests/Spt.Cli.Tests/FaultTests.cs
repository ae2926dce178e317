using System.Diagnostics;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>
/// Bad flags, bad paths and failures: one <c>sptc: error:</c> line and exit code 2, nothing written or left behind;
/// devices and FIFOs are neither replaced nor read; parse errors are one line.
/// </summary>
public sealed class FaultTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string Gpt2 => CliRunner.Fixture("gpt2_op17.onnx");

    private string Jsonl(int lines = 32, string? labels = null)
    {
        var path = _dir.File("data.jsonl");
        File.WriteAllLines(path, Enumerable.Range(0, lines).Select(i =>
            "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 16).Select(j => (i + j) % 64)) + "]" +
            (labels is null ? "" : ", \"labels\": [" + labels + "]") + "}"));
        return path;
    }

    /// <summary>Runs sptc and checks the contract of a bad input: exit 2, one error line, and nothing left in the work folder.</summary>
    private string BadInput(params string[] args)
    {
        var before = Directory.GetFileSystemEntries(_dir.Path).Order().ToList();
        var (code, _, stderr) = CliRunner.Run(args);
        Assert.True(code == ExitCodes.BadInput, $"exit {code}: {stderr}");
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("sptc: error: ", line);
        Assert.DoesNotContain("   at ", stderr);
        Assert.Equal(before, Directory.GetFileSystemEntries(_dir.Path).Order().ToList());
        return line;
    }

    [Theory]
    [InlineData("--topk-ratio", "nan", "--topk-ratio must be in (0, 1]")]
    [InlineData("--topk-ratio", "0", "--topk-ratio must be in (0, 1]")]
    [InlineData("--topk", "0", "--topk must be in [1, ")]
    [InlineData("--lora", "100000", "--lora must be in [0, 65536]")]
    [InlineData("--lora", "-1", "--lora must be in [0, 65536]")]
    [InlineData("--blocks", "0", "--blocks must be in [1, 4096]")]
    [InlineData("--codebook-size", "-3", "--codebook-size must be in [1, 65536]")]
    [InlineData("--layers", "-1", "--layers: '-1' is not a layer index")]
    public void Optimize_flag_bounds(string flag, string value, string expected)
    {
        Assert.Contains(expected, BadInput("optimize", Gpt2, "-o", _dir.File("o.onnx"), flag, value));
    }

    [Fact]
    public void A_lora_rank_beyond_the_layer_width_is_refused_by_the_rewrite_with_the_numbers()
    {
        Assert.Contains("exceeds min(d_in, d_out)", BadInput("optimize", Gpt2, "-o", _dir.File("o.onnx"), "--lora", "60000"));
    }

    [Theory]
    [InlineData("--exact", "--topk", "4")]
    [InlineData("--exact", "--topk-ratio", "0.5")]
    public void Exact_excludes_topk(string exact, string flag, string value)
    {
        Assert.Contains($"give --exact or {flag}, not both", BadInput("optimize", Gpt2, "-o", _dir.File("o.onnx"), exact, flag, value));
    }

    [Theory]
    [InlineData("--checkpoint-every", "-1", "--checkpoint-every must be in [0, ")]
    [InlineData("--threads", "-1", "--threads must be in [0, 4096]")]
    [InlineData("--steps", "0", "--steps must be in [1, ")]
    [InlineData("--batch", "0", "--batch must be in [1, ")]
    [InlineData("--accumulate", "0", "--accumulate must be in [1, ")]
    [InlineData("--lr", "nan", "--lr must be in (0, ")]
    [InlineData("--lr", "1e999", "--lr must be in (0, ")]
    [InlineData("--keep", "0", "--keep must be in [1, ")]
    [InlineData("--eval-fraction", "1", "--eval-fraction must be in [0, 1)")]
    [InlineData("--frozen", "[", "--frozen: '[' is not a regular expression")]
    [InlineData("--seq", "0", "--seq must be in [1, ")]
    public void Train_flag_bounds(string flag, string value, string expected)
    {
        Assert.Contains(expected, BadInput("train", Gpt2, "--data", Jsonl(), "--work-dir", _dir.File("w"), flag, value));
        Assert.False(Directory.Exists(_dir.File("w")));
    }

    [Theory]
    [InlineData("--d-model", "0", "--d-model must be in [1, 65536]")]
    [InlineData("--layers", "-1", "--layers must be in [1, 1024]")]
    [InlineData("--heads", "0", "--heads must be in [1, 4096]")]
    [InlineData("--vocab", "-5", "--vocab must be in [1, ")]
    public void Sample_flag_bounds(string flag, string value, string expected)
    {
        Assert.Contains(expected, BadInput("sample", "-o", _dir.File("s.onnx"), flag, value));
    }

    [Fact]
    public void Sample_sizes_whose_product_overflows_are_refused_before_allocation()
    {
        Assert.Contains("more than 268,435,456", BadInput("sample", "-o", _dir.File("s.onnx"), "--d-model", "65536", "--heads", "1", "--vocab", "16000000", "--d-ff", "262144", "--layers", "1024"));
        Assert.Contains("not a multiple of heads", BadInput("sample", "-o", _dir.File("s.onnx"), "--d-model", "10", "--heads", "3"));
    }

    [Theory]
    [InlineData("--tol", "-1")]
    [InlineData("--tol", "nan")]
    [InlineData("--batch", "0")]
    [InlineData("--seq", "-2")]
    public void Verify_flag_bounds(string flag, string value)
    {
        BadInput("verify", Gpt2, Gpt2, flag, value);
    }

    [Fact]
    public void Compile_training_regex_and_out_dir_errors()
    {
        Assert.Contains("--frozen: '[' is not a regular expression", BadInput("compile-training", Gpt2, "--out-dir", _dir.File("art"), "--frozen", "["));
        File.WriteAllText(_dir.File("afile"), "x");
        Assert.Contains("is a file", BadInput("compile-training", Gpt2, "--out-dir", _dir.File("afile")));
        Assert.Contains("path is empty", BadInput("compile-training", Gpt2, "--out-dir", ""));
        Assert.Contains("is a device", BadInput("compile-training", Gpt2, "--out-dir", "/dev/null"));
    }

    [Fact]
    public void Compile_training_that_fails_leaves_no_folder()
    {
        // The loss output names nothing: the compiler fails after it started writing.
        Assert.Contains("nope", BadInput("compile-training", Gpt2, "--out-dir", _dir.File("deep/art"), "--loss-output", "nope"));
        Assert.False(Directory.Exists(_dir.File("deep")));
    }

    [Fact]
    public void An_output_target_that_cannot_be_written_fails_before_the_model_is_written()
    {
        Assert.Contains("missing-dir", BadInput("optimize", Gpt2, "-o", _dir.File("out.onnx"), "--report", _dir.File("missing-dir/r.json")));
        Assert.False(File.Exists(_dir.File("out.onnx")));
    }

    [Fact]
    public void Devices_and_FIFOs_are_never_replaced_or_read()
    {
        Assert.Contains("is a device", BadInput("optimize", Gpt2, "-o", "/dev/null"));
        Assert.Equal(PathKind.Device, FileChecks.Kind("/dev/null"));
        Assert.Contains("is a device", BadInput("sample", "-o", "/dev/null"));

        var fifo = _dir.File("pipe.onnx");
        MakeFifo(fifo);
        Assert.Contains("is a FIFO", BadInput("optimize", Gpt2, "-o", fifo));
        Assert.Equal(PathKind.Fifo, FileChecks.Kind(fifo));
        var watch = Stopwatch.StartNew();
        Assert.Contains("is a FIFO", BadInput("inspect", fifo));
        Assert.Contains("is a FIFO", BadInput("train", Gpt2, "--data", fifo, "--work-dir", _dir.File("w")));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), "reading a FIFO must not block");
    }

    [Fact]
    public void Train_labels_outside_the_vocabulary_and_an_impossible_batch()
    {
        var labels = string.Join(", ", Enumerable.Range(0, 16).Select(j => j == 3 ? 999 : j));
        Assert.Contains("label 999 is outside the model's vocabulary of 64", BadInput("train", Gpt2, "--data", Jsonl(labels: labels), "--work-dir", _dir.File("w")));
        File.Delete(_dir.File("data.jsonl"));
        Assert.Contains("--batch 100000 is larger than the", BadInput("train", Gpt2, "--data", Jsonl(), "--batch", "100000", "--work-dir", _dir.File("w")));
    }

    [Fact]
    public void A_parse_error_is_one_line()
    {
        var (code, _, stderr) = CliRunner.Run("optimize", Gpt2, "--no-such-flag", "--blocks", "x");
        Assert.Equal(ExitCodes.BadInput, code);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Matches(@"^sptc: error: .+ \(and \d+ more\); see 'sptc optimize --help'$", line);
    }

    [Fact]
    public void A_checkpoint_whose_metadata_says_step_minus_4_is_refused_on_resume()
    {
        var ck = _dir.File("ck");
        var data = Jsonl();
        Assert.Equal(0, CliRunner.Run("train", Gpt2, "--data", data, "--steps", "2", "--batch", "4", "--checkpoint-dir", ck).ExitCode);
        var state = Path.Combine(ck, "step-00000002", "state.onnx");
        using (var model = Model.Load(state))
        {
            var i = model.Metadata.Select((kv, n) => (kv, n)).First(p => p.kv.Key == "step").n;
            model.Metadata[i] = new("step", "-4");
            model.Save(state);
        }

        var (code, _, stderr) = CliRunner.Run("train", Gpt2, "--data", data, "--steps", "4", "--batch", "4", "--checkpoint-dir", ck, "--resume");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("'step' is '-4'", stderr);
        Assert.Contains("sptc: warning:", stderr);
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void Fresh_train_in_a_used_checkpoint_folder_refuses_before_compiling()
    {
        var ck = _dir.File("ck");
        var data = Jsonl();
        Assert.Equal(0, CliRunner.Run("train", Gpt2, "--data", data, "--steps", "2", "--batch", "4", "--checkpoint-dir", ck).ExitCode);
        var artifactTime = File.GetLastWriteTimeUtc(Path.Combine(ck, "artifact", "training.json"));
        var (code, _, stderr) = CliRunner.Run("train", Gpt2, "--data", data, "--steps", "2", "--batch", "4", "--checkpoint-dir", ck);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("already holds checkpoints (steps 2..2)", stderr);
        Assert.Equal(artifactTime, File.GetLastWriteTimeUtc(Path.Combine(ck, "artifact", "training.json")));

        (code, _, stderr) = CliRunner.Run("train", Gpt2, "--data", data, "--steps", "1", "--batch", "4", "--checkpoint-dir", ck, "--resume");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("leaves nothing to train", stderr);
    }

    internal static void MakeFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }
}
