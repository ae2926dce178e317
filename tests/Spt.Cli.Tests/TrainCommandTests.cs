using System.Text.Json.Nodes;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>sptc compile-training, train and bench on the tiny GPT-2 fixture (vocabulary 64): results, files, exit codes, one-line errors.</summary>
public sealed class TrainCommandTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string Gpt2 => CliRunner.Fixture("gpt2_op17.onnx");

    /// <summary>64 JSONL sequences of 16 token ids below 64 with a learnable pattern (every third token is 5).</summary>
    private string Jsonl()
    {
        var path = _dir.File("data.jsonl");
        var rng = new Random(1);
        File.WriteAllLines(path, Enumerable.Range(0, 64).Select(_ =>
            "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 16).Select(j => j % 3 == 0 ? 5 : rng.Next(64))) + "]}"));
        return path;
    }

    [Fact]
    public void Compile_training_writes_the_artifact_directory()
    {
        var (code, stdout, stderr) = CliRunner.Run("compile-training", Gpt2, "--out-dir", _dir.File("art"), "--loss", "causal_lm", "--frozen", "^wpe");
        Assert.True(code == 0, stderr);
        Assert.Contains("loss causal_lm", stdout);
        foreach (var file in new[] { "training.json", "grad.onnx", "optimizer.onnx", "eval.onnx", "checkpoint/state.onnx", "source.onnx" })
        {
            Assert.True(File.Exists(_dir.File("art/" + file)), file);
        }

        var manifest = JsonNode.Parse(File.ReadAllText(_dir.File("art/training.json")))!;
        var wpe = manifest["parameters"]!.AsArray().Single(p => p!["name"]!.GetValue<string>() == "wpe.weight")!;
        Assert.False(wpe["trainable"]!.GetValue<bool>());
    }

    [Fact]
    public void Train_reduces_the_loss_writes_metrics_checkpoints_and_the_export()
    {
        var metrics = _dir.File("m.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", Gpt2, "--data", Jsonl(), "--steps", "24", "--batch", "4", "--lr", "3e-3",
            "--eval-every", "8", "--checkpoint-dir", _dir.File("ck"), "--keep", "2", "--metrics", metrics, "--export", _dir.File("ft.onnx"), "--seed", "3");
        Assert.True(code == 0, stderr);
        Assert.Contains("train step 24/24", stdout);
        Assert.Contains("exported:", stdout);

        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(24, lines.Count);
        Assert.True(lines[^1]["loss"]!.GetValue<double>() < lines[0]["loss"]!.GetValue<double>() - 0.5);
        Assert.Equal([8L, 16, 24], lines.Where(l => l["eval_loss"] is not null).Select(l => l["step"]!.GetValue<long>()));
        Assert.Equal(["step-00000016", "step-00000024"], Directory.GetDirectories(_dir.File("ck"), "step-*").Select(Path.GetFileName).Order());

        // The export is the source model with trained values.
        using var source = Model.Load(Gpt2);
        using var exported = Model.Load(_dir.File("ft.onnx"));
        Assert.Equal(source.Graph.Initializers.Select(v => v.Name), exported.Graph.Initializers.Select(v => v.Name));
        Assert.NotEqual(source.Graph.FindValue("wte.weight")!.Initializer!.ToFloatArray(), exported.Graph.FindValue("wte.weight")!.Initializer!.ToFloatArray());
    }

    [Fact]
    public void Train_resumes_from_the_newest_checkpoint()
    {
        var data = Jsonl();
        var ck = _dir.File("ck");
        var metrics = _dir.File("m.jsonl");
        Assert.Equal(0, CliRunner.Run("train", Gpt2, "--data", data, "--steps", "4", "--batch", "4", "--checkpoint-dir", ck, "--metrics", metrics).ExitCode);
        var (code, stdout, stderr) = CliRunner.Run("train", Gpt2, "--data", data, "--steps", "7", "--batch", "4", "--checkpoint-dir", ck, "--metrics", metrics, "--resume");
        Assert.True(code == 0, stderr);
        Assert.Contains("(step 4)", stdout);
        Assert.Contains("steps 5..7", stdout);
        Assert.Equal(7, File.ReadAllLines(metrics).Length);
    }

    [Fact]
    public void A_diverging_run_exits_5_naming_the_step_and_keeps_the_last_good_checkpoint()
    {
        var ck = _dir.File("ck");
        var (code, _, stderr) = CliRunner.Run("train", Gpt2, "--data", Jsonl(), "--steps", "30", "--batch", "4", "--lr", "1e30",
            "--schedule", "constant", "--checkpoint-dir", ck, "--checkpoint-every", "1");
        Assert.Equal(ExitCodes.Diverged, code);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Matches(@"^sptc: error: (loss|grad_norm) is (NaN|\+Inf|-Inf) at step \d+; training stopped; the last good checkpoint is .*step-\d{8}$", line);
        var step = int.Parse(System.Text.RegularExpressions.Regex.Match(line, @"at step (\d+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Directory.Exists(Path.Combine(ck, $"step-{step - 1:D8}")));
        Assert.False(Directory.Exists(Path.Combine(ck, $"step-{step:D8}")));
    }

    [Theory]
    [InlineData("text", "token id 104 is outside the model's vocabulary of 64 (embedding 'wte.weight')")]
    [InlineData("empty", "is empty")]
    [InlineData("long", "--seq 32 or less")]
    [InlineData("resume", "--resume needs --checkpoint-dir")]
    [InlineData("schedule", "--schedule must be constant, linear or cosine")]
    [InlineData("missing", "does not exist")]
    public void Bad_input_is_one_line_and_exit_code_2(string kind, string expected)
    {
        var text = _dir.File("t.txt");
        File.WriteAllText(text, "hello world, this is some text");
        File.WriteAllText(_dir.File("empty.txt"), "");
        string[] args = kind switch
        {
            "text" => ["train", Gpt2, "--data", text, "--seq", "8", "--steps", "2"],
            "empty" => ["train", Gpt2, "--data", _dir.File("empty.txt"), "--steps", "2"],
            "long" => ["train", Gpt2, "--data", Jsonl(), "--seq", "64", "--steps", "2"],
            "resume" => ["train", Gpt2, "--data", Jsonl(), "--resume"],
            "schedule" => ["train", Gpt2, "--data", Jsonl(), "--schedule", "step"],
            _ => ["train", _dir.File("nope.onnx"), "--data", Jsonl()],
        };
        var (code, _, stderr) = CliRunner.Run(args);
        Assert.Equal(ExitCodes.BadInput, code);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("sptc: error: ", line);
        Assert.Contains(expected, line);
    }

    [Fact]
    public void Device_cuda_without_the_cuda_provider_is_one_line_exit_2_and_the_default_is_cpu()
    {
        // This ONNX Runtime is the CPU package: train and bench refuse --device cuda before compiling anything.
        Assert.DoesNotContain("CUDAExecutionProvider", Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetAvailableProviders());
        foreach (var args in new[]
        {
            new[] { "train", Gpt2, "--data", Jsonl(), "--steps", "2", "--device", "cuda" },
            new[] { "bench", Gpt2, "--seq", "8", "--steps", "1", "--dense-only", "--device", "cuda" },
        })
        {
            var (code, stdout, stderr) = CliRunner.Run(args);
            Assert.Equal(ExitCodes.BadInput, code);
            var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Equal("sptc: error: --device cuda: this ONNX Runtime has no CUDA execution provider (build with " +
                "SPTC_ORT_GPU=1, i.e. -p:SptOrtGpu=true, on a GPU host); use --device cpu", line);
            Assert.DoesNotContain("MaxInUse", stdout);
        }

        var (badCode, _, badErr) = CliRunner.Run("bench", Gpt2, "--seq", "8", "--device", "gpu");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("--device must be auto, cpu or cuda, got 'gpu'", badErr);

        var (okCode, okOut, okErr) = CliRunner.Run("train", Gpt2, "--data", Jsonl(), "--steps", "1", "--batch", "2");
        Assert.True(okCode == 0, okErr);
        Assert.Contains("parameter tensors", okOut);
        Assert.Contains(" on cpu: ", okOut);
    }

    [Fact]
    public void A_model_whose_output_cannot_feed_the_loss_is_refused()
    {
        // Pooled output [batch, 8]: no [batch, sequence, vocab] logits for the causal-LM loss.
        var b = new GraphBuilder(17);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        var emb = b.Initializer("emb", new float[64 * 8], 64, 8);
        b.Output(b.Op("ReduceMean", [b.Op("Gather", emb, ids), b.Constant(Tensor.Create("axes", new long[] { 1 }, 1))], ("keepdims", 0L)), "pooled");
        var path = _dir.File("pooled.onnx");
        using (var model = b.Build())
        {
            model.Save(path);
        }

        var (code, _, stderr) = CliRunner.Run("train", path, "--data", Jsonl(), "--task", "lm", "--steps", "2");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("output 'pooled' has rank 2; the causal-LM loss needs logits [batch, sequence, vocab]", stderr);
    }

    [Fact]
    public void Bench_measures_each_length_in_a_worker_and_writes_json()
    {
        var json = _dir.File("bench.json");
        var (code, stdout, stderr) = CliRunner.Run("bench", Gpt2, "--seq", "8,16", "--steps", "2", "--dense-only", "--json", json);
        Assert.True(code == 0, stderr);
        Assert.Contains("MaxInUse", stdout);
        var results = JsonNode.Parse(File.ReadAllText(json))!["results"]!.AsArray();
        Assert.Equal([8, 16], results.Select(r => r!["seq"]!.GetValue<int>()));
        foreach (var r in results)
        {
            var dense = r!["dense"]!;
            Assert.True(dense["median_step_s"]!.GetValue<double>() > 0);
            Assert.True(dense["max_in_use_bytes"]!.GetValue<long>() > 26_432 * 4 * 2);  // at least two copies of the parameters
            Assert.True(dense["peak_rss_bytes"]!.GetValue<long>() > dense["max_in_use_bytes"]!.GetValue<long>());
        }

        var (badCode, _, badErr) = CliRunner.Run("bench", Gpt2, "--seq", "8,x");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("--seq must be comma-separated lengths", badErr);
    }
}

/// <summary>The SPT paths of the CLI on the built-in sample decoder: train --optimize, bench dense vs SPT, demo.</summary>
public sealed class TrainSptCommandTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Sample()
    {
        var path = _dir.File("sample.onnx");
        var (code, _, stderr) = CliRunner.Run("sample", "--out", path, "--layers", "1", "--d-model", "32", "--heads", "4", "--d-ff", "64", "--vocab", "128", "--max-seq", "32");
        Assert.True(code == 0, stderr);
        return path;
    }

    [Fact]
    public void Train_optimize_rewrites_then_trains_and_exports_the_spt_model()
    {
        var data = _dir.File("corpus.txt");
        File.WriteAllText(data, Spt.Runtime.Data.EmbeddedCorpus.Text);
        var export = _dir.File("ft.onnx");
        var (code, stdout, stderr) = CliRunner.Run("train", Sample(), "--data", data, "--seq", "32", "--steps", "12", "--batch", "4", "--lr", "3e-3",
            "--optimize", "--lora", "4", "--topk-ratio", "0.25", "--export", export);
        Assert.True(code == 0, stderr);
        Assert.Contains("SPT rewrite: 1 of 1 attention blocks, 1 of 1 FFN blocks", stdout);
        var losses = stdout.Split('\n').Where(l => l.Contains("train step", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(losses);
        using var model = Model.Load(export);
        Assert.Contains(model.Graph.Nodes, n => n.Domain == "spt" && n.OpType == "SparseAttention");
        Assert.Contains(model.Graph.Nodes, n => n.Domain == "spt" && n.OpType == "RoutedFFN");
    }

    [Fact]
    public void Bench_compares_dense_and_spt_with_ratios()
    {
        var json = _dir.File("bench.json");
        var (code, stdout, stderr) = CliRunner.Run("bench", Sample(), "--seq", "16,32", "--steps", "2", "--json", json);
        Assert.True(code == 0, stderr);
        Assert.Contains("spt", stdout);
        var doc = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal(["dense", "spt"], doc["variants"]!.AsArray().Select(v => v!.GetValue<string>()));
        foreach (var r in doc["results"]!.AsArray())
        {
            Assert.True(r!["spt"]!["median_step_s"]!.GetValue<double>() > 0);
            Assert.Null(r["dense-lora"]);
            var ratios = r["spt"]!["vs_dense"]!;
            var expected = r["spt"]!["max_in_use_bytes"]!.GetValue<double>() / r["dense"]!["max_in_use_bytes"]!.GetValue<double>();
            Assert.Equal(expected, ratios["max_in_use"]!.GetValue<double>(), 9);
        }
    }

    [Fact]
    public void Bench_with_lora_measures_dense_full_dense_lora_spt_lora_and_spt()
    {
        var json = _dir.File("bench.json");
        var (code, stdout, stderr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--steps", "3", "--lora", "4", "--json", json);
        Assert.True(code == 0, stderr);
        Assert.Contains("dense-lora: SPT rewrite: 0 of 1 attention blocks, 0 of 1 FFN blocks, LoRA rank 4", stdout);
        Assert.Contains("time vs dense LoRA", stdout);
        var doc = JsonNode.Parse(File.ReadAllText(json))!;
        string[] all = ["dense", "dense-lora", "spt-lora", "spt"];
        Assert.Equal(all, doc["variants"]!.AsArray().Select(v => v!.GetValue<string>()));
        var row = doc["results"]![0]!;
        foreach (var name in all)
        {
            var m = row[name]!;
            var (min, median, max) = (m["min_step_s"]!.GetValue<double>(), m["median_step_s"]!.GetValue<double>(), m["max_step_s"]!.GetValue<double>());
            Assert.True(min > 0 && min <= median && median <= max, $"{name}: {min} {median} {max}");
            Assert.True(m["compile_s"]!.GetValue<double>() > 0 && m["session_s"]!.GetValue<double>() > 0, name);
            Assert.Equal(m["compile_s"]!.GetValue<double>() + m["session_s"]!.GetValue<double>(), m["startup_s"]!.GetValue<double>(), 9);
            Assert.Equal(name == "dense", m["vs_dense"] is null);
            Assert.Equal(name is "spt-lora" or "spt", m["vs_dense_lora"] is not null);
        }

        // LoRA trains fewer values than full fine-tuning: less optimizer state and fewer gradients are resident.
        Assert.True(row["dense-lora"]!["max_in_use_bytes"]!.GetValue<long>() < row["dense"]!["max_in_use_bytes"]!.GetValue<long>());
    }

    [Fact]
    public void Bench_measures_dense_lora_when_both_rewrites_are_kept()
    {
        var json = _dir.File("bench.json");
        var (code, _, stderr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--steps", "1", "--attention", "keep", "--ffn", "keep", "--lora", "4", "--json", json);
        Assert.True(code == 0, stderr);
        var doc = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal(["dense", "dense-lora"], doc["variants"]!.AsArray().Select(v => v!.GetValue<string>()));

        var (badCode, _, badErr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--variants", "dense,sparse");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("--variants: 'sparse' is not one of dense, dense-lora, spt-lora, spt", badErr);
        (badCode, _, badErr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--variants", "dense-lora");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("--variants dense-lora needs a LoRA rank", badErr);
        (badCode, _, badErr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--variants", "spt", "--attention", "keep", "--ffn", "keep");
        Assert.Equal(ExitCodes.BadInput, badCode);
        Assert.Contains("leaves nothing for the SPT rewrite to do", badErr);
    }

    [Fact]
    public void Bench_profile_writes_ort_profiles_and_prints_time_by_op_type()
    {
        var profiles = Path.Combine(_dir.Path, "profiles");
        var json = _dir.File("bench.json");
        var (code, stdout, stderr) = CliRunner.Run("bench", Sample(), "--seq", "16", "--steps", "1", "--variants", "spt", "--profile", profiles, "--json", json);
        Assert.True(code == 0, stderr);
        Assert.Contains("spt at --seq 16: kernel time", stdout);
        Assert.Contains("RoutedFFN", stdout);
        var summary = JsonNode.Parse(File.ReadAllText(json))!["results"]![0]!["spt"]!["profile"]!;
        var files = summary["files"]!.AsArray().Select(f => f!.GetValue<string>()).ToList();
        Assert.Contains(files, f => Path.GetFileName(f).StartsWith("spt-seq16-grad", StringComparison.Ordinal));
        Assert.All(files, f => Assert.True(File.Exists(f), f));
        var ops = summary["by_op"]!.AsArray().Select(o => o!["op"]!.GetValue<string>()).ToList();
        Assert.Contains("RoutedFFN", ops);
        Assert.Contains("RoutedFFNGrad", ops);
        Assert.Contains("SparseAttention", ops);
        Assert.Equal(1.0, summary["by_op"]!.AsArray().Sum(o => o!["share"]!.GetValue<double>()), 6);
    }

    [Fact]
    public void Demo_runs_the_whole_job_and_prints_both_models()
    {
        var (code, stdout, stderr) = CliRunner.Run("demo", "--steps", "6", "--batch", "4", "--seq", "64");
        Assert.True(code == 0, stderr);
        Assert.Matches(@"exact check: .* = \d\.\de[-+]\d", stdout);
        Assert.Contains("dense", stdout);
        Assert.Contains("SPT", stdout);
        Assert.Contains("peak ORT", stdout);
        Assert.Matches(@"SPT eval loss is [+-]\d+\.\d% vs dense", stdout);
    }
}
