using System.Globalization;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// The load-time checks of a model beyond protobuf syntax, so that a malformed file fails once, with one line
/// (<see cref="OnnxModelException"/>), instead of deep inside a pass: header (ir_version, opset imports), every
/// tensor (dims, element type, raw byte count), value types (negative dims), names, and node attributes (kinds
/// the ONNX operator schemas give, <c>Transpose.perm</c> a permutation). Structural rules (names in scope, cycles)
/// are <see cref="GraphVerifier"/>'s.
/// </summary>
public static class ModelValidator
{
    /// <summary>
    /// Newest ir_version accepted: ONNX 1.19's (12). Later versions may change the meaning of fields this library
    /// reads, so they are refused rather than misread.
    /// </summary>
    public const long MaxIrVersion = 12;

    /// <summary>Newest default-domain (ai.onnx) opset accepted: ONNX 1.19's (24).</summary>
    public const long MaxOnnxOpset = 24;

    /// <summary>Checks the message before it is turned into the IR; <paramref name="what"/> names the source in messages.</summary>
    /// <exception cref="OnnxModelException">The first problem found.</exception>
    internal static void CheckProto(ModelProto proto, string what)
    {
        if (proto.IrVersion > MaxIrVersion)
            throw new OnnxModelException($"{what}: ir_version {proto.IrVersion} is newer than this build of sptc supports (at most {MaxIrVersion})");
        var domains = new HashSet<string>(StringComparer.Ordinal);
        foreach (var o in proto.OpsetImport)
        {
            string domain = o.Domain == "ai.onnx" ? "" : o.Domain;
            string shown = domain.Length == 0 ? "ai.onnx" : domain;
            if (!domains.Add(domain))
                throw new OnnxModelException($"{what}: opset of domain '{shown}' is imported twice");
            if (o.Version < 1)
                throw new OnnxModelException($"{what}: opset version {o.Version} of domain '{shown}' is not a version");
            if (domain.Length == 0 && o.Version > MaxOnnxOpset)
                throw new OnnxModelException($"{what}: opset {o.Version} of ai.onnx is newer than this build of sptc supports (at most {MaxOnnxOpset})");
        }
        CheckGraph(proto.Graph, $"{what}: graph '{proto.Graph.Name}'");
    }

    /// <summary>Checks node attributes of a model just read (kinds, Transpose.perm), in all graphs.</summary>
    /// <exception cref="OnnxModelException">The first problem found, naming the node.</exception>
    internal static void CheckNodes(Graph graph)
    {
        foreach (var node in graph.Nodes)
        {
            if (node.OpType.Length == 0)
                throw OnnxModelException.ForNode(node, "the node has no op_type");
            if (AttributeKinds.ArityProblem(node) is { } arity)
                throw OnnxModelException.ForNode(node, arity);
            foreach (var a in node.Attributes)
            {
                if (a.Kind == AttributeKind.Undefined && !a.IsReference)
                    throw OnnxModelException.ForNode(node, $"attribute '{a.Name}' has no type");
                if (!a.IsReference && a.RawValue == null)
                    throw OnnxModelException.ForNode(node, $"attribute '{a.Name}' is declared {a.Kind} but holds no value");
                if (AttributeKinds.Expected(node, a.Name) is { } expected && a.Kind != expected)
                    throw OnnxModelException.ForNode(node, AttributeKinds.Mismatch(a.Name, expected, a.Kind));
            }
            if (node.IsDefaultDomain && node.OpType == "Transpose" && node.GetAttribute("perm") is { RawValue: long[] perm })
                CheckPermutation(node, perm);
            foreach (var sub in node.Subgraphs)
                CheckNodes(sub);
        }
    }

    private static void CheckPermutation(Node node, long[] perm)
    {
        var seen = new bool[perm.Length];
        foreach (long p in perm)
        {
            if (p < 0 || p >= perm.Length || seen[p])
                throw OnnxModelException.ForNode(node, $"attribute 'perm' [{string.Join(", ", perm)}] is not a permutation of 0..{perm.Length - 1}");
            seen[p] = true;
        }
    }

    private static void CheckGraph(GraphProto g, string where)
    {
        for (int i = 0; i < g.Input.Count; i++)
            CheckValueInfo(g.Input[i], $"{where}: input {i}");
        for (int i = 0; i < g.Output.Count; i++)
            CheckValueInfo(g.Output[i], $"{where}: output {i}");
        foreach (var vi in g.ValueInfo)
            CheckType(vi.Type, $"{where}: value_info '{vi.Name}'");
        foreach (var t in g.Initializer)
        {
            if (t.Name.Length == 0)
                throw new OnnxModelException($"{where}: an initializer has an empty name");
            CheckTensor(t, where);
        }
        foreach (var s in g.SparseInitializer)
        {
            if (s.Values != null)
                CheckTensor(s.Values, where);
            if (s.Indices != null)
                CheckTensor(s.Indices, where);
            CheckDims(s.Dims, $"{where}: sparse initializer '{s.Values?.Name}'");
        }
        foreach (var n in g.Node)
        {
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var a in n.Attribute)
            {
                if (a.Name.Length == 0)
                    throw new OnnxModelException($"{where}: node '{n.Name}' ({n.OpType}) has an attribute without a name");
                if (!names.Add(a.Name))
                    throw new OnnxModelException($"{where}: node '{n.Name}' ({n.OpType}) has attribute '{a.Name}' twice");
                string at = $"{where}: node '{n.Name}' ({n.OpType}) attribute '{a.Name}'";
                if (a.T != null)
                    CheckTensor(a.T, at);
                foreach (var t in a.Tensors)
                    CheckTensor(t, at);
                if (a.G != null)
                    CheckGraph(a.G, $"{at}: subgraph '{a.G.Name}'");
                foreach (var sub in a.Graphs)
                    CheckGraph(sub, $"{at}: subgraph '{sub.Name}'");
            }
        }
    }

    private static void CheckValueInfo(ValueInfoProto vi, string where)
    {
        if (vi.Name.Length == 0)
            throw new OnnxModelException($"{where} has an empty name");
        CheckType(vi.Type, $"{where} '{vi.Name}'");
    }

    private static void CheckType(TypeProto? type, string where)
    {
        switch (type?.ValueCase)
        {
            case TypeProto.ValueOneofCase.TensorType when type.TensorType.Shape is { } shape:
                CheckShape(shape, where);
                break;
            case TypeProto.ValueOneofCase.SparseTensorType when type.SparseTensorType.Shape is { } shape:
                CheckShape(shape, where);
                break;
            case TypeProto.ValueOneofCase.SequenceType:
                CheckType(type.SequenceType.ElemType, where);
                break;
            case TypeProto.ValueOneofCase.OptionalType:
                CheckType(type.OptionalType.ElemType, where);
                break;
            case TypeProto.ValueOneofCase.MapType:
                CheckType(type.MapType.ValueType, where);
                break;
        }
    }

    private static void CheckShape(TensorShapeProto shape, string where)
    {
        foreach (var d in shape.Dim)
        {
            if (d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue && d.DimValue < 0)
                throw new OnnxModelException($"{where} has a negative dimension ({d.DimValue})");
        }
    }

    private static void CheckDims(IEnumerable<long> dims, string where)
    {
        foreach (long d in dims)
        {
            if (d < 0)
                throw new OnnxModelException($"{where} has a negative dimension ({d})");
        }
    }

    private static void CheckTensor(TensorProto t, string where)
    {
        string name = $"{where}: tensor '{t.Name}'";
        CheckDims(t.Dims, name);
        var type = (ElementType)t.DataType;
        if (t.DataType == 0 || !Enum.IsDefined(type))
            throw new OnnxModelException($"{name} has element type {t.DataType.ToString(CultureInfo.InvariantCulture)}, which ONNX does not define");
        long count = 1;
        try
        {
            foreach (long d in t.Dims)
                count = checked(count * d);
        }
        catch (OverflowException)
        {
            throw new OnnxModelException($"{name}: dims [{string.Join(",", t.Dims)}] hold more elements than a 64-bit count");
        }
        if (type == ElementType.String)
        {
            if (t.DataLocation != TensorProto.Types.DataLocation.External && t.StringData.Count != count)
                throw new OnnxModelException($"{name} of str[{string.Join(",", t.Dims)}] holds {t.StringData.Count} strings, needs {count}");
            return;
        }
        long bytes = type.BitWidth() == 4 ? (count + 1) / 2 : count > long.MaxValue / Math.Max(1, type.BitWidth() / 8) ? -1 : type.ByteCount(count);
        if (bytes < 0)
            throw new OnnxModelException($"{name}: dims [{string.Join(",", t.Dims)}] need more bytes than a 64-bit size");
        if (t.DataLocation == TensorProto.Types.DataLocation.External)
            return;
        if (t.HasRawData && t.RawData.Length != bytes)
            throw new OnnxModelException($"{name} of {type.ShortName()}[{string.Join(",", t.Dims)}] needs {bytes} bytes of raw_data, has {t.RawData.Length}");
    }
}
