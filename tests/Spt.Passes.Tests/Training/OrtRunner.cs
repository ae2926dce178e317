using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using Spt.Ir;

namespace Spt.Passes.Tests.Training;

/// <summary>Runs IR models in ONNX Runtime on named float/int tensors, for the training tests.</summary>
internal sealed class OrtRunner : IDisposable
{
    private readonly InferenceSession _session;

    public OrtRunner(Model model, bool customOps = false)
    {
        using var options = new SessionOptions
        {
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL,
            IntraOpNumThreads = 1,
            InterOpNumThreads = 1,
        };
        if (customOps)
            Spt.Runtime.NativeOpLibrary.Register(options);
        _session = new InferenceSession(model.ToBytes(), options);
    }

    public IReadOnlyList<string> OutputNames => _session.OutputNames;

    public IReadOnlyList<string> InputNames => _session.InputNames;

    /// <summary>Runs with the given inputs and returns every output as a tensor.</summary>
    public Dictionary<string, Tensor> Run(IReadOnlyDictionary<string, Tensor> inputs)
    {
        var names = inputs.Keys.ToArray();
        var values = names.Select(n => ToOrtValue(inputs[n])).ToArray();
        try
        {
            using var runOptions = new RunOptions();
            using var outputs = _session.Run(runOptions, names, values, _session.OutputNames.ToArray());
            var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            for (int i = 0; i < outputs.Count; i++)
                result[_session.OutputNames[i]] = FromOrtValue(_session.OutputNames[i], outputs[i]);
            return result;
        }
        finally
        {
            foreach (var v in values)
                v.Dispose();
        }
    }

    public static OrtValue ToOrtValue(Tensor tensor)
    {
        var result = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)tensor.ElementType, [.. tensor.Dims]);
        tensor.GetRawData().Span.CopyTo(result.GetTensorMutableRawData());
        return result;
    }

    public static Tensor FromOrtValue(string name, OrtValue v)
    {
        var info = v.GetTensorTypeAndShape();
        return Tensor.FromRawData(name, (ElementType)info.ElementDataType, info.Shape, v.GetTensorMutableRawData().ToArray());
    }

    public void Dispose() => _session.Dispose();
}
