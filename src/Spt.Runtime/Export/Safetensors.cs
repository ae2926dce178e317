using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spt.Ir;
using Spt.Runtime.Training;

namespace Spt.Runtime.Export;

/// <summary>
/// The safetensors file format (as documented by its authors): an 8-byte little-endian unsigned header length N,
/// N bytes of UTF-8 JSON (padded with spaces so the data starts 8-byte aligned), then the raw little-endian tensor
/// bytes. The header maps each tensor name to <c>{"dtype", "shape", "data_offsets": [begin, end]}</c> (offsets
/// relative to the start of the data, tensors laid out back to back without gaps) and may hold
/// <c>"__metadata__"</c>, a string → string map. NuGet has no safetensors package; this is the small reader and
/// writer sptc needs for adapter files.
/// </summary>
public static class Safetensors
{
    private const long MaxHeader = 100L << 20;

    /// <summary>Writes <paramref name="tensors"/> (in the given order) and <paramref name="metadata"/> to <paramref name="path"/>.</summary>
    public static void Write(string path, IEnumerable<Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            header["__metadata__"] = new JsonObject([.. metadata.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))]);
        }

        long offset = 0;
        foreach (var t in list)
        {
            var size = t.GetRawData().Length;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = DtypeName(t.ElementType),
                ["shape"] = new JsonArray([.. t.Dims.Select(d => (JsonNode?)JsonValue.Create(d))]),
                ["data_offsets"] = new JsonArray(offset, offset + size),
            };
            offset += size;
        }

        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8;
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null)
        {
            Directory.CreateDirectory(dir);
        }

        var tmp = path + ".tmp";
        using (var file = File.Create(tmp))
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
            file.Write(length);
            file.Write(json);
            for (var i = json.Length; i < padded; i++)
            {
                file.WriteByte((byte)' ');
            }

            foreach (var t in list)
            {
                // Tensor raw data is little-endian already (ONNX raw_data layout).
                file.Write(t.GetRawData().Span);
            }
        }

        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Reads a safetensors file: its tensors in data order, and its metadata.</summary>
    /// <exception cref="TrainingException">The file is missing or not a valid safetensors file (one line).</exception>
    public static (IReadOnlyList<Tensor> Tensors, IReadOnlyDictionary<string, string> Metadata) Read(string path)
    {
        if (!File.Exists(path))
        {
            throw new TrainingException($"adapter file '{path}' does not exist");
        }

        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8)
        {
            throw new TrainingException($"'{path}' is not a safetensors file: {bytes.Length} bytes, shorter than the 8-byte header length");
        }

        var n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (n > (ulong)Math.Min(MaxHeader, bytes.Length - 8))
        {
            throw new TrainingException($"'{path}' is not a safetensors file: header length {n} does not fit the {bytes.Length}-byte file");
        }

        JsonObject header;
        try
        {
            header = JsonNode.Parse(bytes.AsSpan(8, (int)n)) as JsonObject ?? throw new TrainingException($"'{path}': the safetensors header is not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TrainingException($"'{path}': the safetensors header is not valid JSON ({e.Message.Split('.')[0]})", e);
        }

        var dataStart = 8 + (long)n;
        var dataLength = bytes.Length - dataStart;
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var entries = new List<(string Name, ElementType Type, long[] Shape, long Begin, long End)>();
        try
        {
            foreach (var (name, node) in header)
            {
                if (name == "__metadata__")
                {
                    foreach (var (k, v) in node!.AsObject())
                    {
                        metadata[k] = v!.GetValue<string>();
                    }

                    continue;
                }

                var o = node!.AsObject();
                var type = ParseDtype(o["dtype"]!.GetValue<string>(), path, name);
                long[] shape = [.. o["shape"]!.AsArray().Select(d => d!.GetValue<long>())];
                var offsets = o["data_offsets"]!.AsArray();
                long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
                var count = shape.Aggregate(1L, (a, d) => d < 0 ? throw new TrainingException($"'{path}': tensor '{name}' has a negative dimension") : a * d);
                if (begin < 0 || end < begin || end > dataLength || end - begin != type.ByteCount(count))
                {
                    throw new TrainingException($"'{path}': tensor '{name}' has data_offsets [{begin}, {end}], which do not hold " +
                        $"{DtypeName(type)}[{string.Join(",", shape)}] inside the {dataLength}-byte data");
                }

                entries.Add((name, type, shape, begin, end));
            }
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or ArgumentOutOfRangeException)
        {
            throw new TrainingException($"'{path}': malformed safetensors header entry ({e.Message})", e);
        }

        // The format requires the tensors to cover the data exactly, back to back.
        entries.Sort((a, b) => a.Begin.CompareTo(b.Begin));
        long expected = 0;
        foreach (var entry in entries)
        {
            if (entry.Begin != expected)
            {
                throw new TrainingException($"'{path}': tensor '{entry.Name}' starts at {entry.Begin}, expected {expected} (overlapping or gapped data)");
            }

            expected = entry.End;
        }

        if (expected != dataLength)
        {
            throw new TrainingException($"'{path}': the tensors cover {expected} of the {dataLength} data bytes");
        }

        var tensors = entries.Select(e => Tensor.FromRawData(e.Name, e.Type, e.Shape, bytes.AsSpan((int)(dataStart + e.Begin), (int)(e.End - e.Begin)).ToArray())).ToList();
        return (tensors, metadata);
    }

    private static string DtypeName(ElementType type) => type switch
    {
        ElementType.Float => "F32",
        ElementType.Float16 => "F16",
        ElementType.BFloat16 => "BF16",
        ElementType.Double => "F64",
        ElementType.Int64 => "I64",
        ElementType.Int32 => "I32",
        ElementType.Int16 => "I16",
        ElementType.Int8 => "I8",
        ElementType.UInt8 => "U8",
        ElementType.Bool => "BOOL",
        _ => throw new TrainingException($"element type {type.ShortName()} has no safetensors dtype"),
    };

    private static ElementType ParseDtype(string name, string path, string tensor) => name switch
    {
        "F32" => ElementType.Float,
        "F16" => ElementType.Float16,
        "BF16" => ElementType.BFloat16,
        "F64" => ElementType.Double,
        "I64" => ElementType.Int64,
        "I32" => ElementType.Int32,
        "I16" => ElementType.Int16,
        "I8" => ElementType.Int8,
        "U8" => ElementType.UInt8,
        "BOOL" => ElementType.Bool,
        _ => throw new TrainingException($"'{path}': tensor '{tensor}' has dtype '{name}', which sptc does not read"),
    };
}
