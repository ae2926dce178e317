using System.Diagnostics;
using System.Globalization;
using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>Kinds of attribute values; the numeric values are ONNX's <c>AttributeProto.AttributeType</c>.</summary>
public enum AttributeKind
{
    /// <summary>No kind given.</summary>
    Undefined = 0,
    /// <summary>One float.</summary>
    Float = 1,
    /// <summary>One 64-bit integer.</summary>
    Int = 2,
    /// <summary>One byte string (UTF-8 by convention).</summary>
    String = 3,
    /// <summary>One tensor.</summary>
    Tensor = 4,
    /// <summary>One graph (a subgraph, e.g. If's branches or Loop's body).</summary>
    Graph = 5,
    /// <summary>List of floats.</summary>
    Floats = 6,
    /// <summary>List of 64-bit integers.</summary>
    Ints = 7,
    /// <summary>List of byte strings.</summary>
    Strings = 8,
    /// <summary>List of tensors.</summary>
    Tensors = 9,
    /// <summary>List of graphs.</summary>
    Graphs = 10,
    /// <summary>One sparse tensor.</summary>
    SparseTensor = 11,
    /// <summary>List of sparse tensors.</summary>
    SparseTensors = 12,
    /// <summary>One type.</summary>
    TypeProto = 13,
    /// <summary>List of types.</summary>
    TypeProtos = 14,
}

/// <summary>
/// A named attribute of a node. Attributes are immutable; to change one, replace it in
/// <see cref="Node.Attributes"/>. Graph-valued attributes hold mutable <see cref="Graph"/>s that
/// belong to the node. An attribute read from a model keeps its message, so unchanged parts are
/// written back exactly.
/// </summary>
[DebuggerDisplay("{Name}: {Kind}")]
public sealed class Attribute
{
    private readonly object? _value;

    private Attribute(string name, AttributeKind kind, object? value, string? refAttrName, string? docString, AttributeProto? template)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
        Kind = kind;
        _value = value;
        RefAttrName = refAttrName;
        DocString = docString;
        Template = template;
    }

    /// <summary>Attribute name.</summary>
    public string Name { get; }

    /// <summary>Kind of value.</summary>
    public AttributeKind Kind { get; }

    /// <summary>Inside a function body: the name of the caller's attribute this one refers to (the value is then absent).</summary>
    public string? RefAttrName { get; }

    /// <summary>Documentation string, or null.</summary>
    public string? DocString { get; }

    /// <summary>The message read, with tensor and graph payloads taken out (they live in the IR objects).</summary>
    internal AttributeProto? Template { get; }

    /// <summary>Whether this is a reference to an enclosing function's attribute.</summary>
    public bool IsReference => RefAttrName != null;

    // ---------------------------------------------------------------- accessors

    /// <summary>The float value.</summary>
    public float AsFloat() => Get<float>(AttributeKind.Float);

    /// <summary>The integer value.</summary>
    public long AsInt() => Get<long>(AttributeKind.Int);

    /// <summary>The string value decoded as UTF-8.</summary>
    public string AsString() => Get<ByteString>(AttributeKind.String).ToStringUtf8();

    /// <summary>The string value as bytes.</summary>
    public ByteString AsBytes() => Get<ByteString>(AttributeKind.String);

    /// <summary>The tensor value.</summary>
    public Tensor AsTensor() => Get<Tensor>(AttributeKind.Tensor);

    /// <summary>The graph value.</summary>
    public Graph AsGraph() => Get<Graph>(AttributeKind.Graph);

    /// <summary>The sparse tensor value.</summary>
    public SparseTensor AsSparseTensor() => Get<SparseTensor>(AttributeKind.SparseTensor);

    /// <summary>The type value.</summary>
    public OnnxType AsType() => Get<OnnxType>(AttributeKind.TypeProto);

    /// <summary>The float list.</summary>
    public IReadOnlyList<float> AsFloats() => Get<float[]>(AttributeKind.Floats);

    /// <summary>The integer list.</summary>
    public IReadOnlyList<long> AsInts() => Get<long[]>(AttributeKind.Ints);

    /// <summary>The string list decoded as UTF-8.</summary>
    public IReadOnlyList<string> AsStrings() => [.. Get<ByteString[]>(AttributeKind.Strings).Select(s => s.ToStringUtf8())];

    /// <summary>The string list as bytes.</summary>
    public IReadOnlyList<ByteString> AsByteStrings() => Get<ByteString[]>(AttributeKind.Strings);

    /// <summary>The tensor list.</summary>
    public IReadOnlyList<Tensor> AsTensors() => Get<Tensor[]>(AttributeKind.Tensors);

    /// <summary>The graph list.</summary>
    public IReadOnlyList<Graph> AsGraphs() => Get<Graph[]>(AttributeKind.Graphs);

    /// <summary>The sparse tensor list.</summary>
    public IReadOnlyList<SparseTensor> AsSparseTensors() => Get<SparseTensor[]>(AttributeKind.SparseTensors);

    /// <summary>The type list.</summary>
    public IReadOnlyList<OnnxType> AsTypes() => Get<OnnxType[]>(AttributeKind.TypeProtos);

    /// <summary>The value as an object (float, long, ByteString, Tensor, Graph, ... or arrays of them); null for references.</summary>
    public object? RawValue => _value;

    /// <summary>Graphs held by this attribute (none unless it is graph-valued).</summary>
    public IEnumerable<Graph> Graphs => _value switch
    {
        Graph g => [g],
        Graph[] gs => gs,
        _ => [],
    };

    private T Get<T>(AttributeKind kind)
    {
        if (Kind != kind || _value is not T v)
            throw new InvalidOperationException(IsReference
                ? $"attribute '{Name}' refers to '{RefAttrName}' and has no value of its own"
                : $"attribute '{Name}' is {Kind}, not {kind}");
        return v;
    }

    // ---------------------------------------------------------------- factories

    /// <summary>A float attribute.</summary>
    public static Attribute FromFloat(string name, float value) => new(name, AttributeKind.Float, value, null, null, null);

    /// <summary>An integer attribute.</summary>
    public static Attribute FromInt(string name, long value) => new(name, AttributeKind.Int, value, null, null, null);

    /// <summary>A string attribute (UTF-8).</summary>
    public static Attribute FromString(string name, string value) => new(name, AttributeKind.String, ByteString.CopyFromUtf8(value), null, null, null);

    /// <summary>A string attribute from bytes.</summary>
    public static Attribute FromBytes(string name, ByteString value) => new(name, AttributeKind.String, value, null, null, null);

    /// <summary>A tensor attribute.</summary>
    public static Attribute FromTensor(string name, Tensor value) => new(name, AttributeKind.Tensor, value, null, null, null);

    /// <summary>A graph attribute. The graph must not belong to another node.</summary>
    public static Attribute FromGraph(string name, Graph value) => new(name, AttributeKind.Graph, value, null, null, null);

    /// <summary>A sparse tensor attribute.</summary>
    public static Attribute FromSparseTensor(string name, SparseTensor value) => new(name, AttributeKind.SparseTensor, value, null, null, null);

    /// <summary>A type attribute.</summary>
    public static Attribute FromType(string name, OnnxType value) => new(name, AttributeKind.TypeProto, value, null, null, null);

    /// <summary>A float list attribute.</summary>
    public static Attribute FromFloats(string name, IEnumerable<float> values) => new(name, AttributeKind.Floats, values.ToArray(), null, null, null);

    /// <summary>An integer list attribute.</summary>
    public static Attribute FromInts(string name, IEnumerable<long> values) => new(name, AttributeKind.Ints, values.ToArray(), null, null, null);

    /// <summary>A string list attribute (UTF-8).</summary>
    public static Attribute FromStrings(string name, IEnumerable<string> values) =>
        new(name, AttributeKind.Strings, values.Select(ByteString.CopyFromUtf8).ToArray(), null, null, null);

    /// <summary>A tensor list attribute.</summary>
    public static Attribute FromTensors(string name, IEnumerable<Tensor> values) => new(name, AttributeKind.Tensors, values.ToArray(), null, null, null);

    /// <summary>A graph list attribute.</summary>
    public static Attribute FromGraphs(string name, IEnumerable<Graph> values) => new(name, AttributeKind.Graphs, values.ToArray(), null, null, null);

    /// <summary>A sparse tensor list attribute.</summary>
    public static Attribute FromSparseTensors(string name, IEnumerable<SparseTensor> values) => new(name, AttributeKind.SparseTensors, values.ToArray(), null, null, null);

    /// <summary>A type list attribute.</summary>
    public static Attribute FromTypes(string name, IEnumerable<OnnxType> values) => new(name, AttributeKind.TypeProtos, values.ToArray(), null, null, null);

    /// <summary>A reference (inside a function body) to the calling node's attribute <paramref name="refAttrName"/>.</summary>
    public static Attribute Reference(string name, AttributeKind kind, string refAttrName) => new(name, kind, null, refAttrName, null, null);

    /// <summary>
    /// An attribute from a .NET value: int/long → Int, float/double → Float, string → String,
    /// int[]/long[] → Ints, float[]/double[] → Floats, string[] → Strings, Tensor, Graph, OnnxType,
    /// SparseTensor and arrays of them.
    /// </summary>
    public static Attribute From(string name, object value) => value switch
    {
        Attribute a => a.Name == name ? a : throw new ArgumentException($"attribute '{a.Name}' given for name '{name}'"),
        int i => FromInt(name, i),
        long l => FromInt(name, l),
        bool b => FromInt(name, b ? 1 : 0),
        float f => FromFloat(name, f),
        double d => FromFloat(name, (float)d),
        string s => FromString(name, s),
        ByteString bs => FromBytes(name, bs),
        int[] ia => FromInts(name, ia.Select(v => (long)v)),
        long[] la => FromInts(name, la),
        float[] fa => FromFloats(name, fa),
        double[] da => FromFloats(name, da.Select(v => (float)v)),
        string[] sa => FromStrings(name, sa),
        Tensor t => FromTensor(name, t),
        Tensor[] ts => FromTensors(name, ts),
        Graph g => FromGraph(name, g),
        Graph[] gs => FromGraphs(name, gs),
        SparseTensor st => FromSparseTensor(name, st),
        SparseTensor[] sts => FromSparseTensors(name, sts),
        OnnxType ty => FromType(name, ty),
        OnnxType[] tys => FromTypes(name, tys),
        _ => throw new ArgumentException($"attribute '{name}': no ONNX attribute kind for {value.GetType().Name}"),
    };

    /// <summary>A copy with another name.</summary>
    public Attribute WithName(string name) => new(name, Kind, _value, RefAttrName, DocString, null);

    /// <summary>A copy with a doc string.</summary>
    public Attribute WithDocString(string? docString) => new(Name, Kind, _value, RefAttrName, docString, null);

    // ---------------------------------------------------------------- protobuf

    /// <summary>Reads an attribute; the message is owned by the result (its payload fields are moved out).</summary>
    internal static Attribute FromProtoOwned(AttributeProto proto, Func<GraphProto, Graph> readGraph, ExternalDataStore? store)
    {
        var kind = proto.HasType ? (AttributeKind)proto.Type : InferKind(proto);
        string? refName = proto.HasRefAttrName ? proto.RefAttrName : null;
        string? doc = proto.HasDocString ? proto.DocString : null;
        object? value = refName != null && !HasPayload(proto) ? null : kind switch
        {
            AttributeKind.Float => proto.F,
            AttributeKind.Int => proto.I,
            AttributeKind.String => proto.S,
            AttributeKind.Tensor => proto.T is { } t ? Tensor.FromProtoOwned(t, store) : null,
            AttributeKind.Graph => proto.G is { } g ? readGraph(g) : null,
            AttributeKind.SparseTensor => proto.SparseTensor is { } st ? SparseTensor.FromProtoOwned(st, store) : null,
            AttributeKind.TypeProto => proto.Tp is { } tp ? OnnxType.FromProto(tp) : null,
            AttributeKind.Floats => proto.Floats.ToArray(),
            AttributeKind.Ints => proto.Ints.ToArray(),
            AttributeKind.Strings => proto.Strings.ToArray(),
            AttributeKind.Tensors => proto.Tensors.Select(t => Tensor.FromProtoOwned(t, store)).ToArray(),
            AttributeKind.Graphs => proto.Graphs.Select(readGraph).ToArray(),
            AttributeKind.SparseTensors => proto.SparseTensors.Select(s => SparseTensor.FromProtoOwned(s, store)).ToArray(),
            AttributeKind.TypeProtos => proto.TypeProtos.Select(OnnxType.FromProto).ToArray(),
            _ => null,
        };
        // The IR objects now own tensor and graph payloads; the template keeps everything else.
        proto.T = null;
        proto.G = null;
        proto.SparseTensor = null;
        proto.Tensors.Clear();
        proto.Graphs.Clear();
        proto.SparseTensors.Clear();
        return new Attribute(proto.Name, kind, value, refName, doc, proto);
    }

    private static bool HasPayload(AttributeProto p) =>
        p.HasF || p.HasI || p.HasS || p.T != null || p.G != null || p.SparseTensor != null || p.Tp != null
        || p.Floats.Count > 0 || p.Ints.Count > 0 || p.Strings.Count > 0 || p.Tensors.Count > 0
        || p.Graphs.Count > 0 || p.SparseTensors.Count > 0 || p.TypeProtos.Count > 0;

    // Very old models leave out the type; the populated field tells it.
    private static AttributeKind InferKind(AttributeProto p) =>
        p.HasF ? AttributeKind.Float
        : p.HasI ? AttributeKind.Int
        : p.HasS ? AttributeKind.String
        : p.T != null ? AttributeKind.Tensor
        : p.G != null ? AttributeKind.Graph
        : p.SparseTensor != null ? AttributeKind.SparseTensor
        : p.Tp != null ? AttributeKind.TypeProto
        : p.Floats.Count > 0 ? AttributeKind.Floats
        : p.Ints.Count > 0 ? AttributeKind.Ints
        : p.Strings.Count > 0 ? AttributeKind.Strings
        : p.Tensors.Count > 0 ? AttributeKind.Tensors
        : p.Graphs.Count > 0 ? AttributeKind.Graphs
        : p.SparseTensors.Count > 0 ? AttributeKind.SparseTensors
        : p.TypeProtos.Count > 0 ? AttributeKind.TypeProtos
        : AttributeKind.Undefined;

    /// <summary>Writes the attribute; <paramref name="writeGraph"/> and <paramref name="writeTensor"/> serialize payloads.</summary>
    internal AttributeProto ToProto(Func<Graph, GraphProto> writeGraph, Func<Tensor, TensorProto> writeTensor)
    {
        if (Template != null)
        {
            // Scalars, lists and types are immutable and still in the template; add the IR-owned payloads.
            var p = Template.Clone();
            AddOwnedPayload(p, writeGraph, writeTensor);
            return p;
        }
        var proto = new AttributeProto { Name = Name, Type = (AttributeProto.Types.AttributeType)Kind };
        if (RefAttrName != null)
            proto.RefAttrName = RefAttrName;
        if (DocString != null)
            proto.DocString = DocString;
        switch (_value)
        {
            case float f:
                proto.F = f;
                break;
            case long i:
                proto.I = i;
                break;
            case ByteString s:
                proto.S = s;
                break;
            case OnnxType t:
                proto.Tp = t.ToProto();
                break;
            case float[] fs:
                proto.Floats.AddRange(fs);
                break;
            case long[] ls:
                proto.Ints.AddRange(ls);
                break;
            case ByteString[] ss:
                proto.Strings.AddRange(ss);
                break;
            case OnnxType[] ts:
                proto.TypeProtos.AddRange(ts.Select(t => t.ToProto()));
                break;
        }
        AddOwnedPayload(proto, writeGraph, writeTensor);
        return proto;
    }

    private void AddOwnedPayload(AttributeProto p, Func<Graph, GraphProto> writeGraph, Func<Tensor, TensorProto> writeTensor)
    {
        switch (_value)
        {
            case Tensor t:
                p.T = writeTensor(t);
                break;
            case Graph g:
                p.G = writeGraph(g);
                break;
            case SparseTensor st:
                p.SparseTensor = st.ToProto(writeTensor);
                break;
            case Tensor[] ts:
                p.Tensors.AddRange(ts.Select(writeTensor));
                break;
            case Graph[] gs:
                p.Graphs.AddRange(gs.Select(writeGraph));
                break;
            case SparseTensor[] sts:
                p.SparseTensors.AddRange(sts.Select(s => s.ToProto(writeTensor)));
                break;
        }
    }

    /// <summary>Value text for the dump: <c>1</c>, <c>0.5</c>, <c>"str"</c>, <c>[1, 2]</c>, <c>tensor(f32[2])[1, 2]</c>, <c>@ref</c>.</summary>
    public string ValueText()
    {
        if (RefAttrName != null)
            return "@" + RefAttrName;
        var ic = CultureInfo.InvariantCulture;
        return _value switch
        {
            float f => f.ToString("R", ic),
            long l => l.ToString(ic),
            ByteString s => Quote(s.ToStringUtf8()),
            Tensor t => $"tensor({t.ElementType.ShortName()}[{string.Join(",", t.Dims)}]){t.PreviewText()}",
            Graph g => $"graph({g.Name})",
            SparseTensor st => $"sparse({st.Values.ElementType.ShortName()}[{string.Join(",", st.Dims)}], nnz={st.Values.ElementCount})",
            OnnxType ty => ty.ToString(),
            float[] fs => "[" + string.Join(", ", fs.Select(v => v.ToString("R", ic))) + "]",
            long[] ls => "[" + string.Join(", ", ls.Select(v => v.ToString(ic))) + "]",
            ByteString[] ss => "[" + string.Join(", ", ss.Select(s => Quote(s.ToStringUtf8()))) + "]",
            Tensor[] ts => "[" + string.Join(", ", ts.Select(t => $"tensor({t.ElementType.ShortName()}[{string.Join(",", t.Dims)}])")) + "]",
            Graph[] gs => "[" + string.Join(", ", gs.Select(g => $"graph({g.Name})")) + "]",
            SparseTensor[] sts => $"[{sts.Length} sparse tensors]",
            OnnxType[] tys => "[" + string.Join(", ", tys.Select(t => t.ToString())) + "]",
            _ => "<undefined>",
        };
    }

    private static string Quote(string s) => "\"" + s.Replace("\\", "\\\\", StringComparison.Ordinal)
        .Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal) + "\"";
}

/// <summary>
/// A sparse tensor in COO form: <see cref="Values"/> holds the non-default elements, <see cref="Indices"/>
/// their positions (int64, [NNZ, rank] or linearized [NNZ]), <see cref="Dims"/> the dense shape.
/// </summary>
public sealed class SparseTensor
{
    private readonly SparseTensorProto? _template;

    /// <summary>Creates a sparse tensor; its name is the name of <paramref name="values"/>.</summary>
    public SparseTensor(Tensor values, Tensor indices, IReadOnlyList<long> dims)
        : this(values, indices, dims, null)
    {
    }

    private SparseTensor(Tensor values, Tensor indices, IReadOnlyList<long> dims, SparseTensorProto? template)
    {
        Values = values;
        Indices = indices;
        Dims = [.. dims];
        _template = template;
    }

    /// <summary>Non-default values; their name names the sparse tensor.</summary>
    public Tensor Values { get; }

    /// <summary>Positions of the values.</summary>
    public Tensor Indices { get; }

    /// <summary>Dense shape.</summary>
    public IReadOnlyList<long> Dims { get; }

    /// <summary>Name (that of <see cref="Values"/>).</summary>
    public string Name => Values.Name;

    internal static SparseTensor FromProtoOwned(SparseTensorProto proto, ExternalDataStore? store)
    {
        var values = Tensor.FromProtoOwned(proto.Values ?? new TensorProto(), store);
        var indices = Tensor.FromProtoOwned(proto.Indices ?? new TensorProto(), store);
        bool hadValues = proto.Values != null, hadIndices = proto.Indices != null;
        proto.Values = null;
        proto.Indices = null;
        var s = new SparseTensor(values, indices, [.. proto.Dims], proto);
        s._hadValues = hadValues;
        s._hadIndices = hadIndices;
        return s;
    }

    private bool _hadValues = true;
    private bool _hadIndices = true;

    internal SparseTensorProto ToProto(Func<Tensor, TensorProto> writeTensor)
    {
        var p = _template?.Clone() ?? new SparseTensorProto();
        if (_template == null)
            p.Dims.AddRange(Dims);
        if (_hadValues)
            p.Values = writeTensor(Values);
        if (_hadIndices)
            p.Indices = writeTensor(Indices);
        return p;
    }
}
