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
            "--metrics", metrics, "--export", export, "--seed", "2");
        Assert.True(code == 0, stderr);
        Assert.Contains("tokenizer: WordPiece vocab.txt (39 tokens, lower-cased)", stdout);
        Assert.Contains("head: added a 3-output head on 'last_hidden_state' (cls pooling, width 32)", stdout);
        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        var evalLoss = lines.Last(l => l["eval_loss"] is not null)["eval_loss"]!.GetValue<double>();
        Assert.True(evalLoss < 0.8 * Math.Log(3), $"eval loss {evalLoss} is not below 80% of chance ({Math.Log(3):0.000})");

        using var model = Model.Load(export);
        Assert.Equal("logits", model.Graph.Outputs[0].Name);
        Assert.Contains(model.Metadata, kv => kv.Key == "spt.labels" && kv.Value == "{\"labels\":[\"food\",\"sport\",\"tech\"]}");
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
