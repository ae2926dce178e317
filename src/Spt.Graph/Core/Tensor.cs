using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// A constant tensor: an initializer, a tensor attribute, or a tensor built in code.
/// <para>
/// Element data stays where it was found: in the protobuf message it was read from (raw_data or
/// the typed fields, bit for bit), in a memory-mapped external data file, or in caller-provided
/// memory. Accessors convert on demand; nothing is copied at load time. Dimensions and element type
/// are fixed; only the name (and doc string) can change.
/// </para>
/// </summary>
[DebuggerDisplay("{DebuggerText,nq}")]
public sealed class Tensor
{
    private enum Storage
    {
        // Elements live in _proto (raw_data, typed fields, or none for an empty tensor).
        Proto,
        // Elements are _memory, little-endian raw bytes; _proto carries no data.
        Memory,
        // Elements are in an external file (_proto has data_location = EXTERNAL).
        External,
    }

    private readonly TensorProto _proto;
    private readonly Storage _storage;
    private readonly ReadOnlyMemory<byte> _memory;
    private readonly ExternalDataStore? _store;
    private readonly long[] _dims;

    private Tensor(TensorProto proto, Storage storage, ReadOnlyMemory<byte> memory, ExternalDataStore? store)
    {
        _proto = proto;
        _storage = storage;
        _memory = memory;
        _store = store;
        _dims = [.. proto.Dims];
        Name = proto.Name;
        DocString = proto.HasDocString ? proto.DocString : null;
        if (storage == Storage.External)
            External = ReadExternalLocation(proto);
    }

    /// <summary>Tensor name (for an initializer: the name of the value it defines).</summary>
    public string Name { get; set; }

    /// <summary>Documentation string, or null when absent.</summary>
    public string? DocString { get; set; }

    /// <summary>Element type.</summary>
    public ElementType ElementType => (ElementType)_proto.DataType;

    /// <summary>Dimensions (empty for a scalar).</summary>
    public IReadOnlyList<long> Dims => _dims;

    /// <summary>Number of elements (product of the dimensions).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in _dims)
                n *= d;
            return n;
        }
    }

    /// <summary>Bytes of the raw (little-endian, packed) form; -1 for string tensors and unknown types.</summary>
    public long ByteLength => ElementType.ByteCount(ElementCount);

    /// <summary>Whether the elements live in an external data file.</summary>
    public bool IsExternal => _storage == Storage.External;

    /// <summary>The full path of the external data file when <see cref="IsExternal"/> and the model was loaded from a file.</summary>
    internal string? ExternalFilePath => External is { } ext && _store is { } store ? store.Resolve(ext.Location, Name) : null;

    /// <summary>Where the elements live when <see cref="IsExternal"/>; null otherwise.</summary>
    public ExternalDataLocation? External { get; }

    /// <summary>Whether the message this tensor was read from stored elements in raw_data.</summary>
    public bool HasRawData => _storage == Storage.Memory || (_storage == Storage.Proto && _proto.HasRawData);

    /// <summary>The message the tensor was read from (never modified; null-free shell for built tensors).</summary>
    internal TensorProto SourceProto => _proto;

    private string DebuggerText => $"{Name}: {ElementType.ShortName()}[{string.Join(",", _dims)}]{(IsExternal ? " external" : "")}";

    /// <inheritdoc />
    public override string ToString() => DebuggerText;

    // ---------------------------------------------------------------- creation

    /// <summary>
    /// Wraps a message (which the tensor then owns and never modifies). A tensor whose
    /// data_location is EXTERNAL needs <paramref name="store"/> to reach its bytes.
    /// </summary>
    internal static Tensor FromProtoOwned(TensorProto proto, ExternalDataStore? store)
    {
        bool external = proto.HasDataLocation && proto.DataLocation == TensorProto.Types.DataLocation.External;
        return new Tensor(proto, external ? Storage.External : Storage.Proto, default, store);
    }

    /// <summary>Creates a tensor from a message (copied; external data is not reachable from a bare message).</summary>
    public static Tensor FromProto(TensorProto proto)
    {
        ArgumentNullException.ThrowIfNull(proto);
        return FromProtoOwned(proto.Clone(), null);
    }

    /// <summary>
    /// Creates a tensor over little-endian raw bytes without copying them (4-bit types: two elements
    /// per byte, first in the low nibble). The caller must not change the memory afterwards.
    /// </summary>
    public static Tensor FromRawData(string name, ElementType type, IReadOnlyList<long> dims, ReadOnlyMemory<byte> data)
    {
        var proto = Shell(name, type, dims);
        long expected = type.ByteCount(ElementCountOf(dims));
        if (expected < 0)
            throw new ArgumentException($"element type {type} has no raw byte form", nameof(type));
        if (expected != data.Length)
            throw new ArgumentException($"tensor '{name}' of {type.ShortName()}[{string.Join(",", dims)}] needs {expected} bytes, got {data.Length}", nameof(data));
        return new Tensor(proto, Storage.Memory, data, null);
    }

    /// <summary>Creates a tensor from a .NET array (copied). Supported: float, double, Half, byte, sbyte, short, ushort, int, uint, long, ulong, bool.</summary>
    public static Tensor Create<T>(string name, T[] data, params long[] dims)
        where T : unmanaged => Create(name, (ReadOnlySpan<T>)data, dims);

    /// <summary>Creates a tensor from elements (copied); when <paramref name="dims"/> is empty and there is not exactly one element, a 1-D shape is used.</summary>
    public static Tensor Create<T>(string name, ReadOnlySpan<T> data, IReadOnlyList<long> dims)
        where T : unmanaged
    {
        var type = ElementTypeOf<T>();
        IReadOnlyList<long> shape = dims.Count == 0 && data.Length != 1 ? [data.Length] : dims;
        if (ElementCountOf(shape) != data.Length)
            throw new ArgumentException($"tensor '{name}': {data.Length} elements do not fill shape [{string.Join(",", shape)}]", nameof(data));
        byte[] raw = MemoryMarshal.AsBytes(data).ToArray();
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("big-endian hosts are not supported");
        return FromRawData(name, type, shape, raw);
    }

    /// <summary>Creates a scalar (rank 0) tensor.</summary>
    public static Tensor Scalar<T>(string name, T value)
        where T : unmanaged => Create(name, new[] { value }, Array.Empty<long>());

    /// <summary>Creates a string tensor (UTF-8 encoded).</summary>
    public static Tensor FromStrings(string name, IReadOnlyList<string> values, params long[] dims)
    {
        IReadOnlyList<long> shape = dims.Length == 0 && values.Count != 1 ? [values.Count] : dims;
        if (ElementCountOf(shape) != values.Count)
            throw new ArgumentException($"tensor '{name}': {values.Count} strings do not fill shape [{string.Join(",", shape)}]", nameof(values));
        var proto = Shell(name, ElementType.String, shape);
        foreach (string s in values)
            proto.StringData.Add(ByteString.CopyFromUtf8(s));
        return new Tensor(proto, Storage.Proto, default, null);
    }

    /// <summary>The element type for a .NET element type.</summary>
    public static ElementType ElementTypeOf<T>()
        where T : unmanaged
    {
        return typeof(T) switch
        {
            var t when t == typeof(float) => ElementType.Float,
            var t when t == typeof(double) => ElementType.Double,
            var t when t == typeof(Half) => ElementType.Float16,
            var t when t == typeof(byte) => ElementType.UInt8,
            var t when t == typeof(sbyte) => ElementType.Int8,
            var t when t == typeof(short) => ElementType.Int16,
            var t when t == typeof(ushort) => ElementType.UInt16,
            var t when t == typeof(int) => ElementType.Int32,
            var t when t == typeof(uint) => ElementType.UInt32,
            var t when t == typeof(long) => ElementType.Int64,
            var t when t == typeof(ulong) => ElementType.UInt64,
            var t when t == typeof(bool) => ElementType.Bool,
            _ => throw new ArgumentException($"no ONNX element type for {typeof(T).Name}"),
        };
    }

    private static TensorProto Shell(string name, ElementType type, IReadOnlyList<long> dims)
    {
        ArgumentNullException.ThrowIfNull(name);
        var proto = new TensorProto { DataType = (int)type };
        proto.Dims.AddRange(dims);
        if (name.Length > 0)
            proto.Name = name;
        return proto;
    }

    private static long ElementCountOf(IReadOnlyList<long> dims)
    {
        long n = 1;
        foreach (long d in dims)
            n *= d;
        return n;
    }

    private static ExternalDataLocation ReadExternalLocation(TensorProto proto)
    {
        string? location = null;
        long offset = 0;
        long? length = null;
        foreach (var e in proto.ExternalData)
        {
            switch (e.Key)
            {
                case "location":
                    location = e.Value;
                    break;
                case "offset":
                    offset = ParseLong(proto, e);
                    break;
                case "length":
                    length = ParseLong(proto, e);
                    break;
            }
        }
        if (string.IsNullOrEmpty(location))
            throw new OnnxModelException($"tensor '{proto.Name}' is marked EXTERNAL but has no 'location' entry");
        return new ExternalDataLocation(location, offset, length);
    }

    private static long ParseLong(TensorProto proto, StringStringEntryProto e) =>
        long.TryParse(e.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) && v >= 0
            ? v
            : throw new OnnxModelException($"tensor '{proto.Name}': external data '{e.Key}' is not a non-negative integer ('{e.Value}')");

    /// <summary>Checks that the external file exists and holds the tensor's byte range.</summary>
    internal void ValidateExternal()
    {
        if (External is not { } ext)
            return;
        if (_store == null)
            throw new OnnxModelException($"tensor '{Name}' stores its data in external file '{ext.Location}', but the model was not loaded from a file; set LoadOptions.ExternalDataDirectory");
        string path = _store.Resolve(ext.Location, Name);
        var info = new FileInfo(path);
        long need = ext.Length ?? 0;
        if (ext.Offset > info.Length || need > info.Length - ext.Offset)
            throw new OnnxModelException($"tensor '{Name}': external data file '{ext.Location}' has {info.Length} bytes, but the tensor needs [{ext.Offset}, {ext.Offset + need})");
        long expected = ByteLength;
        long actual = ext.Length ?? info.Length - ext.Offset;
        if (expected >= 0 && actual != expected)
            throw new OnnxModelException($"tensor '{Name}' of {ElementType.ShortName()}[{string.Join(",", _dims)}] needs {expected} bytes, but its external data has {actual}");
    }

    // ---------------------------------------------------------------- raw access

    /// <summary>
    /// The elements as little-endian raw bytes. Zero-copy when the tensor stores raw bytes (raw_data,
    /// external file, built from memory); otherwise the typed fields are converted into a new array.
    /// Throws for string tensors and for data over 2 GB (use <see cref="CopyRawDataTo"/>).
    /// </summary>
    public ReadOnlyMemory<byte> GetRawData()
    {
        switch (_storage)
        {
            case Storage.Memory:
                return _memory;
            case Storage.External:
                {
                    var ext = External!;
                    long length = ext.Length ?? (Mapped().Length - ext.Offset);
                    if (length > int.MaxValue)
                        throw new InvalidOperationException($"tensor '{Name}' has {length} bytes, more than one span can hold; use CopyRawDataTo");
                    return Mapped().Slice(ext.Offset, (int)length);
                }
            default:
                if (_proto.HasRawData)
                    return _proto.RawData.Memory;
                return TypedFieldsToRaw();
        }
    }

    /// <summary>Raw little-endian bytes as a new array.</summary>
    public byte[] ToRawBytes() => GetRawData().ToArray();

    /// <summary>Writes the raw little-endian bytes to <paramref name="destination"/> (any size).</summary>
    public void CopyRawDataTo(Stream destination)
    {
        if (_storage == Storage.External)
        {
            var ext = External!;
            var file = Mapped();
            file.CopyTo(ext.Offset, ext.Length ?? (file.Length - ext.Offset), destination);
            return;
        }
        destination.Write(GetRawData().Span);
    }

    private MappedFile Mapped()
    {
        if (_store == null)
            throw new OnnxModelException($"tensor '{Name}' stores its data in external file '{External!.Location}', but the model was not loaded from a file");
        try
        {
            return _store.Get(External!.Location, Name);
        }
        catch (IOException e)
        {
            throw new OnnxModelException($"tensor '{Name}': cannot read external data file '{External!.Location}': {e.Message}", e);
        }
    }

    private byte[] TypedFieldsToRaw()
    {
        var type = ElementType;
        long count = ElementCount;
        if (type == ElementType.String)
            throw new InvalidOperationException($"tensor '{Name}' holds strings, which have no raw byte form");
        long bytes = type.ByteCount(count);
        if (bytes < 0)
            throw new OnnxModelException($"tensor '{Name}' has element type {(int)type}, which this library cannot decode");
        var raw = new byte[bytes];
        var p = _proto;
        switch (type)
        {
            case ElementType.Float:
            case ElementType.Complex64:
                Require(p.FloatData.Count, bytes / 4, "float_data");
                for (int i = 0; i < p.FloatData.Count; i++)
                    BinaryPrimitives.WriteSingleLittleEndian(raw.AsSpan(i * 4), p.FloatData[i]);
                break;
            case ElementType.Double:
            case ElementType.Complex128:
                Require(p.DoubleData.Count, bytes / 8, "double_data");
                for (int i = 0; i < p.DoubleData.Count; i++)
                    BinaryPrimitives.WriteDoubleLittleEndian(raw.AsSpan(i * 8), p.DoubleData[i]);
                break;
            case ElementType.Int64:
                Require(p.Int64Data.Count, count, "int64_data");
                for (int i = 0; i < p.Int64Data.Count; i++)
                    BinaryPrimitives.WriteInt64LittleEndian(raw.AsSpan(i * 8), p.Int64Data[i]);
                break;
            case ElementType.UInt64:
                Require(p.Uint64Data.Count, count, "uint64_data");
                for (int i = 0; i < p.Uint64Data.Count; i++)
                    BinaryPrimitives.WriteUInt64LittleEndian(raw.AsSpan(i * 8), p.Uint64Data[i]);
                break;
            case ElementType.UInt32:
                Require(p.Uint64Data.Count, count, "uint64_data");
                for (int i = 0; i < p.Uint64Data.Count; i++)
                    BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(i * 4), (uint)p.Uint64Data[i]);
                break;
            case ElementType.Int32:
                Require(p.Int32Data.Count, count, "int32_data");
                for (int i = 0; i < p.Int32Data.Count; i++)
                    BinaryPrimitives.WriteInt32LittleEndian(raw.AsSpan(i * 4), p.Int32Data[i]);
                break;
            case ElementType.Int16:
            case ElementType.UInt16:
            case ElementType.Float16:
            case ElementType.BFloat16:
                // 16-bit kinds store one element (or its bit pattern) per int32_data entry.
                Require(p.Int32Data.Count, count, "int32_data");
                for (int i = 0; i < p.Int32Data.Count; i++)
                    BinaryPrimitives.WriteUInt16LittleEndian(raw.AsSpan(i * 2), (ushort)p.Int32Data[i]);
                break;
            case ElementType.UInt4:
            case ElementType.Int4:
            case ElementType.Float4E2M1:
                // 4-bit kinds store one packed byte (two elements) per int32_data entry.
                Require(p.Int32Data.Count, bytes, "int32_data");
                for (int i = 0; i < p.Int32Data.Count; i++)
                    raw[i] = (byte)p.Int32Data[i];
                break;
            default:
                // 8-bit kinds (ints, bool, float8s): one element per int32_data entry.
                Require(p.Int32Data.Count, count, "int32_data");
                for (int i = 0; i < p.Int32Data.Count; i++)
                    raw[i] = (byte)p.Int32Data[i];
                break;
        }
        return raw;
    }

    private void Require(long have, long need, string field)
    {
        if (have != need)
            throw new OnnxModelException($"tensor '{Name}' of {ElementType.ShortName()}[{string.Join(",", _dims)}] needs {need} entries in {field}, has {have}");
    }

    // ---------------------------------------------------------------- typed access

    /// <summary>The raw bytes reinterpreted as <typeparamref name="T"/> (size must match the element width).</summary>
    public T[] ToArray<T>()
        where T : unmanaged
    {
        int bits = ElementType.BitWidth();
        if (bits == 0 || bits != Marshal.SizeOf<T>() * 8)
            throw new InvalidOperationException($"tensor '{Name}' of {ElementType.ShortName()} cannot be viewed as {typeof(T).Name}");
        return MemoryMarshal.Cast<byte, T>(GetRawData().Span).ToArray();
    }

    /// <summary>Elements converted to double (bool as 0/1; complex types are refused).</summary>
    public double[] ToDoubleArray()
    {
        var type = ElementType;
        if (type is ElementType.String or ElementType.Complex64 or ElementType.Complex128)
            throw new InvalidOperationException($"tensor '{Name}' of {type.ShortName()} has no real-valued view");
        if (_storage == Storage.Proto && !_proto.HasRawData)
        {
            if (type == ElementType.Double)
                return [.. _proto.DoubleData];
            if (type == ElementType.Int64)
                return [.. _proto.Int64Data.Select(v => (double)v)];
            if (type == ElementType.Float)
                return [.. _proto.FloatData.Select(v => (double)v)];
        }
        var raw = GetRawData().Span;
        long n = ElementCount;
        var result = new double[n];
        for (int i = 0; i < n; i++)
            result[i] = ElementCodec.ReadAsDouble(type, raw, i);
        return result;
    }

    /// <summary>Elements converted to float (via double for wider types).</summary>
    public float[] ToFloatArray()
    {
        if (ElementType == ElementType.Float)
        {
            if (_storage == Storage.Proto && !_proto.HasRawData)
                return [.. _proto.FloatData];
            return MemoryMarshal.Cast<byte, float>(GetRawData().Span).ToArray();
        }
        return [.. ToDoubleArray().Select(v => (float)v)];
    }

    /// <summary>Elements converted to long (integer and bool types exactly; floats truncated toward zero).</summary>
    public long[] ToInt64Array()
    {
        var type = ElementType;
        if (_storage == Storage.Proto && !_proto.HasRawData && type == ElementType.Int64)
            return [.. _proto.Int64Data];
        if (type is ElementType.String or ElementType.Complex64 or ElementType.Complex128)
            throw new InvalidOperationException($"tensor '{Name}' of {type.ShortName()} has no integer view");
        var raw = GetRawData().Span;
        long n = ElementCount;
        var result = new long[n];
        for (int i = 0; i < n; i++)
            result[i] = ElementCodec.ReadAsInt64(type, raw, i);
        return result;
    }

    /// <summary>Elements of a string tensor decoded as UTF-8.</summary>
    public string[] ToStringArray()
    {
        if (ElementType != ElementType.String)
            throw new InvalidOperationException($"tensor '{Name}' of {ElementType.ShortName()} is not a string tensor");
        return [.. _proto.StringData.Select(s => s.ToStringUtf8())];
    }

    /// <summary>Elements of a string tensor as bytes.</summary>
    public IReadOnlyList<ByteString> StringData => ElementType == ElementType.String
        ? _proto.StringData
        : throw new InvalidOperationException($"tensor '{Name}' of {ElementType.ShortName()} is not a string tensor");

    // ---------------------------------------------------------------- export

    /// <summary>
    /// The tensor as a message with its data inline (external data read in). The message may share
    /// immutable byte buffers with this tensor; treat it as read-only or clone it.
    /// </summary>
    public TensorProto ToProto() => ToProtoInline();

    internal TensorProto ToProtoInline()
    {
        switch (_storage)
        {
            case Storage.Proto:
                return WithHeader(_proto, cloneAlways: false);
            case Storage.Memory:
                {
                    var p = WithHeader(_proto, cloneAlways: true);
                    p.RawData = UnsafeByteOperations.UnsafeWrap(_memory);
                    return p;
                }
            default:
                {
                    var p = WithHeader(_proto, cloneAlways: true);
                    p.ExternalData.Clear();
                    p.ClearDataLocation();
                    if (ByteLength > int.MaxValue - 1024)
                        throw new OnnxModelException($"tensor '{Name}' has {ByteLength} bytes, too many for an inline protobuf field; save with external data");
                    p.RawData = ByteString.CopyFrom(GetRawData().Span);
                    return p;
                }
        }
    }

    /// <summary>The message for external storage at the given location, without element data.</summary>
    internal TensorProto ToProtoExternal(string location, long offset, long length)
    {
        var p = WithHeader(_proto, cloneAlways: true);
        p.ClearRawData();
        p.FloatData.Clear();
        p.Int32Data.Clear();
        p.StringData.Clear();
        p.Int64Data.Clear();
        p.DoubleData.Clear();
        p.Uint64Data.Clear();
        p.ExternalData.Clear();
        p.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        p.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
        p.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
        p.DataLocation = TensorProto.Types.DataLocation.External;
        return p;
    }

    /// <summary>The proto with the current name and doc string; the source itself when nothing changed.</summary>
    private TensorProto WithHeader(TensorProto source, bool cloneAlways)
    {
        bool nameSame = source.Name == Name;
        bool docSame = DocString == null ? !source.HasDocString : source.HasDocString && source.DocString == DocString;
        if (nameSame && docSame && !cloneAlways)
            return source;
        var p = source.Clone();
        if (!nameSame)
            p.Name = Name;
        if (!docSame)
        {
            if (DocString == null)
                p.ClearDocString();
            else
                p.DocString = DocString;
        }
        return p;
    }

    /// <summary>A few leading elements as text (for dumps), e.g. <c>[1, 2, 3, ...]</c>.</summary>
    public string PreviewText(int maxElements = 4)
    {
        try
        {
            var type = ElementType;
            long n = ElementCount;
            var sb = new StringBuilder("[");
            int shown = (int)Math.Min(n, maxElements);
            if (type == ElementType.String)
            {
                var strings = _proto.StringData;
                for (int i = 0; i < shown && i < strings.Count; i++)
                    sb.Append(i > 0 ? ", " : "").Append('"').Append(strings[i].ToStringUtf8()).Append('"');
            }
            else if (type.IsKnown() && type is not (ElementType.Complex64 or ElementType.Complex128))
            {
                var raw = GetRawData().Span;
                for (int i = 0; i < shown; i++)
                {
                    sb.Append(i > 0 ? ", " : "");
                    if (type.IsFloatingPoint())
                        sb.Append(ElementCodec.ReadAsDouble(type, raw, i).ToString("R", CultureInfo.InvariantCulture));
                    else
                        sb.Append(ElementCodec.ReadAsInt64(type, raw, i).ToString(CultureInfo.InvariantCulture));
                }
            }
            else
            {
                return "[...]";
            }
            if (n > shown)
                sb.Append(", ...");
            return sb.Append(']').ToString();
        }
        catch (OnnxModelException)
        {
            return "[?]";
        }
    }
}
