using Google.Protobuf;
using Spt.Ir;
using Spt.Ir.Onnx;

namespace Spt.Cli.Tests.Fuzz;

/// <summary>
/// Hand-made malformed models, one per failure class (and more): each writes its model (or a special file) into a
/// folder and returns its path. Most start from <see cref="Tiny"/>, a small valid model of the ops whose attributes
/// the passes read; some from a transformer fixture.
/// </summary>
internal static class CraftedModels
{
    /// <summary>A crafted case: its name and how to create it in a folder (returns the model path).</summary>
    public sealed record Case(string Name, Func<string, string> Create);

    /// <summary>
    /// x [2, 4] -> Transpose(perm [1, 0]) -> Softmax(axis 1) -> LayerNormalization(scale g, bias b; axis -1, epsilon)
    /// -> Gather(axis 0, indices idx) -> Concat(axis 0, with c) -> y. Nodes are named tr, sm, ln, ga, cc.
    /// </summary>
    public static ModelProto Tiny()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2, 4);
        var t = b.Op("Transpose", [x], ("perm", new long[] { 1, 0 }));
        var s = b.Op("Softmax", [t], ("axis", 1L));
        var ln = b.Op("LayerNormalization", [s, b.Initializer("g", [1f, 1f], 2), b.Initializer("b", [0f, 0f], 2)], ("axis", -1L), ("epsilon", 1e-5f));
        var ga = b.Op("Gather", [ln, b.Initializer("idx", new long[] { 0, 1 }, 2)], ("axis", 0L));
        var y = b.Op("Concat", [ga, b.Initializer("c", [1f, 2f], 1, 2)], ("axis", 0L));
        b.Output(y);
        var p = ModelProto.Parser.ParseFrom(b.Build().ToBytes());
        string[] names = ["tr", "sm", "ln", "ga", "cc"];
        for (int i = 0; i < names.Length; i++)
        {
            p.Graph.Node[i].Name = names[i];
        }

        return p;
    }

    private static NodeProto N(ModelProto p, string name) => p.Graph.Node.Single(n => n.Name == name);

    private static AttributeProto A(ModelProto p, string node, string attr) => N(p, node).Attribute.Single(a => a.Name == attr);

    private static TensorProto T(ModelProto p, string name) => p.Graph.Initializer.Single(t => t.Name == name);

    private static Case Proto(string name, Action<ModelProto> mutate) => new(name, dir =>
    {
        var p = Tiny();
        mutate(p);
        var path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, p.ToByteArray());
        return path;
    });

    private static Case Fixture(string name, string fixture, Action<ModelProto> mutate) => new(name, dir =>
    {
        var p = ModelProto.Parser.ParseFrom(File.ReadAllBytes(CliRunner.Fixture(fixture)));
        mutate(p);
        var path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, p.ToByteArray());
        return path;
    });

    private static Case Bytes(string name, Func<byte[]> bytes) => new(name, dir =>
    {
        var path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, bytes());
        return path;
    });

    private static void Kind(AttributeProto a, AttributeProto.Types.AttributeType type, Action<AttributeProto> set)
    {
        a.Type = type;
        a.ClearI();
        a.ClearF();
        a.Ints.Clear();
        set(a);
    }

    // Initializer 'g' (f32[2], 8 bytes) stored externally at <location>; the target gets exactly 8 bytes.
    private static Case External(string name, Func<string, string> locate, long? offset = null, long? length = null) => new(name, dir =>
    {
        var p = Tiny();
        var g = T(p, "g");
        g.ClearRawData();
        g.FloatData.Clear();
        g.DataLocation = TensorProto.Types.DataLocation.External;
        g.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = locate(dir) });
        if (offset is { } o)
            g.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = o.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        if (length is { } l)
            g.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = l.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        var path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, p.ToByteArray());
        return path;
    });

    // A file outside the case folder with exactly the 8 bytes tensor 'g' needs.
    private static string Outside(string dir)
    {
        var outside = Path.Combine(Path.GetDirectoryName(dir)!, Path.GetFileName(dir) + "-secret.bin");
        File.WriteAllBytes(outside, new byte[8]);
        return outside;
    }

    /// <summary>Every crafted case.</summary>
    public static IReadOnlyList<Case> All { get; } =
    [
        // Attributes: ranges and kinds.
        Proto("transpose-perm-out-of-range", p => { A(p, "tr", "perm").Ints[0] = 5; }),
        Proto("transpose-perm-duplicate", p => { A(p, "tr", "perm").Ints[1] = 1; }),
        Proto("transpose-perm-negative", p => { A(p, "tr", "perm").Ints[0] = -1; }),
        Proto("transpose-perm-too-short", p => { A(p, "tr", "perm").Ints.RemoveAt(1); }),
        Proto("transpose-perm-as-string", p => Kind(A(p, "tr", "perm"), AttributeProto.Types.AttributeType.String, a => a.S = ByteString.CopyFromUtf8("1,0"))),
        Proto("softmax-axis-as-float", p => Kind(A(p, "sm", "axis"), AttributeProto.Types.AttributeType.Float, a => a.F = 1.5f)),
        Proto("softmax-axis-out-of-range", p => { A(p, "sm", "axis").I = 99; }),
        Proto("layernorm-axis-as-tensor", p => Kind(A(p, "ln", "axis"), AttributeProto.Types.AttributeType.Tensor, a => a.T = Tensor.Scalar("a", -1L).ToProto())),
        Proto("layernorm-epsilon-as-ints", p => Kind(A(p, "ln", "epsilon"), AttributeProto.Types.AttributeType.Ints, a => a.Ints.Add(1))),
        Proto("layernorm-epsilon-as-string", p => Kind(A(p, "ln", "epsilon"), AttributeProto.Types.AttributeType.String, a => a.S = ByteString.CopyFromUtf8("tiny"))),
        Proto("gather-axis-as-string", p => Kind(A(p, "ga", "axis"), AttributeProto.Types.AttributeType.String, a => a.S = ByteString.CopyFromUtf8("0"))),
        Proto("concat-axis-as-floats", p => Kind(A(p, "cc", "axis"), AttributeProto.Types.AttributeType.Floats, a => a.Floats.Add(0))),
        Proto("attribute-undefined-type", p => { A(p, "sm", "axis").Type = AttributeProto.Types.AttributeType.Undefined; }),
        Proto("attribute-type-beyond-enum", p => { A(p, "sm", "axis").Type = (AttributeProto.Types.AttributeType)42; }),
        Proto("attribute-declared-without-value", p => Kind(A(p, "sm", "axis"), AttributeProto.Types.AttributeType.Int, _ => { })),
        Proto("attribute-empty-name", p => N(p, "sm").Attribute.Add(new AttributeProto { Name = "", Type = AttributeProto.Types.AttributeType.Int, I = 1 })),
        Proto("attribute-twice", p => N(p, "sm").Attribute.Add(new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = 0 })),
        Proto("if-branch-as-int", p => p.Graph.Node.Add(new NodeProto { Name = "if", OpType = "If", Input = { "x" }, Output = { "z" }, Attribute = { new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Int, I = 1 } } })),
        Proto("subgraph-with-bad-perm", p => p.Graph.Node.Add(new NodeProto
        {
            Name = "if", OpType = "If", Input = { "x" }, Output = { "z" },
            Attribute =
            {
                new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = new GraphProto { Name = "t", Node = { new NodeProto { Name = "inner", OpType = "Transpose", Input = { "x" }, Output = { "o" }, Attribute = { new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 7, 7 } } } } }, Output = { new ValueInfoProto { Name = "o" } } } },
                new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = new GraphProto { Name = "e", Output = { new ValueInfoProto { Name = "x" } } } },
            },
        })),
        Proto("cast-to-as-float", p => p.Graph.Node.Add(new NodeProto { Name = "cast", OpType = "Cast", Input = { "x" }, Output = { "z" }, Attribute = { new AttributeProto { Name = "to", Type = AttributeProto.Types.AttributeType.Float, F = 1 } } })),
        Proto("constant-value-as-int", p => p.Graph.Node.Add(new NodeProto { Name = "k", OpType = "Constant", Output = { "z" }, Attribute = { new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Int, I = 3 } } })),
        Proto("gemm-alpha-as-int", p => p.Graph.Node.Add(new NodeProto { Name = "gm", OpType = "Gemm", Input = { "x", "x" }, Output = { "z" }, Attribute = { new AttributeProto { Name = "alpha", Type = AttributeProto.Types.AttributeType.Int, I = 2 } } })),
        // Header: versions and opset imports.
        Proto("opset-imported-twice", p => p.OpsetImport.Add(new OperatorSetIdProto { Version = 13 })),
        Proto("opset-ai-onnx-alias-twice", p => p.OpsetImport.Add(new OperatorSetIdProto { Domain = "ai.onnx", Version = 17 })),
        Proto("opset-99", p => { p.OpsetImport[0].Version = 99; }),
        Proto("opset-0", p => { p.OpsetImport[0].Version = 0; }),
        Proto("opset-negative", p => { p.OpsetImport[0].Version = -3; }),
        Proto("ir-version-99", p => { p.IrVersion = 99; }),
        Proto("ir-version-0", p => { p.IrVersion = 0; }),
        Proto("ir-version-missing", p => p.ClearIrVersion()),
        Proto("no-graph", p => { p.Graph = null; }),
        // Tensors.
        Proto("initializer-dims-overflow-count", p => { var g = T(p, "g"); g.Dims.Clear(); g.Dims.AddRange([1L << 40, 1L << 40]); }),
        Proto("initializer-dims-overflow-bytes", p => { var g = T(p, "g"); g.Dims.Clear(); g.Dims.Add(1L << 62); }),
        Proto("initializer-raw-data-short", p => { T(p, "g").RawData = ByteString.CopyFrom(new byte[3]); }),
        Proto("initializer-raw-data-long", p => { T(p, "g").RawData = ByteString.CopyFrom(new byte[80]); }),
        Proto("initializer-negative-dim", p => { T(p, "g").Dims[0] = -2; }),
        Proto("initializer-huge-dim", p => { T(p, "g").Dims[0] = 1L << 33; }),
        Proto("initializer-undefined-type", p => { T(p, "g").DataType = 0; }),
        Proto("initializer-type-77", p => { T(p, "g").DataType = 77; }),
        Proto("initializer-empty-name", p => { T(p, "c").Name = ""; }),
        Proto("initializer-float-data-count", p => { var g = T(p, "g"); g.ClearRawData(); g.FloatData.Add(1f); }),
        Proto("initializer-string-count", p => p.Graph.Initializer.Add(new TensorProto { Name = "s", DataType = 8, Dims = { 3 }, StringData = { ByteString.CopyFromUtf8("a") } })),
        Proto("sparse-initializer-garbage", p => p.Graph.SparseInitializer.Add(new SparseTensorProto { Dims = { -1 }, Values = new TensorProto { Name = "sp", DataType = 1, Dims = { 2 } } })),
        Proto("constant-tensor-raw-short", p => p.Graph.Node.Add(new NodeProto { Name = "k", OpType = "Constant", Output = { "z" }, Attribute = { new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = new TensorProto { DataType = 1, Dims = { 4 }, RawData = ByteString.CopyFrom(new byte[4]) } } } })),
        // Names and value types.
        Proto("input-empty-name", p => { p.Graph.Input[0].Name = ""; }),
        Proto("output-empty-name", p => { p.Graph.Output[0].Name = ""; }),
        Proto("input-negative-dim", p => { p.Graph.Input[0].Type.TensorType.Shape.Dim[0].DimValue = -1; }),
        Proto("input-huge-dim", p => { p.Graph.Input[0].Type.TensorType.Shape.Dim[0].DimValue = long.MaxValue; }),
        Proto("input-elem-type-99", p => { p.Graph.Input[0].Type.TensorType.ElemType = 99; }),
        Proto("value-info-negative-dim", p => p.Graph.ValueInfo.Add(new ValueInfoProto { Name = "v", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimValue = -7 } } } } } })),
        Proto("node-without-op-type", p => { N(p, "sm").OpType = ""; }),
        Proto("node-input-names-nothing", p => { N(p, "sm").Input[0] = "ghost"; }),
        Proto("node-output-defined-twice", p => { N(p, "sm").Output[0] = N(p, "tr").Output[0]; }),
        Proto("cycle", p => { N(p, "tr").Input[0] = N(p, "sm").Output[0]; }),
        Proto("graph-output-undefined", p => { p.Graph.Output[0].Name = "nowhere"; }),
        Proto("matmul-missing-input", p => p.Graph.Node.Add(new NodeProto { Name = "mm", OpType = "MatMul", Input = { "x" }, Output = { "z" } })),
        Proto("unknown-op-of-our-domain", p => { N(p, "sm").Domain = "spt"; p.OpsetImport.Add(new OperatorSetIdProto { Domain = "spt", Version = 1 }); }),
        Proto("unknown-domain-not-imported", p => { N(p, "sm").Domain = "x.unknown"; }),
        // Files.
        Bytes("empty-file", () => []),
        Bytes("random-bytes", () => { var b = new byte[777]; new Random(5).NextBytes(b); return b; }),
        Bytes("truncated", () => { var b = Tiny().ToByteArray(); return b[..(b.Length / 2)]; }),
        Bytes("a-serialized-tensor", () => Tensor.Create("t", [1f, 2f], 2).ToProto().ToByteArray()),
        new("symlink-loop", dir => { var path = Path.Combine(dir, "m.onnx"); File.CreateSymbolicLink(path, path); return path; }),
        new("dangling-symlink", dir => { var path = Path.Combine(dir, "m.onnx"); File.CreateSymbolicLink(path, Path.Combine(dir, "gone")); return path; }),
        new("fifo", dir => { var path = Path.Combine(dir, "m.onnx"); FaultTests.MakeFifo(path); return path; }),
        new("directory", dir => { var path = Path.Combine(dir, "m.onnx"); Directory.CreateDirectory(path); return path; }),
        new("device", dir => { var path = Path.Combine(dir, "m.onnx"); File.CreateSymbolicLink(path, "/dev/zero"); return path; }),
        // External data.
        External("external-absolute-size-matched", Outside),
        External("external-dot-dot-size-matched", dir => "../" + Path.GetFileName(Outside(dir))),
        External("external-symlink-out-size-matched", dir => { File.CreateSymbolicLink(Path.Combine(dir, "w.bin"), Outside(dir)); return "w.bin"; }),
        External("external-missing", _ => "missing.bin"),
        External("external-device", dir => { File.CreateSymbolicLink(Path.Combine(dir, "w.bin"), "/dev/zero"); return "w.bin"; }),
        External("external-directory", dir => { Directory.CreateDirectory(Path.Combine(dir, "w.bin")); return "w.bin"; }),
        External("external-empty-location", _ => ""),
        External("external-offset-beyond", dir => { File.WriteAllBytes(Path.Combine(dir, "w.bin"), new byte[8]); return "w.bin"; }, offset: 1L << 40),
        External("external-offset-overflow", dir => { File.WriteAllBytes(Path.Combine(dir, "w.bin"), new byte[8]); return "w.bin"; }, offset: long.MaxValue, length: 8),
        External("external-length-mismatch", dir => { File.WriteAllBytes(Path.Combine(dir, "w.bin"), new byte[64]); return "w.bin"; }, length: 12),
        // A transformer fixture with damage where the recognizers and the training compiler look.
        Fixture("gpt2-softmax-axis-float", "gpt2_op17.onnx", p => { var a = p.Graph.Node.First(n => n.OpType == "Softmax").Attribute.Single(a => a.Name == "axis"); Kind(a, AttributeProto.Types.AttributeType.Float, x => x.F = -1); }),
        Fixture("gpt2-transpose-perm-out-of-range", "gpt2_op17.onnx", p => { p.Graph.Node.First(n => n.OpType == "Transpose").Attribute.Single(a => a.Name == "perm").Ints[0] = 9; }),
        Fixture("gpt2-embedding-dims-overflow", "gpt2_op17.onnx", p => { var t = p.Graph.Initializer.OrderByDescending(t => t.RawData.Length).First(); t.Dims[0] = long.MaxValue / 2; }),
        Fixture("gpt2-embedding-raw-short", "gpt2_op17.onnx", p => { var t = p.Graph.Initializer.OrderByDescending(t => t.RawData.Length).First(); t.RawData = ByteString.CopyFrom(t.RawData.Span[..16]); }),
        Fixture("gpt2-layernorm-epsilon-ints", "gpt2_op17.onnx", p => { var n = p.Graph.Node.First(n => n.OpType == "LayerNormalization"); var a = n.Attribute.FirstOrDefault(a => a.Name == "epsilon"); if (a is null) { a = new AttributeProto { Name = "epsilon" }; n.Attribute.Add(a); } Kind(a, AttributeProto.Types.AttributeType.Ints, x => x.Ints.Add(1)); }),
        Fixture("mha-matmul-weight-3d", "mha_op17.onnx", p => { var t = p.Graph.Initializer.First(t => t.Dims.Count == 2); t.Dims.Add(1); }),
        Fixture("ffn-input-rank-0", "ffn_relu_op17.onnx", p => { p.Graph.Input[0].Type.TensorType.Shape.Dim.Clear(); }),
        Fixture("ffn-gemm-trans-as-float", "ffn_relu_op17.onnx", p => p.Graph.Node.Add(new NodeProto { Name = "gm", OpType = "Gemm", Input = { p.Graph.Input[0].Name, p.Graph.Input[0].Name }, Output = { "gz" }, Attribute = { new AttributeProto { Name = "transB", Type = AttributeProto.Types.AttributeType.Float, F = 1 } } })),
    ];
}
