using Microsoft.ML.OnnxRuntime;
using Spt.Ir;
using Spt.Passes.Training;
using Tensor = Spt.Ir.Tensor;

namespace Spt.Runtime.Training;

/// <summary>
/// The device-resident training state: every parameter, and for trainable ones the AdamW moments and gradient
/// accumulators, in tensors from the sessions' device allocator for the whole run. Trainable tensors have two
/// buffers each of value and moments and ping-pong: the optimizer reads <c>p</c>, <c>m</c>, <c>v</c> from one buffer
/// and writes <c>new.*</c> into the other, which becomes current only after a good run. The grad graph adds each
/// micro-batch's gradient to <c>grad_acc</c> into the other accumulator buffer (the first micro-batch reads a shared
/// zero tensor); with one micro-batch per step that is the only read, so there is a single accumulator buffer.
/// Frozen parameters have one buffer.
/// </summary>
internal sealed class ResidentState : IDisposable
{
    private readonly TrainingSessions _sessions;
    private readonly Dictionary<string, OrtValue> _zeros = [];

    /// <param name="sessions">The sessions whose device allocator holds the state.</param>
    /// <param name="parameters">The artifact's parameters.</param>
    /// <param name="microBatches">Micro-batches per optimizer step (gradient accumulation): above 1 the accumulators are double-buffered.</param>
    public ResidentState(TrainingSessions sessions, IEnumerable<ParameterSpec> parameters, int microBatches)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(microBatches, 1);
        _sessions = sessions;
        Parameters = [.. parameters.Select(spec => new ResidentParameter(spec, sessions, accumulators: microBatches > 1 ? 2 : 1))];
    }

    public IReadOnlyList<ResidentParameter> Parameters { get; }

    public IEnumerable<ResidentParameter> Trainable => Parameters.Where(p => p.Spec.Trainable);

    /// <summary>The running gradient sums of the trainable parameters.</summary>
    public List<OrtValue> Accumulators() => [.. Trainable.Select(p => p.Acc![p.AccCurrent])];

    /// <summary>The current parameter values and moments of the trainable parameters (what data-parallel ranks share).</summary>
    public List<OrtValue> TrainableState() => [.. Trainable.SelectMany(p => new[] { p.Values[p.Current], p.M![p.Current], p.V![p.Current] })];

    /// <summary>Loads every parameter (and moments; absent ones read as zeros) from a checkpoint's tensors.</summary>
    /// <exception cref="TrainingException">A parameter is missing or has another type or shape.</exception>
    public void Load(IReadOnlyDictionary<string, Tensor> tensors, string file)
    {
        foreach (var p in Parameters)
        {
            if (!tensors.TryGetValue(p.Spec.Name, out var value))
            {
                throw new TrainingException($"checkpoint '{file}' has no value for parameter '{p.Spec.Name}'");
            }

            p.Load(value, tensors.GetValueOrDefault(ArtifactContract.FirstMoment(p.Spec.Name)),
                tensors.GetValueOrDefault(ArtifactContract.SecondMoment(p.Spec.Name)), file);
        }
    }

    /// <summary>The current state as host tensors named by the artifact contract: parameters, then moments of trainable ones.</summary>
    public List<Tensor> CheckpointTensors()
    {
        var tensors = new List<Tensor>();
        foreach (var p in Parameters)
        {
            tensors.Add(p.ToTensor(p.Spec.Name, p.Values[p.Current]));
            if (p.Spec.Trainable)
            {
                tensors.Add(p.ToTensor(ArtifactContract.FirstMoment(p.Spec.Name), p.M![p.Current]));
                tensors.Add(p.ToTensor(ArtifactContract.SecondMoment(p.Spec.Name), p.V![p.Current]));
            }
        }

        return tensors;
    }

    /// <summary>The current parameter values as host tensors named like the model's initializers.</summary>
    public List<Tensor> ParameterTensors() => [.. Parameters.Select(p => p.ToTensor(p.Spec.Name, p.Values[p.Current]))];

    /// <summary>Binds the current value of every parameter that <paramref name="inputs"/> names.</summary>
    public void BindParameters(OrtIoBinding binding, HashSet<string> inputs)
    {
        foreach (var p in Parameters)
        {
            if (inputs.Contains(p.Spec.Name))
            {
                binding.BindInput(p.Spec.Name, p.Values[p.Current]);
            }
        }
    }

    /// <summary>
    /// grad.onnx: reads the running sums (zeros for the first micro-batch), writes into the other buffers (the only
    /// buffer when there is one micro-batch per step).
    /// </summary>
    public void BindAccumulators(OrtIoBinding binding, bool first)
    {
        foreach (var p in Trainable)
        {
            if (!first && p.Acc!.Length == 1)
            {
                throw new InvalidOperationException("the resident state was allocated for one micro-batch per step");
            }

            binding.BindInput(ArtifactContract.Accumulator(p.Spec.Name), first ? Zeros(p.Spec) : p.Acc![p.AccCurrent]);
            binding.BindOutput(ArtifactContract.AccumulatorOutput(p.Spec.Name), p.Acc![p.AccNext]);
        }
    }

    /// <summary>After a grad run: the written accumulator buffers hold the running sums.</summary>
    public void SwapAccumulators()
    {
        foreach (var p in Trainable)
        {
            p.AccCurrent = p.AccNext;
        }
    }

    /// <summary>optimizer.onnx: reads value, gradient sum and moments, writes the update into the other buffers.</summary>
    public void BindOptimizer(OrtIoBinding binding)
    {
        foreach (var p in Trainable)
        {
            var name = p.Spec.Name;
            var m = ArtifactContract.FirstMoment(name);
            var v = ArtifactContract.SecondMoment(name);
            binding.BindInput(name, p.Values[p.Current]);
            binding.BindInput(ArtifactContract.Gradient(name), p.Acc![p.AccCurrent]);
            binding.BindInput(m, p.M![p.Current]);
            binding.BindInput(v, p.V![p.Current]);
            binding.BindOutput(ArtifactContract.Updated(name), p.Values[1 - p.Current]);
            binding.BindOutput(ArtifactContract.Updated(m), p.M![1 - p.Current]);
            binding.BindOutput(ArtifactContract.Updated(v), p.V![1 - p.Current]);
        }
    }

    /// <summary>After a good optimizer run: the written buffers hold the current state.</summary>
    public void SwapState()
    {
        foreach (var p in Trainable)
        {
            p.Current = 1 - p.Current;
        }
    }

    public void Dispose()
    {
        foreach (var p in Parameters)
        {
            p.Dispose();
        }

        foreach (var z in _zeros.Values)
        {
            z.Dispose();
        }
    }

    private OrtValue Zeros(ParameterSpec spec)
    {
        var key = $"{spec.ElementType}:{string.Join('x', spec.Shape)}";
        if (!_zeros.TryGetValue(key, out var zeros))
        {
            zeros = _sessions.Allocate(spec.ElementType, [.. spec.Shape]);
            _sessions.Upload(zeros, new byte[spec.ElementType.ByteCount(spec.ElementCount)]);
            _zeros[key] = zeros;
        }

        return zeros;
    }

    /// <summary>
    /// One parameter's resident tensors: value (and for trainable ones m, v, double-buffered, and one or two gradient
    /// accumulator buffers).
    /// </summary>
    internal sealed class ResidentParameter : IDisposable
    {
        private readonly TrainingSessions _sessions;

        public ResidentParameter(ParameterSpec spec, TrainingSessions sessions, int accumulators)
        {
            Spec = spec;
            _sessions = sessions;
            long[] shape = [.. spec.Shape];
            var copies = spec.Trainable ? 2 : 1;
            Values = [.. Enumerable.Range(0, copies).Select(_ => sessions.Allocate(spec.ElementType, shape))];
            if (spec.Trainable)
            {
                M = [sessions.Allocate(spec.ElementType, shape), sessions.Allocate(spec.ElementType, shape)];
                V = [sessions.Allocate(spec.ElementType, shape), sessions.Allocate(spec.ElementType, shape)];
                Acc = [.. Enumerable.Range(0, accumulators).Select(_ => sessions.Allocate(spec.ElementType, shape))];
            }
        }

        public ParameterSpec Spec { get; }

        public OrtValue[] Values { get; }

        public OrtValue[]? M { get; }

        public OrtValue[]? V { get; }

        public OrtValue[]? Acc { get; }

        /// <summary>Which of the two buffers of Values/M/V holds the current state.</summary>
        public int Current { get; set; }

        /// <summary>Which accumulator buffer holds the running gradient sum.</summary>
        public int AccCurrent { get; set; }

        /// <summary>The accumulator buffer the next grad run writes.</summary>
        public int AccNext => (AccCurrent + 1) % Acc!.Length;

        public void Load(Tensor value, Tensor? m, Tensor? v, string file)
        {
            Check(value, Spec.Name, file);
            Current = 0;
            _sessions.Upload(Values[0], value.GetRawData().Span);
            if (!Spec.Trainable)
            {
                return;
            }

            var zeros = new byte[Spec.ElementType.ByteCount(Spec.ElementCount)];
            if (m is not null) Check(m, ArtifactContract.FirstMoment(Spec.Name), file);
            if (v is not null) Check(v, ArtifactContract.SecondMoment(Spec.Name), file);
            _sessions.Upload(M![0], m is null ? zeros : m.GetRawData().Span);
            _sessions.Upload(V![0], v is null ? zeros : v.GetRawData().Span);
        }

        public Tensor ToTensor(string name, OrtValue value) =>
            Tensor.FromRawData(name, Spec.ElementType, Spec.Shape, _sessions.Download(value));

        public void Dispose()
        {
            foreach (var buffer in Values.Concat(M ?? []).Concat(V ?? []).Concat(Acc ?? []))
            {
                buffer.Dispose();
            }
        }

        private void Check(Tensor t, string name, string file)
        {
            if (t.ElementType != Spec.ElementType || !t.Dims.SequenceEqual(Spec.Shape))
            {
                throw new TrainingException($"checkpoint '{file}': '{name}' is {t.ElementType.ShortName()}[{string.Join(',', t.Dims)}], " +
                    $"the artifact expects {Spec.ElementType.ShortName()}[{string.Join(',', Spec.Shape)}]");
            }
        }
    }
}
