using System.Text.Json.Nodes;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>
/// An encoder-decoder (the BART-shaped fixture: input_ids, attention_mask, decoder_input_ids -> logits) trained with
/// --task seq2seq: the decoder's inputs are the labels shifted right behind --decoder-start-id, the loss is token
/// cross-entropy on the decoder's logits. A static decoder length and an input the trainer cannot fill are one-line
/// errors.
/// </summary>
public sealed class Seq2SeqTests : IDisposable
{
    private const int Alphabet = 16;

    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string Seq2SeqFixture(string file) => Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(CliRunner.Fixture("gpt2_op17.onnx")))!, "seq2seq", file);

    /// <summary>Sources of 3-6 tokens from a 16-token alphabet; targets the source itself (copy) or unrelated tokens.</summary>
    private string Data(bool copy, int rows = 160)
    {
        var rng = new Random(copy ? 1 : 2);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => 10 + rng.Next(Alphabet))];
        var lines = Enumerable.Range(0, rows).Select(_ =>
        {
            var source = Tokens(rng.Next(3, 7));
            var target = copy ? source : Tokens(rng.Next(3, 7));
            return $"{{\"input_ids\": [{string.Join(", ", source)}], \"labels\": [{string.Join(", ", target)}]}}";
        });
        var path = _dir.File(copy ? "copy.jsonl" : "random.jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    private (double FirstLoss, double EvalLoss, string Stdout) Train(string data, int steps, params string[] extra)
    {
        var metrics = _dir.File(Path.GetFileNameWithoutExtension(data) + ".metrics.jsonl");
        var (code, stdout, stderr) = CliRunner.Run([
            "train", Seq2SeqFixture("seq2seq_op17.onnx"), "--data", data, "--task", "seq2seq", "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--batch", "8", "--lr", "3e-3", "--warmup", "20", "--eval-fraction", "0.2", "--metrics", metrics, .. extra]);
        Assert.True(code == 0, stderr);
        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        return (lines[0]["task_loss"]!.GetValue<double>(), lines.Last(l => l["eval_loss"] is not null)["eval_loss"]!.GetValue<double>(), stdout);
    }

    [Fact]
    public void The_decoder_learns_to_copy_from_its_shifted_labels_and_cannot_peek_at_them()
    {
        // Copy: the target is readable only through cross-attention to the source; the loss falls far below chance.
        var (first, eval, stdout) = Train(Data(copy: true), 200, "--decoder-start-id", "1");
        Assert.Contains("sequences of 6 tokens", stdout);
        Assert.True(first > 0.9 * Math.Log(64), $"first loss {first}: the untrained model should be near uniform over 64 tokens");
        Assert.True(eval < 0.3 * Math.Log(Alphabet), $"copy task: eval loss {eval} is not below 30% of chance over the alphabet ({Math.Log(Alphabet):0.000})");

        // Targets unrelated to the source: if the decoder saw labels[t] at position t (no shift), held-out loss would go
        // to zero; with real teacher forcing nothing beyond the alphabet can be learned.
        var (_, randomEval, _) = Train(Data(copy: false), 60);
        Assert.True(randomEval > 0.85 * Math.Log(Alphabet), $"random targets: eval loss {randomEval} fell below chance: the decoder sees its targets");
    }

    [Fact]
    public void The_training_artifact_records_the_decoder_start_and_the_roles()
    {
        var work = _dir.File("art");
        var (code, _, stderr) = CliRunner.Run("train", Seq2SeqFixture("seq2seq_op17.onnx"), "--data", Data(copy: true, rows: 16), "--task", "seq2seq",
            "--steps", "1", "--batch", "4", "--decoder-start-id", "2", "--work-dir", work);
        Assert.True(code == 0, stderr);
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(work, "training.json")))!;
        Assert.Equal(2, manifest["loss"]!["decoder_start_id"]!.GetValue<long>());

        // The start id is part of the artifact: training the artifact directory again cannot change it.
        var (again, _, againErr) = CliRunner.Run("train", work, "--data", Data(copy: true, rows: 16), "--task", "seq2seq", "--steps", "1", "--decoder-start-id", "3");
        Assert.Equal(2, again);
        Assert.StartsWith("sptc: error: --decoder-start-id is compiled into the artifact", againErr);
        var roles = manifest["data_inputs"]!.AsArray().ToDictionary(d => d!["name"]!.GetValue<string>(), d => d!["role"]!.GetValue<string>());
        Assert.Equal("input_ids", roles["input_ids"]);
        Assert.Equal("attention_mask", roles["attention_mask"]);
        Assert.Equal("decoder_input_ids", roles["decoder_input_ids"]);
    }

    [Fact]
    public void A_static_decoder_length_is_one_line_naming_the_input()
    {
        var (code, _, stderr) = CliRunner.Run("train", Seq2SeqFixture("seq2seq_static_op17.onnx"), "--data", Data(copy: true, rows: 16), "--task", "seq2seq",
            "--steps", "1", "--batch", "4", "--seq", "10");
        Assert.Equal(2, code);
        Assert.Equal("sptc: error: data input 'decoder_input_ids' has a fixed sequence length 6, the batch has 10 tokens: use --seq 6 (and data padded to it)", stderr.Trim());
    }

    [Fact]
    public void Seq2seq_needs_a_decoder_input_and_targets()
    {
        var (code, _, stderr) = CliRunner.Run("train", CliRunner.Fixture("gpt2_op17.onnx"), "--data", Data(copy: true, rows: 16), "--task", "seq2seq", "--steps", "1");
        Assert.Equal(2, code);
        Assert.StartsWith("sptc: error: --task seq2seq needs an encoder-decoder: ", stderr);
        Assert.Contains("has no decoder input (decoder_input_ids)", stderr);

        var noTargets = _dir.File("sources.jsonl");
        File.WriteAllLines(noTargets, ["{\"input_ids\": [10, 11, 12]}", "{\"input_ids\": [12, 13]}"]);
        (code, _, stderr) = CliRunner.Run("train", Seq2SeqFixture("seq2seq_op17.onnx"), "--data", noTargets, "--task", "seq2seq", "--steps", "1");
        Assert.Equal(2, code);
        Assert.Equal($"sptc: error: {noTargets} line 1: no 'labels' (the target sequence a seq2seq model learns)", stderr.Trim());
    }

    /// <summary>
    /// Every graph input the trainer cannot fill meaningfully is refused by name: a second token input that does not
    /// say it is the decoder's (the fixture's decoder input renamed), and a float input of no known role.
    /// </summary>
    [Theory]
    [InlineData("target_tokens")]
    [InlineData("temperature")]
    public void An_input_the_trainer_cannot_fill_is_named(string input)
    {
        var path = _dir.File("renamed.onnx");
        using (var model = Model.Load(Seq2SeqFixture("seq2seq_op17.onnx")))
        {
            var editor = model.Graph.Edit();
            if (input == "temperature")
            {
                // logits / temperature: a float input the data cannot give.
                var t = editor.AddInput(input, new TensorType(ElementType.Float, [new Dim(1)]));
                var div = editor.CreateNode("Div", [model.Graph.Outputs[0], t], 1, [], "", "scale_by_temperature");
                editor.Append(div);
                editor.SetOutput(0, div.Outputs[0]);
            }
            else
            {
                editor.Rename(model.Graph.Inputs.Single(v => v.Name == "decoder_input_ids"), input);
            }

            model.Save(path);
        }

        var (code, _, stderr) = CliRunner.Run("train", path, "--data", Data(copy: true, rows: 16), "--steps", "1", "--batch", "4");
        Assert.Equal(2, code);
        Assert.Equal($"sptc: error: the model input '{input}' is neither token ids, an attention mask, token types, positions nor decoder inputs: " +
            "the trainer cannot fill it from the data (and will not feed made-up values)", stderr.Trim());
    }
}
