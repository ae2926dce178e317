using Microsoft.ML.OnnxRuntime;
using Spt.CustomOps;
using Spt.Ir;

namespace Spt.Runtime;

/// <summary>How <see cref="OrtModelRunner"/> creates its session.</summary>
public sealed record RunnerOptions
{
    /// <summary>Threads for one operator (ORT intra-op threads); 0 lets ORT choose.</summary>
    public int IntraOpThreads { get; init; } = 1;

    /// <summary>
    /// Whether to register the sptc custom-op library: <c>null</c> (default) registers it when the model imports
    /// the <c>spt</c> domain; <c>true</c> always (fails when the library is missing); <c>false</c> never.
    /// </summary>
    public bool? RegisterCustomOps { get; init; }

    /// <summary>ORT graph optimizations (default: all). Tests comparing two models may want them off.</summary>
    public GraphOptimizationLevel Optimization { get; init; } = GraphOptimizationLevel.ORT_ENABLE_ALL;
}

/// <summary>
/// Runs a model in ONNX Runtime on the CPU: creates the session (with sptc's custom operators when needed),
/// feeds named <see cref="TensorData"/> inputs and returns every output as <see cref="TensorData"/>.
/// </summary>
public sealed class OrtModelRunner : IDisposable
{
    private readonly InferenceSession _session;
    private readonly SessionOptions _options;

    /// <summary>A runner for an in-memory model (serialized as is; external data must be loaded).</summary>
    public OrtModelRunner(Model model, RunnerOptions? options = null)
        : this(model.ToBytes(), UsesCustomOps(model), options)
    {
    }

    private OrtModelRunner(byte[] bytes, bool usesCustomOps, RunnerOptions? options)
    {
        _options = CreateSessionOptions(options ?? new RunnerOptions(), usesCustomOps);
        try
        {
            _session = new InferenceSession(bytes, _options);
        }
        catch
        {
            _options.Dispose();
            throw;
        }
    }

    /// <summary>A runner for a model file.</summary>
    public static OrtModelRunner FromFile(string path, RunnerOptions? options = null)
    {
        using var model = Model.Load(path);
        return new OrtModelRunner(model, options);
    }

    /// <summary>Session options with the thread count and, when asked or needed, the sptc custom-op library.</summary>
    public static SessionOptions CreateSessionOptions(RunnerOptions options, bool modelUsesCustomOps)
    {
        var so = new SessionOptions
        {
            IntraOpNumThreads = options.IntraOpThreads,
            InterOpNumThreads = 1,
            LogSeverityLevel = OrtLogging.SessionLevel,
            GraphOptimizationLevel = options.Optimization,
        };
        if (options.RegisterCustomOps ?? modelUsesCustomOps)
            NativeOpLibrary.Register(so);
        return so;
    }

    /// <summary>Whether the model imports the sptc operator domain.</summary>
    public static bool UsesCustomOps(Model model) => model.GetOpsetVersion(CustomOpLibrary.Domain) is not null;

    /// <summary>Names of the inputs a caller must feed.</summary>
    public IReadOnlyList<string> InputNames => _session.InputNames;

    /// <summary>Names of the outputs, in model order.</summary>
    public IReadOnlyList<string> OutputNames => _session.OutputNames;

    /// <summary>The underlying session, for callers that need more.</summary>
    public InferenceSession Session => _session;

    /// <summary>Runs the model; returns every output by name, in model order.</summary>
    public IReadOnlyList<KeyValuePair<string, TensorData>> Run(IReadOnlyDictionary<string, TensorData> inputs)
    {
        var names = _session.InputNames.ToArray();
        var values = new List<OrtValue>();
        try
        {
            foreach (var name in names)
            {
                if (!inputs.TryGetValue(name, out var data))
                    throw new ArgumentException($"no value given for model input '{name}'");
                values.Add(ToOrtValue(data));
            }
            using var runOptions = new RunOptions();
            using var outputs = _session.Run(runOptions, names, values, _session.OutputNames);
            return [.. _session.OutputNames.Zip(outputs, (n, v) => new KeyValuePair<string, TensorData>(n, FromOrtValue(n, v)))];
        }
        finally
        {
            foreach (var v in values)
                v.Dispose();
        }
    }

    /// <summary>An ORT tensor holding a copy of <paramref name="data"/> in its model element type.</summary>
    public static OrtValue ToOrtValue(TensorData data)
    {
        var shape = data.Shape;
        return data.Type switch
        {
            ElementType.Float => OrtValue.CreateTensorValueFromMemory(data.Floats!.ToArray(), shape),
            ElementType.Double => OrtValue.CreateTensorValueFromMemory(data.Floats!.Select(v => (double)v).ToArray(), shape),
            ElementType.Int64 => OrtValue.CreateTensorValueFromMemory(data.Longs!.ToArray(), shape),
            ElementType.Int32 => OrtValue.CreateTensorValueFromMemory(data.Longs!.Select(v => (int)v).ToArray(), shape),
            ElementType.Int8 => OrtValue.CreateTensorValueFromMemory(data.Longs!.Select(v => (sbyte)v).ToArray(), shape),
            ElementType.UInt8 => OrtValue.CreateTensorValueFromMemory(data.Longs!.Select(v => (byte)v).ToArray(), shape),
            ElementType.Bool => OrtValue.CreateTensorValueFromMemory(data.Longs!.Select(v => v != 0).ToArray(), shape),
            _ => throw new OnnxModelException($"inputs of element type {data.Type.ShortName()} are not supported by the runner"),
        };
    }

    private static TensorData FromOrtValue(string name, OrtValue v)
    {
        if (!v.IsTensor)
            throw new OnnxModelException($"output '{name}' is not a tensor ({v.OnnxType})");
        var info = v.GetTensorTypeAndShape();
        long[] shape = info.Shape;
        var type = (ElementType)(int)info.ElementDataType;
        return type switch
        {
            ElementType.Float => TensorData.FromFloats(v.GetTensorDataAsSpan<float>().ToArray(), shape),
            ElementType.Double => TensorData.FromFloats([.. v.GetTensorDataAsSpan<double>().ToArray().Select(x => (float)x)], shape, type),
            ElementType.Int64 => TensorData.FromLongs(v.GetTensorDataAsSpan<long>().ToArray(), shape),
            ElementType.Int32 => TensorData.FromLongs([.. v.GetTensorDataAsSpan<int>().ToArray().Select(x => (long)x)], shape, type),
            ElementType.Int8 => TensorData.FromLongs([.. v.GetTensorDataAsSpan<sbyte>().ToArray().Select(x => (long)x)], shape, type),
            ElementType.UInt8 => TensorData.FromLongs([.. v.GetTensorDataAsSpan<byte>().ToArray().Select(x => (long)x)], shape, type),
            ElementType.Bool => TensorData.FromLongs([.. v.GetTensorDataAsSpan<bool>().ToArray().Select(x => x ? 1L : 0L)], shape, type),
            _ => throw new OnnxModelException($"output '{name}' has element type {type.ShortName()}, which the runner does not read"),
        };
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _session.Dispose();
        _options.Dispose();
    }
}
