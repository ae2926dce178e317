using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Spt.Ir.Tests;

/// <summary>Runs models in ONNX Runtime and compares results, for tests.</summary>
internal static class OrtHelpers
{
    /// <summary>A model ORT could not handle, with the reason.</summary>
    internal sealed class OrtUnsupportedException(string message, Exception? inner = null) : Exception(message, inner);

    public static SessionOptions QuietOptions() => new()
    {
        LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL,
        IntraOpNumThreads = 1,
        InterOpNumThreads = 1,
    };

    /// <summary>An ORT tensor holding a copy of <paramref name="tensor"/>'s elements.</summary>
    public static OrtValue ToOrtValue(Tensor tensor)
    {
        long[] shape = [.. tensor.Dims];
        if (tensor.ElementType == ElementType.String)
        {
            var value = OrtValue.CreateTensorWithEmptyStrings(OrtAllocator.DefaultInstance, shape);
            var strings = tensor.StringData;
            for (int i = 0; i < strings.Count; i++)
                value.StringTensorSetElementAt(strings[i].Span, i);
            return value;
        }
        if (tensor.ElementType > ElementType.BFloat16)
            throw new OrtUnsupportedException($"element type {tensor.ElementType} has no buffer access in the ORT C# API");
        var result = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)tensor.ElementType, shape);
        tensor.GetRawData().Span.CopyTo(result.GetTensorMutableRawData());
        return result;
    }

    /// <summary>Runs <paramref name="session"/> and returns a comparable snapshot of every output.</summary>
    public static List<object> Run(InferenceSession session, IReadOnlyList<string> inputNames, IReadOnlyList<OrtValue> inputs)
    {
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, inputNames.ToArray(), inputs.ToArray(), session.OutputNames.ToArray());
        return [.. outputs.Select(Snapshot)];
    }

    // Tensor -> (element type, shape, bytes or strings); sequence -> list of snapshots.
    private static object Snapshot(OrtValue v)
    {
        switch (v.OnnxType)
        {
            case OnnxValueType.ONNX_TYPE_TENSOR:
                {
                    var info = v.GetTensorTypeAndShape();
                    string header = $"{info.ElementDataType}[{string.Join(",", info.Shape)}]";
                    if (info.ElementDataType == TensorElementType.String)
                        return header + ":" + string.Join("\u0001", v.GetStringTensorAsArray());
                    if ((int)info.ElementDataType > (int)TensorElementType.BFloat16)
                        throw new OrtUnsupportedException($"output element type {(int)info.ElementDataType} has no buffer access in the ORT C# API");
                    return header + ":" + Convert.ToHexString(v.GetTensorMutableRawData());
                }
            case OnnxValueType.ONNX_TYPE_SEQUENCE:
                {
                    int n = v.GetValueCount();
                    var items = new List<object>();
                    for (int i = 0; i < n; i++)
                    {
                        using var item = v.GetValue(i, OrtAllocator.DefaultInstance);
                        items.Add(Snapshot(item));
                    }
                    return "seq(" + string.Join(";", items) + ")";
                }
            default:
                throw new OrtUnsupportedException($"output of kind {v.OnnxType} is not compared");
        }
    }
}
