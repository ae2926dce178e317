using Spt.Ir;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Spt.CustomOps.Tests;

/// <summary>
/// A one-node ONNX model around an sptc op, written straight to protobuf wire format (ModelProto field numbers),
/// and run in an ORT session with the sptc library registered.
/// </summary>
internal sealed class AttentionTestModel : IDisposable
{
    private readonly SessionOptions _options;
    private readonly InferenceSession _session;
    private readonly string[] _inputNames;
    private readonly string[] _outputNames;

    /// <param name="op">sptc op type.</param>
    /// <param name="inputs">Graph inputs (name, ONNX element type, shape; a null dim is symbolic); a null entry is an absent optional input.</param>
    /// <param name="outputs">Output names, with their element types.</param>
    /// <param name="attributes">long, float or string values.</param>
    public AttentionTestModel(
        string op,
        IReadOnlyList<(string Name, int DataType, long?[] Shape)?> inputs,
        IReadOnlyList<(string Name, int DataType)> outputs,
        IReadOnlyDictionary<string, object>? attributes = null)
    {
        _inputNames = inputs.Where(i => i is not null).Select(i => i!.Value.Name).ToArray();
        _outputNames = outputs.Select(o => o.Name).ToArray();
        var model = BuildModel(op, inputs, outputs, attributes ?? new Dictionary<string, object>());
        _options = new SessionOptions { IntraOpNumThreads = 2 };
        CustomOpLibrary.Register(_options);
        try
        {
            _session = new InferenceSession(model, _options);
        }
        catch
        {
            _options.Dispose();
            throw;
        }
    }

    /// <summary>Runs the model; inputs in graph-input order. Returns each output's data and shape.</summary>
    public (float[]? F32, int[]? I32, long[] Shape)[] Run(params OrtValue[] inputs)
    {
        try
        {
            using var runOptions = new RunOptions();
            using var results = _session.Run(runOptions, _inputNames, inputs, _outputNames);
            return results.Select(r =>
            {
                var info = r.GetTensorTypeAndShape();
                return info.ElementDataType == TensorElementType.Int32
                    ? ((float[]?)null, (int[]?)r.GetTensorDataAsSpan<int>().ToArray(), info.Shape)
                    : (r.GetTensorDataAsSpan<float>().ToArray(), null, info.Shape);
            }).ToArray();
        }
        finally
        {
            foreach (var input in inputs)
            {
                input.Dispose();
            }
        }
    }

    /// <summary>Output shapes as the session sees them after ORT's (and the op's) shape inference; -1 = unknown.</summary>
    public long[][] OutputShapes() =>
        _outputNames.Select(n => _session.OutputMetadata[n].Dimensions.Select(d => (long)d).ToArray()).ToArray();

    public static OrtValue F32(float[] data, params long[] shape) => OrtValue.CreateTensorValueFromMemory(data, shape);

    public static OrtValue I32(int[] data, params long[] shape) => OrtValue.CreateTensorValueFromMemory(data, shape);

    public static OrtValue Bool(bool[] data, params long[] shape) => OrtValue.CreateTensorValueFromMemory(data, shape);

    public static long?[] Dims(params long[] shape) => shape.Select(d => (long?)d).ToArray();

    public void Dispose()
    {
        _session.Dispose();
        _options.Dispose();
    }

    private static byte[] BuildModel(
        string op,
        IReadOnlyList<(string Name, int DataType, long?[] Shape)?> inputs,
        IReadOnlyList<(string Name, int DataType)> outputs,
        IReadOnlyDictionary<string, object> attributes)
    {
        var node = Message(w =>
        {
            foreach (var input in inputs)
            {
                w.WriteTag(1, WireFormat.WireType.LengthDelimited);
                w.WriteString(input?.Name ?? string.Empty);
            }

            foreach (var output in outputs)
            {
                w.WriteTag(2, WireFormat.WireType.LengthDelimited);
                w.WriteString(output.Name);
            }

            WriteString(w, 3, op + "_node");
            WriteString(w, 4, op);
            foreach (var (name, value) in attributes)
            {
                WriteMessage(w, 5, Message(a =>
                {
                    WriteString(a, 1, name);
                    switch (value)
                    {
                        case float f:
                            a.WriteTag(2, WireFormat.WireType.Fixed32);
                            a.WriteFloat(f);
                            WriteInt(a, 20, 1);
                            break;
                        case long l:
                            WriteInt(a, 3, l);
                            WriteInt(a, 20, 2);
                            break;
                        case string s:
                            WriteString(a, 4, s);
                            WriteInt(a, 20, 3);
                            break;
                        default:
                            throw new ArgumentException($"unsupported attribute value {value.GetType()}");
                    }
                }));
            }

            WriteString(w, 7, CustomOpLibrary.Domain);
        });

        var graph = Message(g =>
        {
            WriteMessage(g, 1, node);
            WriteString(g, 2, "test");
            foreach (var input in inputs)
            {
                if (input is { } i)
                {
                    WriteMessage(g, 11, ValueInfo(i.Name, i.DataType, i.Shape));
                }
            }

            foreach (var output in outputs)
            {
                WriteMessage(g, 12, ValueInfo(output.Name, output.DataType, null));
            }
        });

        return Message(m =>
        {
            WriteInt(m, 1, 8);  // ir_version
            WriteMessage(m, 8, Message(o => { WriteString(o, 1, string.Empty); WriteInt(o, 2, 17); }));
            WriteMessage(m, 8, Message(o => { WriteString(o, 1, CustomOpLibrary.Domain); WriteInt(o, 2, CustomOpLibrary.OpsetVersion); }));
            WriteMessage(m, 7, graph);
        });
    }

    private static byte[] ValueInfo(string name, int dataType, long?[]? shape) => Message(v =>
    {
        WriteString(v, 1, name);
        WriteMessage(v, 2, Message(t => WriteMessage(t, 1, Message(tensor =>
        {
            WriteInt(tensor, 1, dataType);
            if (shape is not null)
            {
                WriteMessage(tensor, 2, Message(s =>
                {
                    for (var d = 0; d < shape.Length; d++)
                    {
                        WriteMessage(s, 1, Message(dim =>
                        {
                            if (shape[d] is { } value)
                            {
                                WriteInt(dim, 1, value);
                            }
                            else
                            {
                                WriteString(dim, 2, $"{name}_d{d}");
                            }
                        }));
                    }
                }));
            }
        }))));
    });

    private static byte[] Message(Action<CodedOutputStream> write)
    {
        using var buffer = new MemoryStream();
        var stream = new CodedOutputStream(buffer);
        write(stream);
        stream.Flush();
        return buffer.ToArray();
    }

    private static void WriteString(CodedOutputStream w, int field, string value)
    {
        w.WriteTag(field, WireFormat.WireType.LengthDelimited);
        w.WriteString(value);
    }

    private static void WriteInt(CodedOutputStream w, int field, long value)
    {
        w.WriteTag(field, WireFormat.WireType.Varint);
        w.WriteInt64(value);
    }

    private static void WriteMessage(CodedOutputStream w, int field, byte[] message)
    {
        w.WriteTag(field, WireFormat.WireType.LengthDelimited);
        w.WriteBytes(ByteString.CopyFrom(message));
    }
}
