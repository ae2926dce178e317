using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir.Tests;

/// <summary>Broken files and graphs fail with a one-line <see cref="OnnxModelException"/> naming the problem.</summary>
public sealed class BadInputTests
{
    private static byte[] SmallModelBytes()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2);
        var w = b.Initializer("w", [1f, 2f], 2);
        b.Output(b.Op("Add", x, w));
        return b.Build().ToBytes();
    }

    private static OnnxModelException LoadFails(byte[] bytes)
    {
        var e = Assert.Throws<OnnxModelException>(() => Model.FromBytes(bytes));
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }

    [Fact]
    public void TruncatedFile()
    {
        byte[] bytes = SmallModelBytes();
        using var dir = TestData.CreateTempDir();
        string path = dir.File("truncated.onnx");
        File.WriteAllBytes(path, bytes[..(bytes.Length - 7)]);
        var e = Assert.Throws<OnnxModelException>(() => Model.Load(path));
        Assert.Contains("truncated.onnx", e.Message);
        Assert.Contains("not a valid ONNX model", e.Message);
    }

    [Fact]
    public void RandomBytes()
    {
        var rng = new Random(1234);
        for (int i = 0; i < 20; i++)
        {
            var bytes = new byte[1 + rng.Next(4096)];
            rng.NextBytes(bytes);
            var e = LoadFails(bytes);
            Assert.Contains("ONNX model", e.Message);
        }
    }

    [Fact]
    public void SerializedTensorIsNotAModel()
    {
        var tensor = Tensor.Create("t", [1f, 2f, 3f], 3).ToProto();
        var e = LoadFails(tensor.ToByteArray());
        Assert.Contains("ONNX model", e.Message);
    }

    [Fact]
    public void ModelWithoutIrVersion()
    {
        var proto = ModelProto.Parser.ParseFrom(SmallModelBytes());
        proto.ClearIrVersion();
        var e = LoadFails(proto.ToByteArray());
        Assert.Contains("ir_version is missing", e.Message);
    }

    [Fact]
    public void MissingFile()
    {
        var e = Assert.Throws<OnnxModelException>(() => Model.Load(Path.Combine(Path.GetTempPath(), "no-such-dir-" + Guid.NewGuid(), "m.onnx")));
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void CyclicGraph()
    {
        var proto = ModelProto.Parser.ParseFrom(SmallModelBytes());
        var g = proto.Graph;
        // a = Relu(b); b = Neg(a): a two-node cycle.
        g.Node.Add(new NodeProto { Name = "ra", OpType = "Relu", Input = { "b" }, Output = { "a" } });
        g.Node.Add(new NodeProto { Name = "nb", OpType = "Neg", Input = { "a" }, Output = { "b" } });
        var e = LoadFails(proto.ToByteArray());
        Assert.Contains("cycle", e.Message);
        Assert.Contains("node 'ra' (Relu, opset 17)", e.Message);
    }

    [Fact]
    public void InputNamingNoValue()
    {
        var proto = ModelProto.Parser.ParseFrom(SmallModelBytes());
        proto.Graph.Node.Add(new NodeProto { Name = "lost", OpType = "Abs", Input = { "ghost" }, Output = { "z" } });
        var e = LoadFails(proto.ToByteArray());
        Assert.Contains("node 'lost' (Abs, opset 17)", e.Message);
        Assert.Contains("'ghost' names no value", e.Message);
    }

    [Fact]
    public void DuplicateValueNames()
    {
        var proto = ModelProto.Parser.ParseFrom(SmallModelBytes());
        string produced = proto.Graph.Node[0].Output[0];
        proto.Graph.Node.Add(new NodeProto { Name = "again", OpType = "Abs", Input = { "x" }, Output = { produced } });
        var e = LoadFails(proto.ToByteArray());
        Assert.Contains("node 'again' (Abs, opset 17)", e.Message);
        Assert.Contains("already defined", e.Message);
    }

    [Fact]
    public void MissingExternalDataFile()
    {
        using var dir = TestData.CreateTempDir();
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 512);
        var w = b.Initializer("weights", new float[512], 512);
        b.Output(b.Op("Add", x, w));
        string path = dir.File("m.onnx");
        b.Build().Save(path, new SaveOptions { ExternalData = ExternalDataMode.Always, ExternalDataFileName = "weights.bin" });
        File.Delete(dir.File("weights.bin"));
        var e = Assert.Throws<OnnxModelException>(() => Model.Load(path));
        Assert.Contains("tensor 'weights'", e.Message);
        Assert.Contains("'weights.bin' does not exist", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
