using System.Text.Json;
using Spt.Ir;

namespace Spt.Cli.Tests;

public class OptimizeCommandTests
{
    [Fact]
    public void RewritesAFixtureAndWritesTheReport()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out.onnx");
        var report = Path.Combine(dir.Path, "report.json");
        var (code, stdout, stderr) = CliRunner.Run("optimize", CliRunner.Fixture("bert_mask_op17.onnx"), "-o", output, "--report", report, "--exact");
        Assert.True(code == 0, stderr);
        Assert.Contains("attention: 2/2 rewritten; ffn: 2/2 rewritten", stdout.Replace("\n", " ", StringComparison.Ordinal), StringComparison.Ordinal);
        using var written = Model.Load(output);
        Assert.Equal(2, written.Graph.Nodes.Count(n => n.OpType == "SparseAttention"));
        Assert.Equal(1, written.GetOpsetVersion("spt"));

        using var json = JsonDocument.Parse(File.ReadAllText(report));
        var root = json.RootElement;
        Assert.Equal(2, root.GetProperty("attention").GetProperty("found").GetInt32());
        Assert.Equal(2, root.GetProperty("attention").GetProperty("rewritten").GetInt32());
        Assert.Equal(2, root.GetProperty("ffn").GetProperty("found").GetInt32());
        Assert.Equal(2, root.GetProperty("ffn").GetProperty("rewritten").GetInt32());
        Assert.Equal(2, root.GetProperty("layers").GetArrayLength());
        Assert.Equal("attention_mask", root.GetProperty("layers")[0].GetProperty("attention").GetProperty("key_padding_mask").GetString());
        Assert.Equal(JsonValueKind.Array, root.GetProperty("unmatched").ValueKind);
        Assert.True(root.GetProperty("timings").GetProperty("compile_ms").GetDouble() > 0);
        Assert.Equal(17, root.GetProperty("opsets").GetProperty("ai.onnx").GetInt32());
    }

    [Fact]
    public void ExternalDataReferenceKeepsTheSourceWeightsInPlace()
    {
        using var dir = new TempDir();
        var source = Path.Combine(dir.Path, "gqa.onnx");
        using (var fixture = Model.Load(CliRunner.Fixture("gqa_repeat_kv_op17.onnx")))
            fixture.Save(source, new SaveOptions { ExternalData = ExternalDataMode.Always });
        var weights = File.ReadAllBytes(source + ".data");
        var output = Path.Combine(dir.Path, "out.onnx");
        var (code, _, stderr) = CliRunner.Run("optimize", source, "-o", output, "--exact", "--external-data", "reference");
        Assert.True(code == 0, stderr);
        Assert.Equal(weights, File.ReadAllBytes(source + ".data"));
        using (var written = Model.Load(output))
        {
            var external = written.Graph.Initializers.Select(v => v.Initializer!).Where(t => t.IsExternal).ToList();
            Assert.NotEmpty(external);
            Assert.All(external.Where(t => t.Name.StartsWith("layers.", StringComparison.Ordinal)), t => Assert.Equal("gqa.onnx.data", t.External!.Location));
        }
        var verify = CliRunner.Run("verify", source, output, "--tol", "1e-4", "--seq", "8");
        Assert.True(verify.ExitCode == 0, verify.Err + verify.Out);

        // An output in another directory cannot refer to the weights: one error line, exit 2, nothing written.
        var elsewhere = Directory.CreateDirectory(Path.Combine(dir.Path, "other")).FullName;
        var refused = CliRunner.Run("optimize", source, "-o", Path.Combine(elsewhere, "out.onnx"), "--external-data", "reference");
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("outside the output's directory", refused.Err, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFiles(elsewhere));
    }

    [Fact]
    public void NothingMatchedExitsWith3AndWritesNothing()
    {
        using var dir = new TempDir();
        var input = Path.Combine(dir.Path, "plain.onnx");
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 4);
        b.Output(b.Op("Softmax", [b.Op("MatMul", x, b.Initializer("w", new float[16], 4, 4))], ("axis", 0L)), "y");
        b.Build().Save(input);
        var output = Path.Combine(dir.Path, "out.onnx");
        var (code, stdout, stderr) = CliRunner.Run("optimize", input, "-o", output);
        Assert.Equal(3, code);
        Assert.Contains("no recognizable attention or FFN block", stderr, StringComparison.Ordinal);
        Assert.Contains("no match (softmax)", stdout, StringComparison.Ordinal);
        Assert.Contains("not over attention scores", stdout, StringComparison.Ordinal);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void ExplainPrintsTheReasons()
    {
        using var dir = new TempDir();
        var (code, stdout, _) = CliRunner.Run("optimize", CliRunner.Fixture("llama_op17.onnx"), "-o", Path.Combine(dir.Path, "o.onnx"), "--explain", "--codeword-dim", "8");
        Assert.Equal(0, code);
        // llama's head dim 12 is not a multiple of the explicit codeword dim 8: attention stays dense, FFNs are routed.
        Assert.Contains("attention layer 0 kept dense: head dim 12 is not divisible by the codeword dim 8", stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("missing.onnx")]
    [InlineData("garbage")]
    public void BadInputExitsWith2AndWritesNothing(string kind)
    {
        using var dir = new TempDir();
        var input = Path.Combine(dir.Path, "in.onnx");
        if (kind == "garbage")
            File.WriteAllText(input, "this is not an onnx model");
        var output = Path.Combine(dir.Path, "out.onnx");
        var (code, _, stderr) = CliRunner.Run("optimize", input, "-o", output);
        Assert.Equal(2, code);
        Assert.StartsWith("sptc: error:", stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void BadFlagsExitWith2()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out.onnx");
        var (code, _, _) = CliRunner.Run("optimize", CliRunner.Fixture("opt_op17.onnx"), "-o", output, "--active", "5");
        Assert.Equal(2, code);
        Assert.Equal(2, CliRunner.Run("optimize", CliRunner.Fixture("opt_op17.onnx"), "-o", output, "--layers", "x-y").ExitCode);
        Assert.False(File.Exists(output));
    }
}
