using System.Text.Json.Nodes;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>
/// Fine-tuning on text: a CSV of sentences with string labels, a WordPiece vocabulary written for the test, the
/// tiny BERT fixture (hidden states only, vocabulary 64) with a classification head sptc adds; and the one-line
/// errors for bad text data.
/// </summary>
public sealed class FineTuneCommandTests : IDisposable
{
    private static readonly Dictionary<string, string[]> Topics = new()
    {
        ["food"] = ["bread", "cheese", "soup", "apple", "cook", "eat", "salt", "sweet"],
        ["sport"] = ["ball", "goal", "team", "match", "player", "score", "run", "win"],
        ["tech"] = ["code", "disk", "network", "compile", "server", "cpu", "bug", "memory"],
    };

    private static readonly string[] Filler = ["the", "a", "is", "and", "of", "to", "we", "it", "good", "big"];

    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string Bert => CliRunner.Fixture("bert_mask_op17.onnx");

    private string Vocab()
    {
        var path = _dir.File("vocab.txt");
        File.WriteAllLines(path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", .. Filler, .. Topics.Values.SelectMany(w => w)]);
        return path;
    }

    /// <summary>Sentences of 3-12 words, 60% from the topic of their label, the rest filler; quoted CSV.</summary>
    private string Csv(int rows = 160)
    {
        var rng = new Random(1);
        var names = Topics.Keys.Order().ToArray();
        var lines = new List<string> { "text,label" };
        for (var i = 0; i < rows; i++)
        {
            var topic = names[rng.Next(names.Length)];
            var words = Enumerable.Range(0, rng.Next(3, 13)).Select(_ => rng.NextDouble() < 0.6 ? Topics[topic][rng.Next(8)] : Filler[rng.Next(Filler.Length)]);
            lines.Add($"\"{string.Join(' ', words)}\",{topic}");
        }

        var path = _dir.File("data.csv");
        File.WriteAllLines(path, lines);
        return path;
    }

    [Fact]
    public void Train_classify_adds_a_head_learns_string_labels_and_exports_the_label_map()
    {
        var export = _dir.File("ft.onnx");
        var metrics = _dir.File("m.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", Bert, "--data", Csv(), "--tokenizer", Vocab(), "--task", "classify",
            "--steps", "60", "--batch", "8", "--lr", "3e-3", "--seq", "16", "--eval-every", "30", "--eval-fraction", "0.2",
            "--metrics", metrics, "--export", export, "--seed", "2", "--best-metric", "macro_f1", "--checkpoint-dir", _dir.File("ck"), "--plot");
        Assert.True(code == 0, stderr);
        Assert.Contains("tokenizer: WordPiece vocab.txt (39 tokens, lower-cased)", stdout);
        Assert.Contains("head: added a 3-output head on 'last_hidden_state' (cls pooling, width 32)", stdout);
        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        var evalLoss = lines.Last(l => l["eval_loss"] is not null)["eval_loss"]!.GetValue<double>();
        Assert.True(evalLoss < 0.8 * Math.Log(3), $"eval loss {evalLoss} is not below 80% of chance ({Math.Log(3):0.000})");
        var evals = lines.Where(l => l["eval_accuracy"] is not null).ToList();
        Assert.Equal([30L, 60], evals.Select(l => l["step"]!.GetValue<long>()));
        Assert.All(evals, l => Assert.InRange(l["eval_macro_f1"]!.GetValue<double>(), 0, 1));
        var bestF1 = evals.Max(l => l["eval_macro_f1"]!.GetValue<double>());
        Assert.Contains(FormattableString.Invariant($"best: macro_f1 {bestF1:0.0000}"), stdout);
        Assert.True(File.Exists(_dir.File("ck/best/state.onnx")));

        // --plot: m.png beside m.jsonl, a 900x540 PNG with the four curves in ScottPlot's first four palette colours.
        var plot = _dir.File("m.png");
        Assert.Contains($"plot: {plot} (loss, eval_loss, eval_accuracy, eval_macro_f1)", stdout);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(plot)[..4]);
        using (var image = SkiaSharp.SKBitmap.Decode(plot))
        {
            Assert.Equal((900, 540), (image.Width, image.Height));
            var colours = image.Pixels.GroupBy(c => (c.Red, c.Green, c.Blue)).ToDictionary(g => g.Key, g => g.Count());
            foreach (var series in new[] { (0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c), (0xd6, 0x27, 0x28) })
                Assert.True(colours.GetValueOrDefault(((byte)series.Item1, (byte)series.Item2, (byte)series.Item3)) > 10, $"no curve drawn in {series}");
            Assert.Equal(0, colours.GetValueOrDefault(((byte)0x94, (byte)0x67, (byte)0xbd)));  // no fifth series
        }

        using (var model = Model.Load(export))
        {
            Assert.Equal("logits", model.Graph.Outputs[0].Name);
            Assert.Contains(model.Metadata, kv => kv.Key == "spt.labels" && kv.Value == "{\"labels\":[\"food\",\"sport\",\"tech\"]}");
        }

        // predict names the labels from the map; clear texts of each topic get their topic.
        var (pcode, pout, perr) = CliRunner.Run("predict", export, "--tokenizer", _dir.File("vocab.txt"), "--seq", "16",
            "--text", "we cook bread and soup", "--text", "the team win the match", "--text", "compile the code on the server");
        Assert.True(pcode == 0, perr);
        var rows = pout.Trim().Split('\n').Select(l => l.Split('\t')).ToList();
        Assert.Equal(["food", "sport", "tech"], rows.Select(r => r[1]));
        Assert.All(rows, r => Assert.InRange(double.Parse(r[2], System.Globalization.CultureInfo.InvariantCulture), 0.34, 1.0));
    }

    /// <summary>
    /// Dense LoRA on the tiny GPT-2: the merged export (W' = W + A·B) runs in stock ONNX Runtime with the logits of the
    /// unmerged model, and the adapter file applied to the compiled model reproduces the trained model exactly.
    /// </summary>
    [Fact]
    public void Lora_merge_export_runs_in_plain_ort_and_the_adapter_reproduces_the_trained_model()
    {
        var data = _dir.File("lm.jsonl");
        var rng = new Random(3);
        File.WriteAllLines(data, Enumerable.Range(0, 32).Select(_ => "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 16).Select(j => j % 3 == 0 ? 5 : rng.Next(64))) + "]}"));
        string export = _dir.File("ft.onnx"), adapter = _dir.File("a.safetensors"), work = _dir.File("art");
        var (code, stdout, stderr) = CliRunner.Run("train", CliRunner.Fixture("gpt2_op17.onnx"), "--data", data, "--steps", "12", "--batch", "4", "--lr", "1e-2",
            "--optimize", "--attention", "keep", "--ffn", "keep", "--lora", "4", "--export", export, "--adapter", adapter, "--work-dir", work);
        Assert.True(code == 0, stderr);
        Assert.Contains("LoRA rank 4", stdout);
        Assert.Matches(@"adapter: .* \(\d+ tensors", stdout);

        var (mcode, mout, merr) = CliRunner.Run("apply-adapter", Path.Combine(work, "source.onnx"), adapter, "--out", _dir.File("merged.onnx"), "--merge-lora");
        Assert.True(mcode == 0, merr);
        Assert.Contains("no sptc operator left", mout);
        Assert.Equal(0, CliRunner.Run("apply-adapter", Path.Combine(work, "source.onnx"), adapter, "--out", _dir.File("re.onnx")).ExitCode);

        // Re-applied adapter == the trained export, initializer for initializer.
        using (var trained = Model.Load(export))
        using (var reapplied = Model.Load(_dir.File("re.onnx")))
        {
            Assert.Contains(trained.Graph.Initializers, v => v.Name.Contains("_lora_B") && v.Initializer!.ToFloatArray().Any(x => x != 0));
            foreach (var v in trained.Graph.Initializers)
                Assert.Equal(v.Initializer!.GetRawData().ToArray(), reapplied.Graph.FindValue(v.Name)!.Initializer!.GetRawData().ToArray());
        }

        using (var merged = Model.Load(_dir.File("merged.onnx")))
            Assert.DoesNotContain(merged.Graph.Initializers, v => v.Name.Contains("_lora"));
        long[] ids = [.. Enumerable.Range(0, 2 * 12).Select(i => (long)((i * 7) % 64))];
        float[] Logits(string path)
        {
            using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(path); // stock ORT: no sptc operator library
            using var input = Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(ids, [2, 12]);
            using var outputs = session.Run(new Microsoft.ML.OnnxRuntime.RunOptions(), ["input_ids"], [input], [session.OutputNames[0]]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }

        var a = Logits(export);
        var b = Logits(_dir.File("merged.onnx"));
        Assert.Equal(a.Length, b.Length);
        Assert.True(a.Zip(b).Max(p => Math.Abs(p.First - p.Second)) < 1e-4, "merged logits differ from the unmerged model's by more than 1e-4");
    }

    /// <summary>An LM run plots to SVG: the training loss, the eval loss and the eval perplexity (right axis), by name.</summary>
    [Fact]
    public void Plot_svg_names_the_lm_curves()
    {
        var data = _dir.File("lm.jsonl");
        var rng = new Random(4);
        File.WriteAllLines(data, Enumerable.Range(0, 24).Select(_ => "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 12).Select(_ => rng.Next(64))) + "]}"));
        var metrics = _dir.File("lm.metrics.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", CliRunner.Fixture("gpt2_op17.onnx"), "--data", data, "--steps", "4", "--batch", "4",
            "--eval-every", "2", "--eval-fraction", "0.25", "--metrics", metrics, "--plot", "svg");
        Assert.True(code == 0, stderr);
        var plot = _dir.File("lm.metrics.svg");
        Assert.Contains($"plot: {plot} (loss, eval_loss, eval_perplexity)", stdout);
        var svg = System.Xml.Linq.XDocument.Load(plot);
        System.Xml.Linq.XNamespace ns = "http://www.w3.org/2000/svg";
        var texts = svg.Descendants(ns + "text").Select(t => t.Value.Trim()).ToList();
        Assert.Contains("loss", texts);
        Assert.Contains("eval_loss", texts);
        Assert.Contains("eval_perplexity", texts);
        Assert.Contains("step", texts);
        Assert.DoesNotContain("eval_accuracy", texts);
    }

    [Fact]
    public void Plot_without_metrics_is_one_line_and_exit_2()
    {
        var (code, _, stderr) = CliRunner.Run("train", Bert, "--data", Csv(8), "--tokenizer", Vocab(), "--task", "classify", "--steps", "1", "--plot");
        Assert.Equal(2, code);
        Assert.Equal("sptc: error: --plot draws the curves of --metrics: give --metrics FILE too", stderr.Trim());
    }

    [Fact]
    public void A_file_that_is_no_tokenizer_is_one_line_and_exit_2()
    {
        var junk = _dir.File("weights.bin");
        File.WriteAllBytes(junk, [.. Enumerable.Range(0, 256).Select(i => (byte)(255 - i))]);
        var (code, _, stderr) = CliRunner.Run("train", Bert, "--data", Csv(8), "--tokenizer", junk, "--task", "classify", "--steps", "1");
        Assert.Equal(2, code);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith($"sptc: error: '{junk}' is not a tokenizer file sptc knows", stderr);
    }

    [Theory]
    [InlineData("nope.txt", null, "tokenizer file")]
    [InlineData(null, "text,label\nhello,x\nworld,\n", "line 3: no 'label' value")]
    [InlineData(null, "body,label\nhello,x\n", "no column 'text'")]
    [InlineData(null, "text,label\n", "has no records (only a header)")]
    public void Bad_text_input_is_one_line_and_exit_2(string? tokenizer, string? csv, string expected)
    {
        var data = csv is null ? Csv(8) : _dir.File("bad.csv");
        if (csv is not null)
        {
            File.WriteAllText(data, csv);
        }

        var (code, _, stderr) = CliRunner.Run("train", Bert, "--data", data, "--tokenizer", tokenizer is null ? Vocab() : _dir.File(tokenizer),
            "--task", "classify", "--steps", "1", "--seq", "16");
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith("sptc: error: ", stderr);
    }
}
