using Microsoft.ML.OnnxRuntime;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Memory;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;

namespace Spt.Runtime.Training;

/// <summary>
/// The ORT side of a training run: the grad, optimizer and eval sessions of an artifact directory on one execution
/// device, their IO bindings, and the device allocator and host/device copies that the resident state uses. The eval
/// session is created at the start only when the run has held-out data, else at its first use: a session holds its
/// graph's constants and its own arena (dense 4-layer decoder: 70 MB of RSS).
/// </summary>
internal sealed class TrainingSessions : IDisposable
{
    private readonly OrtMemoryInfo _memoryInfo;
    private readonly OrtAllocator _allocator;
    private readonly DeviceCopier? _copier;
    private readonly int _intraOpThreads;
    private readonly string? _profilePrefix;
    private readonly string _artifactDirectory;
    private readonly TrainingManifest _manifest;
    private readonly bool _needsCustomOps;
    private EvalSession? _eval;

    /// <summary>Creates the sessions and checks their inputs and outputs against the manifest.</summary>
    /// <param name="artifactDirectory">The artifact directory.</param>
    /// <param name="manifest">Its manifest.</param>
    /// <param name="device">The execution device.</param>
    /// <param name="intraOpThreads">ORT intra-op threads (0: ORT's default).</param>
    /// <param name="needsCustomOps">Whether the grad and eval graphs use sptc's operators.</param>
    /// <param name="profilePrefix">Turns on ORT's profiler: each session writes its profile to a file whose name starts with this path and <c>-grad</c>, <c>-optimizer</c> or <c>-eval</c> (null: off).</param>
    /// <param name="evalNow">Create the eval session now (the run evaluates); otherwise at the first <see cref="Eval"/>.</param>
    /// <exception cref="TrainingException">A graph is missing, ORT cannot load it, or it does not follow the manifest.</exception>
    public TrainingSessions(string artifactDirectory, TrainingManifest manifest, ExecutionDevice device, int intraOpThreads, bool needsCustomOps,
        string? profilePrefix = null, bool evalNow = true)
    {
        Device = device;
        _intraOpThreads = intraOpThreads;
        _profilePrefix = profilePrefix;
        _artifactDirectory = artifactDirectory;
        _manifest = manifest;
        _needsCustomOps = needsCustomOps;
        try
        {
            Grad = CreateSession(manifest.GradGraph, needsCustomOps, "grad");
            Optimizer = CreateSession(manifest.OptimizerGraph, needsCustomOps: false, "optimizer");
        }
        catch
        {
            Grad?.Dispose();
            Optimizer?.Dispose();
            throw;
        }

        GradInputs = [.. Grad.InputNames];
        try
        {
            CheckInterfaces(manifest);
        }
        catch
        {
            Grad.Dispose();
            Optimizer.Dispose();
            throw;
        }

        _memoryInfo = device == ExecutionDevice.Cuda
            ? new OrtMemoryInfo("Cuda", OrtAllocatorType.DeviceAllocator, 0, OrtMemType.Default)
            : OrtMemoryInfo.DefaultInstance;
        _allocator = new OrtAllocator(Grad, _memoryInfo);
        _copier = device == ExecutionDevice.Cuda ? new DeviceCopier(SessionOptionsFor(device, needsCustomOps: false)) : null;
        GradBinding = Grad.CreateIoBinding();
        OptimizerBinding = Optimizer.CreateIoBinding();
        if (evalNow)
        {
            try
            {
                _ = Eval;
            }
            catch
            {
                Dispose();
                throw;
            }
        }
    }

    /// <summary>The execution device.</summary>
    public ExecutionDevice Device { get; }

    public InferenceSession Grad { get; }

    public InferenceSession Optimizer { get; }

    /// <summary>The eval session, its binding and input names (created at the first use unless the constructor did).</summary>
    /// <exception cref="TrainingException">ORT cannot load eval.onnx, or it does not follow the manifest.</exception>
    public EvalSession Eval => _eval ??= OpenEval();

    public OrtIoBinding GradBinding { get; }

    public OrtIoBinding OptimizerBinding { get; }

    public RunOptions RunOptions { get; } = new();

    /// <summary>The input names of grad.onnx.</summary>
    public HashSet<string> GradInputs { get; }


    /// <summary>
    /// The device a trainer asked for <paramref name="wanted"/> runs on: Auto is CUDA when ORT has the CUDA provider
    /// and sptc's CUDA kernels are built, else CPU. Cuda fails (<see cref="TrainingException"/>, one line) when either
    /// is missing; a missing GPU surfaces when the first session starts.
    /// </summary>
    public static ExecutionDevice ResolveDevice(ExecutionDevice wanted)
    {
        var provider = OrtEnv.Instance().GetAvailableProviders().Contains("CUDAExecutionProvider");
        string? kernels = null;
        try
        {
            kernels = NativeOpLibrary.CudaPath;
        }
        catch (FileNotFoundException)
        {
        }

        return wanted switch
        {
            ExecutionDevice.Cpu => ExecutionDevice.Cpu,
            ExecutionDevice.Auto => provider && kernels is not null ? ExecutionDevice.Cuda : ExecutionDevice.Cpu,
            ExecutionDevice.Cuda when !provider => throw new TrainingException(
                "--device cuda: this ONNX Runtime has no CUDA execution provider (build with SPTC_ORT_GPU=1, i.e. " +
                "-p:SptOrtGpu=true, on a GPU host); use --device cpu"),
            ExecutionDevice.Cuda when kernels is null => throw new TrainingException(
                $"--device cuda: sptc's CUDA kernels ({NativeOpLibrary.CudaFileName}) are not built " +
                "(dotnet build -p:SptWithCuda=ON, needs nvcc); use --device cpu"),
            _ => ExecutionDevice.Cuda,
        };
    }

    /// <summary>A tensor from the device allocator (contents undefined).</summary>
    public OrtValue Allocate(ElementType type, long[] shape) =>
        OrtValue.CreateAllocatedTensorValue(_allocator, (TensorElementType)(int)type, shape);

    /// <summary>Copies host bytes into a device tensor.</summary>
    public void Upload(OrtValue destination, ReadOnlySpan<byte> data)
    {
        if (_copier is null)
        {
            data.CopyTo(destination.GetTensorMutableRawData());
            return;
        }

        var info = destination.GetTensorTypeAndShape();
        using var host = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, info.ElementDataType, info.Shape);
        data.CopyTo(host.GetTensorMutableRawData());
        _copier.Copy(host, destination);
    }

    /// <summary>Copies a device tensor's bytes to the host.</summary>
    public byte[] Download(OrtValue source)
    {
        if (_copier is null)
        {
            return source.GetTensorMutableRawData().ToArray();
        }

        var info = source.GetTensorTypeAndShape();
        using var host = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, info.ElementDataType, info.Shape);
        _copier.Copy(source, host);
        return host.GetTensorMutableRawData().ToArray();
    }

    /// <summary>
    /// Peak bytes in use of the sessions' allocators for the execution device (ORT <c>MaxInUse</c>), summed over the
    /// sessions created so far; null when the allocators keep no statistics.
    /// </summary>
    public long? MaxInUseBytes()
    {
        long total = 0;
        var any = false;
        foreach (var session in new[] { Grad, Optimizer, _eval?.Session })
        {
            if (session is null)
            {
                continue;
            }

            using var allocator = new OrtAllocator(session, _memoryInfo);
            if (AllocatorStats.MaxInUse(allocator) is { } bytes)
            {
                total += bytes;
                any = true;
            }
        }

        return any ? total : null;
    }

    public void Dispose()
    {
        GradBinding.Dispose();
        OptimizerBinding.Dispose();
        _eval?.Dispose();
        _copier?.Dispose();
        _allocator.Dispose();
        Grad.Dispose();
        Optimizer.Dispose();
        RunOptions.Dispose();
    }

    private void CheckInterfaces(TrainingManifest manifest)
    {
        var known = new HashSet<string>(manifest.DataInputs.Select(d => d.Name).Concat(manifest.Parameters.Select(p => p.Name)), StringComparer.Ordinal);
        foreach (var input in Grad.InputNames)
        {
            if (!known.Contains(input) && !(ArtifactContract.AccumulatedParameter(input) is { } p && known.Contains(p)))
            {
                throw new TrainingException($"{manifest.GradGraph} input '{input}' is neither a data input nor a parameter of {ArtifactContract.ManifestFile}");
            }
        }

        var trainable = manifest.Trainable.Select(p => p.Name).ToList();
        CheckOutputs(Grad, manifest.GradGraph, ArtifactContract.GradOutputs(trainable));
        CheckOutputs(Optimizer, manifest.OptimizerGraph, [ArtifactContract.GradNorm, .. trainable.Select(ArtifactContract.Updated)]);
    }

    private static void CheckEvalInterface(InferenceSession eval, TrainingManifest manifest)
    {
        var known = new HashSet<string>(manifest.DataInputs.Select(d => d.Name).Concat(manifest.Parameters.Select(p => p.Name)), StringComparer.Ordinal);
        foreach (var input in eval.InputNames)
        {
            if (!known.Contains(input))
            {
                throw new TrainingException($"{manifest.EvalGraph} input '{input}' is neither a data input nor a parameter of {ArtifactContract.ManifestFile}");
            }
        }

        CheckOutputs(eval, manifest.EvalGraph, ArtifactContract.EvalLossOutputs);
    }

    private static void CheckOutputs(InferenceSession session, string file, IEnumerable<string> outputs)
    {
        var have = session.OutputNames.ToHashSet(StringComparer.Ordinal);
        if (outputs.FirstOrDefault(o => !have.Contains(o)) is { } missing)
        {
            throw new TrainingException($"{file} has no output '{missing}' (the artifact does not follow {ArtifactContract.ManifestFile})");
        }
    }

    private EvalSession OpenEval()
    {
        var session = CreateSession(_manifest.EvalGraph, _needsCustomOps, "eval");
        try
        {
            CheckEvalInterface(session, _manifest);
            return new EvalSession(session);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    private SessionOptions SessionOptionsFor(ExecutionDevice device, bool needsCustomOps)
    {
        // No memory pattern: ORT would plan all of a run's intermediate tensors into one block per input shape, kept
        // by the arena beside the tensors' own chunks; on a training step (forward and backward, GBs of
        // activations) that doubled the peak RSS (dense 4-layer d768 decoder at S 2048: 8.5 GB with it, 5.3 GB
        // without, same MaxInUse, no slower), and every new sequence length would add a block.
        var options = new SessionOptions { LogSeverityLevel = OrtLogging.SessionLevel, EnableMemoryPattern = false };
        if (_intraOpThreads > 0)
        {
            options.IntraOpNumThreads = _intraOpThreads;
        }

        if (device == ExecutionDevice.Cuda)
        {
            try
            {
                options.AppendExecutionProvider_CUDA(0);
            }
            catch (OnnxRuntimeException e)
            {
                options.Dispose();
                throw new TrainingException("--device cuda: the CUDA execution provider did not start (no usable GPU?): " +
                    e.Message.Split('\n')[0], e);
            }
        }

        if (needsCustomOps)
        {
            try
            {
                NativeOpLibrary.Register(options, cuda: device == ExecutionDevice.Cuda);
            }
            catch (FileNotFoundException e)
            {
                options.Dispose();
                throw new TrainingException($"the training graphs use sptc's operators, but {e.Message}", e);
            }
        }

        return options;
    }

    private InferenceSession CreateSession(string file, bool needsCustomOps, string role)
    {
        var path = Path.Combine(_artifactDirectory, file);
        if (!File.Exists(path))
        {
            throw new TrainingException($"{_artifactDirectory}: {file} is missing");
        }

        using var options = SessionOptionsFor(Device, needsCustomOps);
        if (_profilePrefix is not null)
        {
            // ORT appends a time stamp and .json; the file is written when the session is disposed. The prefix is
            // read when profiling is switched on, so it is set first.
            options.ProfileOutputPathPrefix = $"{_profilePrefix}-{role}";
            options.EnableProfiling = true;
        }

        try
        {
            return new InferenceSession(path, options);
        }
        catch (OnnxRuntimeException e)
        {
            throw new TrainingException($"{_artifactDirectory}: ONNX Runtime cannot load the training graphs: {e.Message}", e);
        }
    }

    /// <summary>eval.onnx's session, its IO binding and its input names.</summary>
    internal sealed class EvalSession(InferenceSession session) : IDisposable
    {
        public InferenceSession Session { get; } = session;

        public OrtIoBinding Binding { get; } = session.CreateIoBinding();

        /// <summary>The input names of eval.onnx.</summary>
        public HashSet<string> Inputs { get; } = [.. session.InputNames];

        public void Dispose()
        {
            Binding.Dispose();
            Session.Dispose();
        }
    }
}
