using System.Globalization;
using System.Text;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// One dimension of a tensor shape: a known size, a symbolic name (<c>"B"</c>, <c>"seq"</c>), or
/// unknown (neither). An optional denotation (e.g. <c>DATA_BATCH</c>) rides along.
/// </summary>
public readonly record struct Dim
{
    /// <summary>A dimension of known size.</summary>
    public Dim(long value)
    {
        Value = value;
    }

    /// <summary>A symbolic dimension.</summary>
    public Dim(string param)
    {
        Param = param;
    }

    /// <summary>The size, when known.</summary>
    public long? Value { get; init; }

    /// <summary>The symbolic name, when the dimension is symbolic.</summary>
    public string? Param { get; init; }

    /// <summary>Optional semantic denotation.</summary>
    public string? Denotation { get; init; }

    /// <summary>An unknown dimension (neither size nor name).</summary>
    public static Dim Unknown => default;

    /// <summary>Whether the size is known.</summary>
    public bool IsKnown => Value.HasValue;

    /// <summary>Converts a size to a dimension.</summary>
    public static implicit operator Dim(long value) => new(value);

    /// <summary>Converts a symbolic name to a dimension.</summary>
    public static implicit operator Dim(string param) => new(param);

    /// <summary>The size, the name, or <c>?</c>.</summary>
    public override string ToString() =>
        Value?.ToString(CultureInfo.InvariantCulture) ?? (string.IsNullOrEmpty(Param) ? "?" : Param);
}

/// <summary>
/// The type of an ONNX value: a tensor, sparse tensor, sequence, map, optional or opaque type.
/// Types are immutable. A type read from a model keeps the protobuf message it came from, so writing
/// it back reproduces that message exactly (unknown fields included).
/// </summary>
public abstract class OnnxType : IEquatable<OnnxType>
{
    private protected OnnxType(string? denotation, TypeProto? source)
    {
        Denotation = denotation;
        Source = source;
    }

    /// <summary>Optional type denotation (e.g. <c>IMAGE</c>).</summary>
    public string? Denotation { get; }

    /// <summary>The message this type was read from, if any; never modified.</summary>
    internal TypeProto? Source { get; }

    /// <summary>Converts to protobuf (a fresh message).</summary>
    public TypeProto ToProto()
    {
        if (Source != null)
            return Source.Clone();
        var proto = BuildProto();
        if (Denotation != null)
            proto.Denotation = Denotation;
        return proto;
    }

    private protected abstract TypeProto BuildProto();

    /// <summary>Reads a type; unknown kinds become <see cref="OpaqueType"/> with no name, keeping the message.</summary>
    public static OnnxType FromProto(TypeProto proto)
    {
        string? den = proto.HasDenotation ? proto.Denotation : null;
        return proto.ValueCase switch
        {
            TypeProto.ValueOneofCase.TensorType => new TensorType(
                (ElementType)proto.TensorType.ElemType, ReadShape(proto.TensorType.Shape), den, proto),
            TypeProto.ValueOneofCase.SparseTensorType => new SparseTensorType(
                (ElementType)proto.SparseTensorType.ElemType, ReadShape(proto.SparseTensorType.Shape), den, proto),
            TypeProto.ValueOneofCase.SequenceType => new SequenceType(
                proto.SequenceType.ElemType is { } e ? FromProto(e) : null, den, proto),
            TypeProto.ValueOneofCase.OptionalType => new OptionalType(
                proto.OptionalType.ElemType is { } o ? FromProto(o) : null, den, proto),
            TypeProto.ValueOneofCase.MapType => new MapType(
                (ElementType)proto.MapType.KeyType,
                proto.MapType.ValueType is { } v ? FromProto(v) : null, den, proto),
            TypeProto.ValueOneofCase.OpaqueType => new OpaqueType(
                proto.OpaqueType.Domain, proto.OpaqueType.Name, den, proto),
            _ => new OpaqueType("", "", den, proto),
        };
    }

    private static IReadOnlyList<Dim>? ReadShape(TensorShapeProto? shape)
    {
        if (shape == null)
            return null;
        var dims = new Dim[shape.Dim.Count];
        for (int i = 0; i < dims.Length; i++)
        {
            var d = shape.Dim[i];
            dims[i] = d.ValueCase switch
            {
                TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue => new Dim(d.DimValue),
                TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam => new Dim(d.DimParam),
                _ => Dim.Unknown,
            } with { Denotation = d.HasDenotation ? d.Denotation : null };
        }
        return dims;
    }

    private protected static TensorShapeProto? WriteShape(IReadOnlyList<Dim>? shape)
    {
        if (shape == null)
            return null;
        var proto = new TensorShapeProto();
        foreach (var d in shape)
        {
            var dim = new TensorShapeProto.Types.Dimension();
            if (d.Value is { } v)
                dim.DimValue = v;
            else if (d.Param != null)
                dim.DimParam = d.Param;
            if (d.Denotation != null)
                dim.Denotation = d.Denotation;
            proto.Dim.Add(dim);
        }
        return proto;
    }

    private protected static void AppendShape(StringBuilder sb, IReadOnlyList<Dim>? shape)
    {
        if (shape == null)
            return;
        sb.Append('[');
        for (int i = 0; i < shape.Count; i++)
        {
            if (i > 0)
                sb.Append(',');
            sb.Append(shape[i].ToString());
        }
        sb.Append(']');
    }

    /// <summary>Structural equality (ignores where the type was read from).</summary>
    public bool Equals(OnnxType? other) =>
        other is not null && (ReferenceEquals(this, other) || ToProto().Equals(other.ToProto()));

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as OnnxType);

    /// <inheritdoc />
    public override int GetHashCode() => ToString().GetHashCode(StringComparison.Ordinal);

    /// <summary>Compact form used by the textual dump, e.g. <c>f32[B,S,768]</c>, <c>seq&lt;i64[?]&gt;</c>.</summary>
    public abstract override string ToString();
}

/// <summary>A dense tensor type; <see cref="Shape"/> is null when even the rank is unknown.</summary>
public sealed class TensorType : OnnxType
{
    /// <summary>Creates a tensor type.</summary>
    public TensorType(ElementType elementType, IReadOnlyList<Dim>? shape, string? denotation = null)
        : this(elementType, shape, denotation, null)
    {
    }

    internal TensorType(ElementType elementType, IReadOnlyList<Dim>? shape, string? denotation, TypeProto? source)
        : base(denotation, source)
    {
        ElementType = elementType;
        Shape = shape;
    }

    /// <summary>Element type.</summary>
    public ElementType ElementType { get; }

    /// <summary>Dimensions, or null for unknown rank.</summary>
    public IReadOnlyList<Dim>? Shape { get; }

    /// <summary>Rank, or null when unknown.</summary>
    public int? Rank => Shape?.Count;

    private protected override TypeProto BuildProto()
    {
        var t = new TypeProto.Types.Tensor { ElemType = (int)ElementType };
        if (WriteShape(Shape) is { } s)
            t.Shape = s;
        return new TypeProto { TensorType = t };
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var sb = new StringBuilder(ElementType.ShortName());
        AppendShape(sb, Shape);
        return sb.ToString();
    }
}

/// <summary>A sparse tensor type.</summary>
public sealed class SparseTensorType : OnnxType
{
    /// <summary>Creates a sparse tensor type.</summary>
    public SparseTensorType(ElementType elementType, IReadOnlyList<Dim>? shape, string? denotation = null)
        : this(elementType, shape, denotation, null)
    {
    }

    internal SparseTensorType(ElementType elementType, IReadOnlyList<Dim>? shape, string? denotation, TypeProto? source)
        : base(denotation, source)
    {
        ElementType = elementType;
        Shape = shape;
    }

    /// <summary>Element type.</summary>
    public ElementType ElementType { get; }

    /// <summary>Dense dimensions, or null for unknown rank.</summary>
    public IReadOnlyList<Dim>? Shape { get; }

    private protected override TypeProto BuildProto()
    {
        var t = new TypeProto.Types.SparseTensor { ElemType = (int)ElementType };
        if (WriteShape(Shape) is { } s)
            t.Shape = s;
        return new TypeProto { SparseTensorType = t };
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var sb = new StringBuilder("sparse<").Append(ElementType.ShortName());
        AppendShape(sb, Shape);
        return sb.Append('>').ToString();
    }
}

/// <summary>A sequence of values of one type.</summary>
public sealed class SequenceType : OnnxType
{
    /// <summary>Creates a sequence type.</summary>
    public SequenceType(OnnxType? elementType, string? denotation = null)
        : this(elementType, denotation, null)
    {
    }

    internal SequenceType(OnnxType? elementType, string? denotation, TypeProto? source)
        : base(denotation, source) => ElementType = elementType;

    /// <summary>Type of the elements, if given.</summary>
    public OnnxType? ElementType { get; }

    private protected override TypeProto BuildProto()
    {
        var s = new TypeProto.Types.Sequence();
        if (ElementType != null)
            s.ElemType = ElementType.ToProto();
        return new TypeProto { SequenceType = s };
    }

    /// <inheritdoc />
    public override string ToString() => $"seq<{ElementType?.ToString() ?? "?"}>";
}

/// <summary>An optional value (present or absent) of one type.</summary>
public sealed class OptionalType : OnnxType
{
    /// <summary>Creates an optional type.</summary>
    public OptionalType(OnnxType? elementType, string? denotation = null)
        : this(elementType, denotation, null)
    {
    }

    internal OptionalType(OnnxType? elementType, string? denotation, TypeProto? source)
        : base(denotation, source) => ElementType = elementType;

    /// <summary>Type of the contained value, if given.</summary>
    public OnnxType? ElementType { get; }

    private protected override TypeProto BuildProto()
    {
        var o = new TypeProto.Types.Optional();
        if (ElementType != null)
            o.ElemType = ElementType.ToProto();
        return new TypeProto { OptionalType = o };
    }

    /// <inheritdoc />
    public override string ToString() => $"opt<{ElementType?.ToString() ?? "?"}>";
}

/// <summary>A map from a scalar key type to values of one type.</summary>
public sealed class MapType : OnnxType
{
    /// <summary>Creates a map type.</summary>
    public MapType(ElementType keyType, OnnxType? valueType, string? denotation = null)
        : this(keyType, valueType, denotation, null)
    {
    }

    internal MapType(ElementType keyType, OnnxType? valueType, string? denotation, TypeProto? source)
        : base(denotation, source)
    {
        KeyType = keyType;
        ValueType = valueType;
    }

    /// <summary>Key element type.</summary>
    public ElementType KeyType { get; }

    /// <summary>Value type, if given.</summary>
    public OnnxType? ValueType { get; }

    private protected override TypeProto BuildProto()
    {
        var m = new TypeProto.Types.Map { KeyType = (int)KeyType };
        if (ValueType != null)
            m.ValueType = ValueType.ToProto();
        return new TypeProto { MapType = m };
    }

    /// <inheritdoc />
    public override string ToString() => $"map<{KeyType.ShortName()},{ValueType?.ToString() ?? "?"}>";
}

/// <summary>An opaque type (ai.onnx.ml), or a type kind this library does not know (empty domain and name).</summary>
public sealed class OpaqueType : OnnxType
{
    /// <summary>Creates an opaque type.</summary>
    public OpaqueType(string domain, string name, string? denotation = null)
        : this(domain, name, denotation, null)
    {
    }

    internal OpaqueType(string domain, string name, string? denotation, TypeProto? source)
        : base(denotation, source)
    {
        Domain = domain;
        Name = name;
    }

    /// <summary>Domain of the opaque type.</summary>
    public string Domain { get; }

    /// <summary>Name of the opaque type.</summary>
    public string Name { get; }

    private protected override TypeProto BuildProto() =>
        new() { OpaqueType = new TypeProto.Types.Opaque { Domain = Domain, Name = Name } };

    /// <inheritdoc />
    public override string ToString() => Name.Length == 0 ? "opaque" : $"opaque<{Domain}.{Name}>";
}
