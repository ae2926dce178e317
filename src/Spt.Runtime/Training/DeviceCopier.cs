using Microsoft.ML.OnnxRuntime;
using Spt.Ir;

namespace Spt.Runtime.Training;

/// <summary>
/// Copies tensors between host and device memory with one-node Identity sessions on the device's execution
/// provider (ORT moves the input to the device and the output to wherever it is bound). Used only when
/// loading checkpoints, zero-filling and writing checkpoints, never per step.
/// </summary>
internal sealed class DeviceCopier : IDisposable
{
    private readonly SessionOptions _options;
    private readonly Dictionary<Microsoft.ML.OnnxRuntime.Tensors.TensorElementType, (InferenceSession Session, OrtIoBinding Binding)> _sessions = [];
    private readonly RunOptions _run = new();

    public DeviceCopier(SessionOptions options) => _options = options;

    public void Copy(OrtValue source, OrtValue destination)
    {
        var type = source.GetTensorTypeAndShape().ElementDataType;
        if (!_sessions.TryGetValue(type, out var entry))
        {
            var b = new GraphBuilder(opset: 17);
            var x = b.Input("x", new TensorType((ElementType)(int)type, null));
            b.Output(b.Op("Identity", x), "y");
            using var model = b.Build();
            var session = new InferenceSession(model.ToBytes(), _options);
            entry = (session, session.CreateIoBinding());
            _sessions[type] = entry;
        }

        entry.Binding.BindInput("x", source);
        entry.Binding.BindOutput("y", destination);
        entry.Session.RunWithBinding(_run, entry.Binding);
        entry.Binding.SynchronizeBoundOutputs();
    }

    public void Dispose()
    {
        foreach (var (session, binding) in _sessions.Values)
        {
            binding.Dispose();
            session.Dispose();
        }

        _run.Dispose();
        _options.Dispose();
    }
}
