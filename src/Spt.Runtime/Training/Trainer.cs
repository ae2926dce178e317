using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Tensor = Spt.Ir.Tensor;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Distributed;

namespace Spt.Runtime.Training;

/// <summary>
/// Fine-tunes a model from a training-artifact directory (<see cref="ArtifactContract"/>, <see cref="TrainingManifest"/>)
/// with three ordinary ORT inference sessions (<see cref="TrainingSessions"/>): grad.onnx per micro-batch,
/// optimizer.onnx per step, eval.onnx for held-out loss. The trainer runs the step loop, evaluation and the checkpoint
/// schedule.
/// <para>
/// Residency: every parameter, AdamW moment and gradient accumulator lives in device tensors for the whole run
/// (<see cref="ResidentState"/>, double-buffered through <see cref="OrtIoBinding"/>). The only per-step
/// host-to-device traffic is the data batch and three scalars (lr, step, grad scale); the loss, task loss and
/// gradient norm come back as scalars.
/// </para>
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly TrainerOptions _options;
    private readonly TrainingSessions _sessions;
    private readonly ResidentState _resident;
    private readonly OrtValue _lr, _stepValue, _gradScale, _loss, _taskLoss, _gradNorm;
    private readonly Dictionary<(int Batch, int Length), BatchFeeder> _feeders = [];
    private readonly Dataset _train;
    private readonly Dataset? _evalSet;
    private readonly LrSchedule _schedule;
    private readonly CheckpointStore? _store;
    private readonly MetricsWriter? _metrics;
    private readonly DataParallel? _parallel;
    private DataOrder _order;
    private TrainerState _state;
    private string? _lastCheckpoint;
    private BestEvaluation? _best;
    private int _sinceBest;
    private bool _stoppedEarly;
    private bool _disposed;

    /// <summary>
    /// Opens the artifact directory, creates the sessions, allocates the resident state and loads the initial
    /// checkpoint. Validates the data against the model (vocabulary, positions table, classes).
    /// </summary>
    /// <param name="artifactDirectory">A directory written by <c>sptc compile-training</c>.</param>
    /// <param name="train">Training examples.</param>
    /// <param name="eval">Held-out examples (null or empty: no evaluation).</param>
    /// <param name="options">Run options.</param>
    /// <exception cref="TrainingException">The directory, the data or the options are unusable.</exception>
    public Trainer(string artifactDirectory, Dataset train, Dataset? eval, TrainerOptions options)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        ArtifactDirectory = Path.GetFullPath(artifactDirectory);
        Manifest = TrainingManifest.Load(ArtifactDirectory);
        _train = train;
        _evalSet = eval is { Count: > 0 } ? eval : null;
        if (train.Count == 0)
        {
            throw new DataException($"{train.Source}: no training examples left after the eval split");
        }

        Limits = ReadLimitsAndCheckOps(out var needsCustomOps);
        var labelIgnore = Manifest.Loss.Kind == ArtifactContract.CausalLmLoss ? Manifest.Loss.IgnoreIndex : (long?)null;
        train.Validate(Limits, labelIgnore);
        _evalSet?.Validate(Limits, labelIgnore);
        BatchBudget.Check(options, train, Limits, Manifest);
        CheckDataFitsLoss(train);

        Device = TrainingSessions.ResolveDevice(options.Device);
        _sessions = new TrainingSessions(ArtifactDirectory, Manifest, Device, options.IntraOpThreads, needsCustomOps, options.ProfilePrefix,
            evalNow: _evalSet is not null);
        _lr = HostScalar();
        _stepValue = HostScalar();
        _gradScale = HostScalar();
        _loss = HostScalar();
        _taskLoss = HostScalar();
        _gradNorm = HostScalar();
        _resident = new ResidentState(_sessions, Manifest.Parameters, options.Accumulate);
        _parallel = options.Reducer is { } reducer ? new DataParallel(reducer, Manifest, train, options, Device) : null;
        _schedule = new LrSchedule(options.Schedule, options.LearningRate, checked((int)options.WarmupSteps), checked((int)options.Steps));
        _state = TrainerState.Initial(options.Seed);
        _order = new DataOrder(train.Count, options.Seed, lengths: train.Lengths, bucket: BucketWindow);
        LoadCheckpoint(Path.Combine(ArtifactDirectory, Manifest.InitialCheckpoint), initial: true);
        _store = options.CheckpointDir is { } dir ? new CheckpointStore(dir, options.Keep) : null;
        _metrics = options.MetricsPath is { } metrics ? new MetricsWriter(metrics) : null;
    }

    /// <summary>The artifact directory.</summary>
    public string ArtifactDirectory { get; }

    /// <summary>The artifact manifest.</summary>
    public TrainingManifest Manifest { get; }

    /// <summary>What the model accepts (read from eval.onnx).</summary>
    public ModelLimits Limits { get; }

    /// <summary>The execution provider in use (Cpu or Cuda).</summary>
    public ExecutionDevice Device { get; }

    /// <summary>Optimizer steps done so far.</summary>
    public long Step => _state.Step;

    /// <summary>The trainer's position (step, data order, tokens).</summary>
    public TrainerState State => _state with { DataEpoch = _order.Epoch, DataPosition = _order.Position };

    /// <summary>The learning-rate schedule.</summary>
    public LrSchedule Schedule => _schedule;

    /// <summary>The newest checkpoint written or loaded by this trainer (null: none).</summary>
    public string? LastCheckpoint => _lastCheckpoint;

    /// <summary>
    /// Continues from the newest checkpoint in <see cref="TrainerOptions.CheckpointDir"/>: parameters, moments,
    /// step and data position. Returns the checkpoint directory, or null when there is none (a fresh start).
    /// </summary>
    /// <remarks>
    /// The run's configuration must match the directory's (<see cref="CheckpointStore.BeginResume"/>). A checkpoint
    /// that cannot be read (truncated, corrupt) is skipped for the previous intact one, with a line to
    /// <paramref name="warn"/>. A checkpoint at or beyond <see cref="TrainerOptions.Steps"/> is an error: there is
    /// nothing left to train.
    /// </remarks>
    public string? ResumeFromLatest(Action<string>? warn = null)
    {
        if (_store is null)
        {
            return null;
        }

        _store.BeginResume(CurrentRunConfig());
        var all = _store.List();
        for (var i = all.Count - 1; i >= 0; i--)
        {
            var (step, dir) = all[i];
            try
            {
                LoadCheckpoint(Path.Combine(dir, Checkpoint.FileName), initial: false);
            }
            catch (CheckpointUnreadableException e)
            {
                warn?.Invoke($"checkpoint {dir} is unreadable ({e.Message}); trying the one before it");
                continue;
            }

            if (step >= _options.Steps)
            {
                throw new TrainingException($"the checkpoint {dir} is at step {step}, so --steps {_options.Steps} leaves nothing to train; give --steps above {step}");
            }

            _lastCheckpoint = dir;
            return dir;
        }

        if (all.Count > 0)
        {
            throw new TrainingException($"none of the {all.Count} checkpoints in {_store.Directory} can be read");
        }

        return null;
    }

    private RunConfig CurrentRunConfig() =>
        new(_options.Seed, _options.BatchSize, _options.Accumulate, _train.SequenceLength, RunConfig.HashArtifact(ArtifactDirectory));

    /// <summary>Loads parameters, moments and trainer state from a checkpoint's state.onnx.</summary>
    public void LoadCheckpoint(string stateFile, bool initial = false)
    {
        if (!File.Exists(stateFile))
        {
            throw new TrainingException($"checkpoint '{stateFile}' does not exist");
        }

        var state = Checkpoint.LoadInto(stateFile, _resident, _options.Seed);
        ReleaseHostCopies();
        if (initial)
        {
            // The artifact's checkpoint is the starting point, not a run position: keep the seed given now.
            state = state with { DataSeed = _options.Seed, DataEpoch = 0, DataPosition = 0 };
        }

        if (state.DataPosition > _train.Count)
        {
            throw new TrainingException($"checkpoint '{stateFile}' is at data position {state.DataPosition} of an epoch, " +
                $"but the training set has {_train.Count} examples: resume with the same data and --seq");
        }

        _state = state;
        _order = new DataOrder(_train.Count, state.DataSeed, state.DataEpoch, state.DataPosition, _train.Lengths, BucketWindow);
        _parallel?.Synchronized = false;
    }

    /// <summary>
    /// Runs up to <see cref="TrainerOptions.Steps"/> (or stops early after <paramref name="stopAfter"/>, as an
    /// interrupted run would: the LR schedule still spans all steps), evaluating and checkpointing as configured;
    /// the last step taken is always checkpointed when a checkpoint directory is set.
    /// </summary>
    /// <exception cref="TrainingDivergedException">The loss or gradient norm became NaN or infinite.</exception>
    public TrainingResult Run(Action<StepReport>? onStep = null, long? stopAfter = null, CancellationToken cancel = default)
    {
        BeginRun();
        SynchronizeRanks();
        var until = Math.Min(stopAfter ?? _options.Steps, _options.Steps);
        var firstStep = _state.Step + 1;
        _metrics?.Start(_state.Step);
        double firstLoss = double.NaN, lastLoss = double.NaN;
        double? evalLoss = null;
        double seconds = 0;
        long tokens = 0;
        var checkpointedAt = -1L;
        while (_state.Step < until && !cancel.IsCancellationRequested)
        {
            StepReport report;
            try
            {
                report = TrainStep();
            }
            catch (TrainingDivergedException e)
            {
                _metrics?.WriteFailure(e.Step, e.Quantity, e.Value);
                throw;
            }

            seconds += report.Seconds;
            tokens += TokensPerStep;
            if (report.Step == firstStep)
            {
                firstLoss = report.Loss;
            }

            lastLoss = report.Loss;
            var last = _state.Step == _options.Steps;
            var stop = false;
            if (_evalSet is not null && ((_options.EvalEvery > 0 && _state.Step % _options.EvalEvery == 0) || last))
            {
                var eval = EvaluateMetrics();
                evalLoss = eval.TaskLoss;
                report = report with { EvalLoss = evalLoss, Eval = eval };
                stop = TrackBest(eval);
            }

            var due = _options.CheckpointEvery > 0
                ? _state.Step % _options.CheckpointEvery == 0
                : _options.EvalEvery > 0 && _state.Step % _options.EvalEvery == 0;
            if (_store is not null && (due || last))
            {
                report = report with { Checkpoint = SaveCheckpoint() };
                checkpointedAt = _state.Step;
            }

            _metrics?.Write(report);
            onStep?.Invoke(report);
            if (stop)
            {
                _stoppedEarly = true;
                break;
            }
        }

        if (_store is not null && checkpointedAt != _state.Step && _state.Step >= firstStep)
        {
            SaveCheckpoint();
        }

        return new TrainingResult(firstStep, _state.Step, firstLoss, lastLoss, evalLoss, seconds,
            seconds > 0 ? tokens / seconds : 0, _lastCheckpoint)
        {
            Best = _best,
            StoppedEarly = _stoppedEarly,
        };
    }

    /// <summary>Tokens consumed by one optimizer step (at most: batches of ragged data are padded to their longest example only).</summary>
    public long TokensPerStep => (long)_options.BatchSize * _options.Accumulate * _train.SequenceLength;

    /// <summary>
    /// One optimizer step: <see cref="TrainerOptions.Accumulate"/> micro-batches through grad.onnx (gradients summed
    /// on the device), then optimizer.onnx with <c>grad_scale = 1/accumulate</c>.
    /// </summary>
    /// <exception cref="TrainingDivergedException">The loss or gradient norm is NaN or infinite.</exception>
    public StepReport TrainStep()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SynchronizeRanks();
        var watch = Stopwatch.StartNew();
        var step = _state.Step + 1;
        double loss = 0, taskLoss = 0;
        long stepTokens = 0;
        for (var micro = 0; micro < _options.Accumulate; micro++)
        {
            // Every rank draws the same global batch and pads it to the same length; a rank feeds its shard of it.
            var indices = _order.Next(_options.BatchSize);
            var length = _train.BatchLength(indices);
            var local = _parallel?.BeginMicroBatch(micro, indices, micro == 0 ? [] : _resident.Accumulators()) ?? indices;
            var feeder = Feeder(local.Length, length);
            feeder.Fill(_train, local);
            stepTokens += (long)indices.Length * length;
            var binding = _sessions.GradBinding;
            BindCommon(binding, _sessions.GradInputs, feeder);
            _resident.BindAccumulators(binding, first: micro == 0);
            binding.BindOutput(ArtifactContract.Loss, _loss);
            binding.BindOutput(ArtifactContract.TaskLoss, _taskLoss);
            _sessions.Grad.RunWithBinding(_sessions.RunOptions, binding);
            _resident.SwapAccumulators();

            var l = ReadScalar(_loss);
            if (!double.IsFinite(l) && _parallel is null)
            {
                throw new TrainingDivergedException(step, ArtifactContract.Loss, l, _lastCheckpoint);
            }

            // Data parallel: this rank's share of the global batch's mean loss.
            var weight = _parallel?.CurrentWeight ?? 1.0;
            loss += weight * l;
            taskLoss += weight * ReadScalar(_taskLoss);
        }

        if (_parallel is not null)
        {
            (loss, taskLoss) = _parallel.Reduce(_resident.Accumulators(), loss, taskLoss);
            if (!double.IsFinite(loss))
            {
                throw new TrainingDivergedException(step, ArtifactContract.Loss, loss, _lastCheckpoint);
            }
        }

        var lr = _schedule.At(step);
        WriteScalar(_lr, (float)lr);
        WriteScalar(_stepValue, step);
        WriteScalar(_gradScale, (_parallel?.GradScale ?? 1f) / _options.Accumulate);
        var optimizer = _sessions.OptimizerBinding;
        optimizer.BindInput(ArtifactContract.LearningRate, _lr);
        optimizer.BindInput(ArtifactContract.Step, _stepValue);
        optimizer.BindInput(ArtifactContract.GradScale, _gradScale);
        _resident.BindOptimizer(optimizer);
        optimizer.BindOutput(ArtifactContract.GradNorm, _gradNorm);
        _sessions.Optimizer.RunWithBinding(_sessions.RunOptions, optimizer);
        var gradNorm = ReadScalar(_gradNorm);
        if (!double.IsFinite(gradNorm))
        {
            // The new buffers hold the broken update; the old ones are untouched, so do not swap.
            throw new TrainingDivergedException(step, ArtifactContract.GradNorm, gradNorm, _lastCheckpoint);
        }

        _resident.SwapState();
        _state = _state with { Step = step, TokensSeen = _state.TokensSeen + stepTokens };
        var seconds = watch.Elapsed.TotalSeconds;
        return new StepReport(step, _options.Steps, loss / _options.Accumulate, taskLoss / _options.Accumulate, lr,
            gradNorm, stepTokens / Math.Max(seconds, 1e-9), seconds, null, null);
    }

    /// <summary>Mean loss and task loss over the held-out set (at most <see cref="TrainerOptions.EvalBatches"/> batches).</summary>
    public (double Loss, double TaskLoss) Evaluate() => Evaluate(_evalSet ?? throw new InvalidOperationException("the trainer has no eval set"));

    /// <summary>Mean loss and task loss of eval.onnx over <paramref name="data"/>, weighted by batch size.</summary>
    public (double Loss, double TaskLoss) Evaluate(Dataset data)
    {
        var r = EvaluateMetrics(data);
        return (r.Loss, r.TaskLoss);
    }

    /// <summary>
    /// Loss, task loss and the task's metrics over <paramref name="data"/> (the held-out set by default): accuracy
    /// and macro-F1 for classification (from the model's logits output of eval.onnx), perplexity for causal LM.
    /// </summary>
    public EvalResult EvaluateMetrics(Dataset? data = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        data ??= _evalSet ?? throw new InvalidOperationException("the trainer has no eval set");
        var classify = Manifest.Loss.Kind == ArtifactContract.ClassifyLoss && Manifest.ModelOutputs.Count > 0 && Limits.Classes is > 0;
        var session = _sessions.Eval;
        var binding = session.Binding;
        var counts = classify ? new ClassificationCounts() : null;
        double loss = 0, taskLoss = 0;
        var seen = 0;
        var batches = 0;
        for (var start = 0; start < data.Count; start += _options.BatchSize)
        {
            if (_options.EvalBatches > 0 && batches == _options.EvalBatches)
            {
                break;
            }

            var size = Math.Min(_options.BatchSize, data.Count - start);
            int[] indices = [.. Enumerable.Range(start, size)];
            var feeder = Feeder(size, data.BatchLength(indices));
            feeder.Fill(data, indices);
            BindCommon(binding, session.Inputs, feeder);
            binding.BindOutput(ArtifactContract.Loss, _loss);
            binding.BindOutput(ArtifactContract.TaskLoss, _taskLoss);
            if (counts is not null)
            {
                binding.BindOutputToDevice(Manifest.ModelOutputs[0], OrtMemoryInfo.DefaultInstance);
            }

            session.Session.RunWithBinding(_sessions.RunOptions, binding);
            loss += ReadScalar(_loss) * size;
            taskLoss += ReadScalar(_taskLoss) * size;
            if (counts is not null)
            {
                using var outputs = binding.GetOutputValues();
                var logits = outputs[Array.IndexOf(binding.GetOutputNames(), Manifest.ModelOutputs[0])];
                counts.Add(logits.GetTensorDataAsSpan<float>(), (int)Limits.Classes!.Value, [.. indices.Select(i => data.Examples[i].Label ?? Manifest.Loss.IgnoreIndex)], Manifest.Loss.IgnoreIndex);
            }

            seen += size;
            batches++;
        }

        binding.ClearBoundOutputs();
        loss /= seen;
        taskLoss /= seen;
        return new EvalResult(loss, taskLoss, counts?.Accuracy, counts?.MacroF1,
            Manifest.Loss.Kind == ArtifactContract.CausalLmLoss ? Math.Exp(Math.Min(taskLoss, 700)) : null);
    }

    /// <summary>The best evaluation so far by <see cref="TrainerOptions.BestMetric"/>, and where its checkpoint is.</summary>
    public BestEvaluation? Best => _best;

    // Keeps the best evaluation by the chosen metric (its parameters in CHECKPOINT_DIR/best when checkpoints are
    // written); returns true when --patience evaluations in a row did not improve on it.
    private bool TrackBest(EvalResult eval)
    {
        if (_options.BestMetric is not { } metric)
        {
            return false;
        }

        var value = eval.Value(metric) ?? throw new TrainingException($"--best-metric {metric} is not measured for the {Manifest.Loss.Kind} loss");
        var better = _best is null || (EvalResult.HigherIsBetter(metric) ? value > _best.Value : value < _best.Value);
        if (!better)
        {
            _sinceBest++;
            return _options.Patience > 0 && _sinceBest >= _options.Patience;
        }

        _sinceBest = 0;
        string? path = null;
        if (_options.CheckpointDir is { } dir)
        {
            path = Path.Combine(dir, CheckpointStore.BestDirectory);
            using var model = Checkpoint.Build(_resident, State, _schedule,
                [new("best_metric", metric), new("best_value", value.ToString("R", System.Globalization.CultureInfo.InvariantCulture))]);
            Checkpoint.WriteAtomically(model, path);
        }

        _best = new BestEvaluation(metric, value, _state.Step, path is null ? null : Path.Combine(path, Checkpoint.FileName));
        return false;
    }

    /// <summary>Writes a checkpoint of the current step into the checkpoint directory; returns its path.</summary>
    public string SaveCheckpoint()
    {
        if (_store is null)
        {
            throw new InvalidOperationException("no checkpoint directory was configured");
        }

        BeginRun();
        using var model = BuildCheckpoint();
        _lastCheckpoint = _store.Save(model, _state.Step);
        return _lastCheckpoint;
    }

    // A run that did not resume starts a fresh one in the checkpoint directory (which refuses other runs' checkpoints).
    private void BeginRun()
    {
        if (_store is { Begun: false })
        {
            _store.BeginFresh(CurrentRunConfig());
        }
    }

    /// <summary>The current state as a checkpoint model (parameters, moments, trainer state).</summary>
    public Model BuildCheckpoint() => Checkpoint.Build(_resident, State, _schedule);

    /// <summary>The current values of the parameters, as host tensors named like the model's initializers.</summary>
    public IReadOnlyList<Tensor> ParameterTensors() => _resident.ParameterTensors();

    /// <summary>
    /// Writes <paramref name="sourceModel"/> with its parameters replaced by the current values: the fine-tuned
    /// model for inference.
    /// </summary>
    /// <exception cref="TrainingException">The source model is not the one the artifact was compiled from, or unreadable.</exception>
    public void ExportInference(string sourceModel, string outputPath, IEnumerable<KeyValuePair<string, string>>? metadata = null)
    {
        try
        {
            using var model = Model.Load(sourceModel);
            InferenceExport.SetParameters(model, sourceModel, ParameterTensors(), _state.Step, metadata);
            if (Path.GetDirectoryName(Path.GetFullPath(outputPath)) is { } dir)
            {
                Directory.CreateDirectory(dir);
            }

            model.Save(outputPath);
        }
        catch (OnnxModelException e)
        {
            throw new TrainingException(e.Message, e);
        }
    }

    /// <summary>
    /// Peak bytes in use of the grad, optimizer and eval sessions' allocators for the execution device (ORT
    /// <c>MaxInUse</c>), summed; the resident state is allocated from the grad session's allocator, so it is
    /// included. Null when the allocators keep no statistics.
    /// </summary>
    public long? MaxInUseBytes() => _sessions.MaxInUseBytes();

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _store?.Dispose();
        _resident.Dispose();

        foreach (var f in _feeders.Values)
        {
            f.Dispose();
        }

        foreach (var v in new[] { _lr, _stepValue, _gradScale, _loss, _taskLoss, _gradNorm })
        {
            v.Dispose();
        }

        _sessions.Dispose();
        _metrics?.Dispose();
    }

    /// <summary>Data parallel: rank 0's parameters, moments and position to every rank (before the first step, after a load).</summary>
    private void SynchronizeRanks()
    {
        if (_parallel is null || _parallel.Synchronized)
        {
            return;
        }

        var state = _parallel.Synchronize(State, _resident.TrainableState());
        _state = state;
        _order = new DataOrder(_train.Count, state.DataSeed, state.DataEpoch, state.DataPosition);
    }

    private void BindCommon(OrtIoBinding binding, HashSet<string> inputs, BatchFeeder feeder)
    {
        foreach (var (name, value) in feeder.Values)
        {
            if (inputs.Contains(name))
            {
                binding.BindInput(name, value);
            }
        }

        _resident.BindParameters(binding, inputs);
    }

    // Examples per window of the shuffled order that are sorted by length, so that batches hold similar lengths.
    private int BucketWindow => _options.BatchSize * 32;

    /// <summary>The feeder of one batch shape (ragged data has a few: lengths are rounded to multiples of 8).</summary>
    private BatchFeeder Feeder(int batch, int length)
    {
        if (!_feeders.TryGetValue((batch, length), out var feeder))
        {
            feeder = new BatchFeeder(Manifest, batch, length);
            _feeders[(batch, length)] = feeder;
        }

        return feeder;
    }

    // The checkpoint's tensors (and, in the constructor, eval.onnx read for the limits) passed through the managed heap
    // on their way to the resident state: hundreds of MB that are garbage now but stay committed, and resident, in the
    // GC's free regions, which nothing in the step loop reuses. An aggressive collection returns them to the OS (dense
    // 4-layer d768 decoder at S 512: peak RSS 450 MB lower); it costs one full GC of a small live heap.
    private static void ReleaseHostCopies() =>
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);

    private static OrtValue HostScalar() => OrtValue.CreateTensorValueFromMemory(new float[1], []);

    private static double ReadScalar(OrtValue value) => value.GetTensorDataAsSpan<float>()[0];

    private static void WriteScalar(OrtValue value, float x) => value.GetTensorMutableDataAsSpan<float>()[0] = x;

    private ModelLimits ReadLimitsAndCheckOps(out bool needsCustomOps)
    {
        var evalPath = Path.Combine(ArtifactDirectory, Manifest.EvalGraph);
        if (!File.Exists(evalPath))
        {
            throw new TrainingException($"{ArtifactDirectory}: {Manifest.EvalGraph} is missing");
        }

        using var eval = Model.Load(evalPath);
        needsCustomOps = eval.GetOpsetVersion(CustomOpLibrary.Domain) is not null
            || eval.Graph.AllNodes().Any(n => n.Domain == CustomOpLibrary.Domain);
        long? classes = null;
        if (Manifest.Loss.Kind == ArtifactContract.ClassifyLoss && Manifest.ModelOutputs.Count > 0
            && eval.Graph.Outputs.FirstOrDefault(o => o.Name == Manifest.ModelOutputs[0])?.Shape is { Count: 2 } shape)
        {
            classes = shape[1].Value;
        }

        return ModelLimits.Of(eval.Graph, Manifest.Input(DataRole.InputIds)?.Name ?? "input_ids", classes);
    }

    private void CheckDataFitsLoss(Dataset data)
    {
        if (Manifest.DataInputs.FirstOrDefault(d => d.Role == DataRole.Other) is { } other)
        {
            throw new TrainingException($"the model input '{other.Name}' is neither token ids, an attention mask, token types, " +
                "positions nor decoder inputs: the trainer cannot fill it from the data (and will not feed made-up values)");
        }

        if (Manifest.Input(DataRole.Target) is { } target && data.Examples.FirstOrDefault(e => e.Target is null) is { } noTarget)
        {
            throw new DataException($"{data.Source} {noTarget.Where}: the {Manifest.Loss.Kind} loss needs a float target on every example " +
                $"(for '{target.Name}'): read the data with --task regress and a numeric label field");
        }

        if (Manifest.Input(DataRole.Label) is not null && data.Examples.FirstOrDefault(e => e.Label is null) is { } missing)
        {
            throw new DataException($"{data.Source} {missing.Where}: the classification loss needs a 'label' on every example" +
                (data.Format == DataFormat.Text ? " (text files carry no labels: use JSONL)" : ""));
        }
    }

    /// <summary>
    /// The device a trainer asked for <paramref name="wanted"/> runs on: Auto is CUDA when ORT has the CUDA provider
    /// and sptc's CUDA kernels are built, else CPU. Cuda fails (<see cref="TrainingException"/>, one line) when either
    /// is missing; a missing GPU surfaces when the first session starts.
    /// </summary>
    public static ExecutionDevice ResolveDevice(ExecutionDevice wanted) => TrainingSessions.ResolveDevice(wanted);
}
