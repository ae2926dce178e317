using System.Text.Json;
using Spt.Ir;
using Spt.Runtime;

namespace Spt.Cli.Tests;

/// <summary>An opset-11 export (older exporters' default) goes through sptc optimize end to end: upgraded, rewritten, runs.</summary>
public sealed class OldOpsetOptimizeTests
{
    [Theory]
    [InlineData("bert_mask_op11.onnx")]
    [InlineData("gpt2_op11.onnx")]
    public void Opset11ExportIsUpgradedRewrittenAndRuns(string fixture)
    {
        using var dir = new TempDir();
        var output = dir.File("spt.onnx");
        var report = dir.File("report.json");
        var (code, stdout, stderr) = CliRunner.Run("optimize", CliRunner.Fixture(fixture), "-o", output, "--report", report);
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("attention: 2/2 rewritten; ffn: 2/2 rewritten", stdout.Replace("\n", " ", StringComparison.Ordinal), StringComparison.Ordinal);
        using (var json = JsonDocument.Parse(File.ReadAllText(report)))
        {
            var root = json.RootElement;
            Assert.Equal(11, root.GetProperty("opsets").GetProperty("ai.onnx").GetInt32());
            Assert.Equal(11, root.GetProperty("opset_upgrade").GetProperty("from").GetInt32());
            Assert.Equal(13, root.GetProperty("opset_upgrade").GetProperty("to").GetInt32());
            Assert.Empty(root.GetProperty("unsupported").EnumerateArray());
        }

        using var written = Model.Load(output);
        Assert.Equal(13, written.GetOpsetVersion(""));
        Assert.Equal(2, written.Graph.Nodes.Count(n => n.OpType == "SparseAttention"));
        // The sparse model runs in ORT (custom ops registered) and gives finite outputs of the original's shape.
        using var original = Model.Load(CliRunner.Fixture(fixture));
        var inputs = InputGenerator.Generate(original, new InputGeneratorOptions { Batch = 2, Sequence = 12, Seed = 5 });
        using var expected = new OrtModelRunner(original);
        using var sparse = new OrtModelRunner(written);
        var before = expected.Run(inputs);
        var after = sparse.Run(inputs);
        Assert.Equal(before.Select(o => o.Key), after.Select(o => o.Key));
        Assert.Equal(before[0].Value.Shape, after[0].Value.Shape);
        Assert.All(after[0].Value.Floats!, v => Assert.True(float.IsFinite(v)));
    }
}
