using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Spt.Ir;
using Spt.Runtime.Export;
using Spt.Runtime.Training;

namespace Spt.Runtime.Tests;

/// <summary>The safetensors writer and reader against the documented layout, and the errors for broken files.</summary>
public sealed class SafetensorsTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-st-tests-" + Guid.NewGuid().ToString("N"));

    public SafetensorsTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void Written_file_follows_the_documented_layout_and_reads_back()
    {
        var path = Path.Combine(_root, "a.safetensors");
        var a = Tensor.Create("layer.lora_A", [1f, -2f, 3.5f, 0.25f, 5f, 6f], 2, 3);
        var ids = Tensor.Create("ids", [7L, -1L], 2);
        Safetensors.Write(path, [a, ids], new Dictionary<string, string> { ["format"] = "sptc-adapter", ["note"] = "ü" });

        var bytes = System.IO.File.ReadAllBytes(path);
        var n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + n) % 8);                                   // data 8-byte aligned (space padding)
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, n).TrimEnd(' '));
        var h = header.RootElement;
        Assert.Equal("F32", h.GetProperty("layer.lora_A").GetProperty("dtype").GetString());
        Assert.Equal([2, 3], h.GetProperty("layer.lora_A").GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal([0, 24], h.GetProperty("layer.lora_A").GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal([24, 40], h.GetProperty("ids").GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal("I64", h.GetProperty("ids").GetProperty("dtype").GetString());
        Assert.Equal("ü", h.GetProperty("__metadata__").GetProperty("note").GetString());
        Assert.Equal(8 + n + 40, bytes.Length);
        Assert.Equal(-2f, BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(8 + n + 4)));   // raw little-endian data
        Assert.Equal(-1L, BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(8 + n + 32)));

        var (tensors, metadata) = Safetensors.Read(path);
        Assert.Equal(["layer.lora_A", "ids"], tensors.Select(t => t.Name));
        Assert.Equal(a.ToFloatArray(), tensors[0].ToFloatArray());
        Assert.Equal([2L, 3L], tensors[0].Dims);
        Assert.Equal(ids.GetRawData().ToArray(), tensors[1].GetRawData().ToArray());
        Assert.Equal("sptc-adapter", metadata["format"]);
    }

    [Fact]
    public void Broken_files_are_one_line_errors()
    {
        string Write(byte[] content)
        {
            var p = Path.Combine(_root, Guid.NewGuid().ToString("N"));
            System.IO.File.WriteAllBytes(p, content);
            return p;
        }

        byte[] File(string json, int data)
        {
            var h = Encoding.UTF8.GetBytes(json);
            var result = new byte[8 + h.Length + data];
            BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)h.Length);
            h.CopyTo(result, 8);
            return result;
        }

        string Error(byte[] content) => Assert.Throws<TrainingException>(() => Safetensors.Read(Write(content))).Message;

        Assert.Contains("shorter than the 8-byte header length", Error([1, 2, 3]));
        Assert.Contains("does not fit", Error([255, 0, 0, 0, 0, 0, 0, 0, 1]));
        Assert.Contains("not valid JSON", Error(File("{oops", 0)));
        Assert.Contains("do not hold F32[2]", Error(File("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4)));
        Assert.Contains("overlapping or gapped", Error(File("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8)));
        Assert.Contains("cover 4 of the 8 data bytes", Error(File("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8)));
        Assert.Contains("dtype 'F8_E4M3'", Error(File("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1)));
        Assert.Contains("does not exist", Assert.Throws<TrainingException>(() => Safetensors.Read(Path.Combine(_root, "none"))).Message);
    }
}
