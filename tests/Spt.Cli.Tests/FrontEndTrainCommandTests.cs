using System.Text.Json.Nodes;

namespace Spt.Cli.Tests;

/// <summary>
/// Dense compile-training and train on exports whose shapes come from exporter shape arithmetic: a BERT classifier
/// that pools <c>x[:, 0]</c>, a Conv1d front end on token embeddings, and a ViT front end (Conv2d patches, cls token
/// expanded to the batch).
/// </summary>
public sealed class FrontEndTrainCommandTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData("bert_cls_op17.onnx", "loss classify", "data inputs input_ids, attention_mask, label")]
    [InlineData("conv1d_front_op17.onnx", "loss causal_lm", "data inputs input_ids, labels")]
    [InlineData("vit_conv_op17.onnx", "loss classify", "data inputs pixel_values, label")]
    public void Compile_training_works_dense(string fixture, string loss, string inputs)
    {
        var (code, stdout, stderr) = CliRunner.Run("compile-training", CliRunner.Fixture(fixture), "--out-dir", _dir.File("art"));
        Assert.True(code == 0, stderr);
        Assert.Contains(loss, stdout);
        Assert.Contains(inputs, stdout);
        Assert.True(File.Exists(_dir.File("art/grad.onnx")));
    }

    [Fact]
    public void Train_learns_with_the_first_token_pooled_classifier()
    {
        // The class is written into the first token, which the head reads through x[:, 0].
        var rng = new Random(1);
        var data = _dir.File("cls.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 64).Select(i =>
        {
            var ids = Enumerable.Range(0, 12).Select(j => j == 0 ? 10 + (5 * (i % 3)) : rng.Next(64));
            return $"{{\"input_ids\": [{string.Join(", ", ids)}], \"attention_mask\": [{string.Join(", ", Enumerable.Repeat(1, 12))}], \"label\": {i % 3}}}";
        }));
        var metrics = _dir.File("m.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", CliRunner.Fixture("bert_cls_op17.onnx"), "--data", data, "--task", "classify",
            "--steps", "30", "--batch", "8", "--lr", "3e-3", "--seed", "1", "--metrics", metrics);
        Assert.True(code == 0, stderr);
        Assert.Contains("train step 30/30", stdout);
        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.True(lines[^1]["loss"]!.GetValue<double>() < 0.5 * lines[0]["loss"]!.GetValue<double>());
        Assert.True(lines[^1]["eval_accuracy"]!.GetValue<double>() >= 0.9);
    }

    [Fact]
    public void Train_learns_through_a_conv1d_front_end()
    {
        var rng = new Random(1);
        var data = _dir.File("lm.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 64).Select(_ =>
            "{\"input_ids\": [" + string.Join(", ", Enumerable.Range(0, 16).Select(j => j % 3 == 0 ? 5 : rng.Next(64))) + "]}"));
        var metrics = _dir.File("m.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", CliRunner.Fixture("conv1d_front_op17.onnx"), "--data", data,
            "--steps", "24", "--batch", "4", "--lr", "3e-3", "--seed", "3", "--metrics", metrics);
        Assert.True(code == 0, stderr);
        var lines = File.ReadAllLines(metrics).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.True(lines[^1]["loss"]!.GetValue<double>() < lines[0]["loss"]!.GetValue<double>() - 0.5);
    }
}
