using Spt.Ir;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Spt.CustomOps.Tests;

/// <summary>
/// A one-node ONNX model around an sptc op, built with the IR, run in an ORT session with the sptc library
/// registered.
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
        NativeOpLibrary.Register(_options);
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
        var b = new GraphBuilder(opset: 17);
        b.Opset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        // A null dim becomes a symbol of its own, so ORT sees it as unknown at graph time.
        var values = inputs.Select(i => i is { } input
            ? b.Input(input.Name, (ElementType)input.DataType,
                [.. input.Shape.Select((d, axis) => d is { } size ? (object)size : $"{input.Name}_d{axis}")])
            : null).ToArray();
        var node = b.Node(op, values, outputs.Count, [.. attributes.Select(a => (a.Key, a.Value))],
            CustomOpLibrary.Domain, op + "_node", [.. outputs.Select(o => o.Name)]);
        for (var i = 0; i < outputs.Count; i++)
        {
            // Element type only: the shape is left to ORT's (and the op's) shape inference.
            node.Outputs[i].Type = new TensorType((ElementType)outputs[i].DataType, null);
            b.Output(node.Outputs[i]);
        }

        using var model = b.Build();
        return model.ToBytes();
    }
}
