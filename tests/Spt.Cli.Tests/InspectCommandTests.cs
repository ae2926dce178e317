using System.Text.Json;
using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Cli.Tests;

public class InspectCommandTests
{
    [Fact]
    public void JsonHasTheDocumentedKeysAndCounts()
    {
        var (code, stdout, stderr) = CliRunner.Run("inspect", CliRunner.Fixture("opt_op17.onnx"), "--json");
        Assert.Equal(0, code);
        Assert.Equal("", stderr);

        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        foreach (var key in new[] { "ir_version", "opsets", "inputs", "outputs", "nodes", "op_histogram", "parameters", "parameter_bytes" })
        {
            Assert.True(root.TryGetProperty(key, out _), $"missing key {key}");
        }

        Assert.Equal(17, root.GetProperty("opsets").GetProperty("ai.onnx").GetInt32());
        // Initializers are parameters, not inputs: the only input is the token ids.
        var input = Assert.Single(root.GetProperty("inputs").EnumerateArray());
        Assert.Equal("input_ids", input.GetProperty("name").GetString());
        Assert.Equal("i64", input.GetProperty("type").GetString());
        Assert.Equal(["batch", "sequence"], input.GetProperty("shape").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(2, root.GetProperty("op_histogram").GetProperty("Softmax").GetInt32());

        var histogramTotal = root.GetProperty("op_histogram").EnumerateObject().Sum(p => p.Value.GetInt32());
        Assert.Equal(root.GetProperty("nodes").GetInt32(), histogramTotal);
        var parameters = root.GetProperty("parameters").GetInt64();
        Assert.Equal(parameters * 4, root.GetProperty("parameter_bytes").GetInt64());
    }

    [Fact]
    public void TableNamesInputsOutputsAndOps()
    {
        var (code, stdout, _) = CliRunner.Run("inspect", CliRunner.Fixture("llama_op17.onnx"));
        Assert.Equal(0, code);
        Assert.Contains("input_ids", stdout);
        Assert.Contains("logits", stdout);
        Assert.Contains("MatMul", stdout);
        Assert.Contains("ai.onnx 17", stdout);
    }

    [Fact]
    public void DumpIsStable()
    {
        var first = CliRunner.Run("inspect", CliRunner.Fixture("gpt2_op14.onnx"), "--dump");
        var second = CliRunner.Run("inspect", CliRunner.Fixture("gpt2_op14.onnx"), "--dump");
        Assert.Equal(0, first.ExitCode);
        Assert.Equal(first.Out, second.Out);
        Assert.Contains("Softmax(", first.Out);
    }

    public static TheoryData<string, string> BadModels => new()
    {
        { "truncated", "not a valid ONNX model" },
        { "random", "not a valid ONNX model" },
        { "tensor-not-model", "not a valid ONNX model" },
        { "cycle", "cycle" },
        { "dangling", "nowhere" },
    };

    [Theory]
    [MemberData(nameof(BadModels))]
    public void BadModelIsOneLineAndExitCode2(string kind, string expected)
    {
        using var dir = new TempDir();
        var path = dir.File(kind + ".onnx");
        File.WriteAllBytes(path, BadModel(kind));

        var (code, stdout, stderr) = CliRunner.Run("inspect", path);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("sptc: error: ", line);
        Assert.Contains(expected, line);
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void VerboseAddsTheStackTrace()
    {
        using var dir = new TempDir();
        var path = dir.File("cycle.onnx");
        File.WriteAllBytes(path, BadModel("cycle"));
        var (code, _, stderr) = CliRunner.Run("inspect", path, "--verbose");
        Assert.Equal(2, code);
        Assert.Contains("   at ", stderr);
    }

    [Fact]
    public void MissingFileIsNamed()
    {
        var (code, _, stderr) = CliRunner.Run("inspect", "/nonexistent/model.onnx");
        Assert.Equal(2, code);
        Assert.Contains("'/nonexistent/model.onnx' does not exist", stderr);
    }

    [Fact]
    public void BadFlagIsOneErrorAndExitCode2()
    {
        var (code, stdout, stderr) = CliRunner.Run("inspect", CliRunner.Fixture("opt_op17.onnx"), "--frobnicate");
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains("sptc: error: Unrecognized command or argument '--frobnicate'", stderr);
    }

    [Fact]
    public void HelpWorksOnEveryCommand()
    {
        foreach (var args in new[] { new[] { "--help" }, ["inspect", "--help"] })
        {
            var (code, stdout, _) = CliRunner.Run(args);
            Assert.Equal(0, code);
            Assert.Contains("Usage:", stdout);
        }
    }

    private static byte[] BadModel(string kind)
    {
        var valid = File.ReadAllBytes(CliRunner.Fixture("opt_op17.onnx"));
        switch (kind)
        {
            case "truncated":
                return valid[..(valid.Length / 2)];
            case "random":
                var random = new byte[4096];
                new Random(7).NextBytes(random);
                return random;
            case "tensor-not-model":
                // A well-formed protobuf message of another kind: a tensor.
                var tensor = new TensorProto { Name = "t", DataType = 1 };
                tensor.Dims.Add(2);
                tensor.FloatData.Add([1f, 2f]);
                return tensor.ToByteArray();
            case "cycle":
                return Model(
                    Node("Relu", "a", "b"),
                    Node("Relu", "b", "a"));
            case "dangling":
                return Model(Node("Relu", "nowhere", "y"));
            default:
                throw new ArgumentOutOfRangeException(nameof(kind));
        }
    }

    private static NodeProto Node(string op, string input, string output)
    {
        var node = new NodeProto { OpType = op, Name = $"{op}_{output}" };
        node.Input.Add(input);
        node.Output.Add(output);
        return node;
    }

    private static byte[] Model(params NodeProto[] nodes)
    {
        var graph = new GraphProto { Name = "g" };
        graph.Node.Add(nodes);
        var type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1 } };
        graph.Input.Add(new ValueInfoProto { Name = "x", Type = type });
        graph.Output.Add(new ValueInfoProto { Name = nodes[^1].Output[0], Type = type });
        var model = new ModelProto { IrVersion = 8, Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        return model.ToByteArray();
    }
}
