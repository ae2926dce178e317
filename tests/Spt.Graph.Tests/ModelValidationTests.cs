using System.Diagnostics;
using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir.Tests;

/// <summary>
/// The load-time validation layer: each malformed field fails with one <see cref="OnnxModelException"/> line that
/// names the node, attribute or tensor, instead of an exception from deep inside a pass.
/// </summary>
public sealed class ModelValidationTests
{
    // x [2, 3] -> Transpose(perm [1, 0]) -> Softmax(axis 1) -> LayerNormalization(axis -1) -> y
    private static ModelProto Proto()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2, 3);
        var t = b.Op("Transpose", [x], ("perm", new long[] { 1, 0 }));
        var s = b.Op("Softmax", [t], ("axis", 1L));
        var y = b.Op("LayerNormalization", [s, b.Initializer("g", [1f, 1f], 2), b.Initializer("bias", [0f, 0f], 2)], ("axis", -1L), ("epsilon", 1e-5f));
        b.Output(y);
        var proto = ModelProto.Parser.ParseFrom(b.Build().ToBytes());
        proto.Graph.Node[0].Name = "tr";
        proto.Graph.Node[1].Name = "sm";
        proto.Graph.Node[2].Name = "ln";
        return proto;
    }

    private static OnnxModelException Fails(ModelProto proto)
    {
        var e = Assert.Throws<OnnxModelException>(() => Model.FromBytes(proto.ToByteArray()));
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }

    private static AttributeProto Attr(ModelProto p, string node, string name) =>
        p.Graph.Node.Single(n => n.Name == node).Attribute.Single(a => a.Name == name);

    [Fact]
    public void The_unmodified_model_loads()
    {
        using var model = Model.FromBytes(Proto().ToByteArray());
        Assert.Equal(3, model.Graph.Nodes.Count);
    }

    [Theory]
    [InlineData(new long[] { 1, 2 })]
    [InlineData(new long[] { 0, 0 })]
    [InlineData(new long[] { -1, 0 })]
    public void Transpose_perm_must_be_a_permutation(long[] perm)
    {
        var p = Proto();
        var a = Attr(p, "tr", "perm");
        a.Ints.Clear();
        a.Ints.AddRange(perm);
        var e = Fails(p);
        Assert.Contains("node 'tr' (Transpose, opset 17)", e.Message);
        Assert.Contains("is not a permutation", e.Message);
    }

    [Fact]
    public void Softmax_axis_as_a_float_names_node_attribute_expected_and_got()
    {
        var p = Proto();
        var a = Attr(p, "sm", "axis");
        a.Type = AttributeProto.Types.AttributeType.Float;
        a.ClearI();
        a.F = 1.5f;
        var e = Fails(p);
        Assert.Contains("node 'sm' (Softmax, opset 17): attribute 'axis' must be an int, got a float", e.Message);
    }

    [Fact]
    public void Transpose_perm_as_a_string()
    {
        var p = Proto();
        var a = Attr(p, "tr", "perm");
        a.Type = AttributeProto.Types.AttributeType.String;
        a.Ints.Clear();
        a.S = ByteString.CopyFromUtf8("1,0");
        Assert.Contains("attribute 'perm' must be a list of ints, got a string", Fails(p).Message);
    }

    [Fact]
    public void LayerNormalization_axis_as_a_tensor_and_epsilon_as_ints()
    {
        var p = Proto();
        var axis = Attr(p, "ln", "axis");
        axis.Type = AttributeProto.Types.AttributeType.Tensor;
        axis.ClearI();
        axis.T = Tensor.Scalar("axis", -1L).ToProto();
        Assert.Contains("attribute 'axis' must be an int, got a tensor", Fails(p).Message);

        p = Proto();
        var eps = Attr(p, "ln", "epsilon");
        eps.Type = AttributeProto.Types.AttributeType.Ints;
        eps.ClearF();
        eps.Ints.Add(1);
        Assert.Contains("attribute 'epsilon' must be a float, got a list of ints", Fails(p).Message);
    }

    [Fact]
    public void An_attribute_of_undefined_type()
    {
        var p = Proto();
        var a = Attr(p, "sm", "axis");
        a.Type = AttributeProto.Types.AttributeType.Undefined;
        Assert.Contains("node 'sm' (Softmax, opset 17): attribute 'axis' has no type", Fails(p).Message);

        p = Proto();
        p.Graph.Node[1].Attribute.Add(new AttributeProto { Name = "", Type = AttributeProto.Types.AttributeType.Int, I = 1 });
        Assert.Contains("attribute without a name", Fails(p).Message);
    }

    [Fact]
    public void Typed_accessors_throw_the_model_error_naming_node_and_attribute()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2);
        b.Output(b.Op("Custom", [x], ("k", 1.5f)));
        using var model = b.Build();
        var node = model.Graph.Nodes.Single();
        var e = Assert.Throws<OnnxModelException>(() => node.GetInt("k", 0));
        Assert.Contains("attribute 'k' must be an int, got a float", e.Message);
        Assert.Contains("(Custom", e.Message);
        Assert.Equal(7, node.GetInt("absent", 7));
        Assert.Throws<OnnxModelException>(() => node.GetInts("k"));
        Assert.Equal(1.5f, node.GetFloat("k", 0));
    }

    [Fact]
    public void Duplicate_opset_imports_and_versions_beyond_support()
    {
        var p = Proto();
        p.OpsetImport.Add(new OperatorSetIdProto { Domain = "ai.onnx", Version = 13 });
        Assert.Contains("opset of domain 'ai.onnx' is imported twice", Fails(p).Message);

        p = Proto();
        p.OpsetImport[0].Version = 99;
        Assert.Contains($"opset 99 of ai.onnx is newer than this build of sptc supports (at most {ModelValidator.MaxOnnxOpset})", Fails(p).Message);

        p = Proto();
        p.IrVersion = 99;
        Assert.Contains($"ir_version 99 is newer than this build of sptc supports (at most {ModelValidator.MaxIrVersion})", Fails(p).Message);
    }

    [Fact]
    public void Initializer_dims_that_overflow_or_raw_data_shorter_than_the_dims()
    {
        var p = Proto();
        var g = p.Graph.Initializer.Single(t => t.Name == "g");
        g.Dims.Clear();
        g.Dims.AddRange([1L << 40, 1L << 40]);
        Assert.Contains("hold more elements than a 64-bit count", Fails(p).Message);

        p = Proto();
        g = p.Graph.Initializer.Single(t => t.Name == "g");
        g.Dims.Clear();
        g.Dims.Add(1L << 62);
        Assert.Contains("need more bytes than a 64-bit size", Fails(p).Message);

        p = Proto();
        g = p.Graph.Initializer.Single(t => t.Name == "g");
        g.RawData = ByteString.CopyFrom(new byte[5]);
        g.FloatData.Clear();
        Assert.Contains("tensor 'g' of f32[2] needs 8 bytes of raw_data, has 5", Fails(p).Message);

        p = Proto();
        p.Graph.Initializer.Single(t => t.Name == "g").DataType = 77;
        Assert.Contains("element type 77, which ONNX does not define", Fails(p).Message);
    }

    [Fact]
    public void Negative_dims_and_empty_names()
    {
        var p = Proto();
        var g = p.Graph.Initializer.Single(t => t.Name == "g");
        g.Dims[0] = -2;
        Assert.Contains("tensor 'g' has a negative dimension (-2)", Fails(p).Message);

        p = Proto();
        p.Graph.Input[0].Type.TensorType.Shape.Dim[0].DimValue = -1;
        Assert.Contains("input 0 'x' has a negative dimension (-1)", Fails(p).Message);

        p = Proto();
        p.Graph.Input[0].Name = "";
        Assert.Contains("input 0 has an empty name", Fails(p).Message);
    }

    [Fact]
    public void Symlink_loop_FIFO_and_device_inputs_are_refused_without_blocking()
    {
        using var dir = TestData.CreateTempDir();
        string loop = dir.File("loop.onnx");
        File.CreateSymbolicLink(loop, loop);
        Assert.Contains("is a loop of symbolic links", Assert.Throws<OnnxModelException>(() => Model.Load(loop)).Message);

        string fifo = dir.File("pipe.onnx");
        MakeFifo(fifo);
        var watch = Stopwatch.StartNew();
        Assert.Contains("is a FIFO", Assert.Throws<OnnxModelException>(() => Model.Load(fifo)).Message);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5));

        Assert.Contains("is a device", Assert.Throws<OnnxModelException>(() => Model.Load("/dev/zero")).Message);
        Assert.Contains("is a directory", Assert.Throws<OnnxModelException>(() => Model.Load(dir.Path)).Message);
    }

    [Fact]
    public void Devices_FIFOs_and_directories_are_never_replaced_by_a_saved_model()
    {
        using var dir = TestData.CreateTempDir();
        using var model = Model.FromBytes(Proto().ToByteArray());
        Assert.Contains("is a device", Assert.Throws<OnnxModelException>(() => model.Save("/dev/null")).Message);
        Assert.Equal(PathKind.Device, FileChecks.Kind("/dev/null"));
        string fifo = dir.File("pipe.onnx");
        MakeFifo(fifo);
        Assert.Contains("is a FIFO", Assert.Throws<OnnxModelException>(() => model.Save(fifo)).Message);
        Assert.Equal(PathKind.Fifo, FileChecks.Kind(fifo));
        Assert.Contains("is a directory", Assert.Throws<OnnxModelException>(() => model.Save(dir.Path)).Message);
        Assert.Equal([fifo], Directory.GetFileSystemEntries(dir.Path));
    }

    internal static void MakeFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }
}
