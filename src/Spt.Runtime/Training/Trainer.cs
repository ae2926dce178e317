using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using Tensor = Spt.Ir.Tensor;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Distributed;
using Spt.Runtime.Memory;

namespace Spt.Runtime.Training;

/// <summary>
/// Fine-tunes a model from a training-artifact directory (see <see cref="TrainingManifest"/>) with three ordinary
/// ORT inference sessions: grad.onnx per micro-batch, optimizer.onnx per step, eval.onnx for held-out loss.
/// <para>
/// Residency: every parameter, AdamW moment and gradient accumulator lives in ORT-allocated tensors (from the grad
/// session's allocator for the execution device) for the whole run. Trainable tensors have two buffers each and
/// ping-pong: the optimizer reads <c>p</c>, <c>m</c>, <c>v</c> from one buffer and writes <c>new.*</c> into the
/// other through <see cref="OrtIoBinding"/>; the grad graph adds each micro-batch's gradient to <c>grad_acc</c>
/// into the other accumulator buffer (the first micro-batch reads a shared zero tensor). Frozen parameters have one
/// buffer. The only per-step host-to-device traffic is the data batch and three scalars (lr, step, grad scale); the
/// loss, task loss and gradient norm come back as scalars.
/// </para>
/// </summary>
public sealed class Trainer : IDisposable
{
    private readonly TrainerOptions _options;
    private readonly InferenceSession _grad;
    private readonly InferenceSession _optimizer;
    private readonly InferenceSession _eval;
    private readonly OrtIoBinding _gradBinding;
    private readonly OrtIoBinding _optimizerBinding;
    private readonly OrtIoBinding _evalBinding;
    private readonly RunOptions _runOptions = new();
    private readonly OrtAllocator _allocator;
    private readonly OrtMemoryInfo _memoryInfo;
    private readonly DeviceCopier? _copier;
    private readonly List<ResidentParameter> _parameters = [];
    private readonly Dictionary<string, OrtValue> _zeros = [];
    private readonly OrtValue _lr, _stepValue, _gradScale, _loss, _taskLoss, _gradNorm;
    private readonly Dictionary<(int Batch, int Length), BatchFeeder> _feeders = [];
    private readonly Dataset _train;
    private readonly Dataset? _evalSet;
    private readonly LrSchedule _schedule;
    private readonly CheckpointStore? _store;
    private readonly MetricsWriter? _metrics;
    private readonly HashSet<string> _gradInputs, _evalInputs;
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
        var labelIgnore = Manifest.Loss.Kind == "causal_lm" ? Manifest.Loss.IgnoreIndex : (long?)null;
        train.Validate(Limits, labelIgnore);
        _evalSet?.Validate(Limits, labelIgnore);
        BatchBudget.Check(options, train, Limits, Manifest);
        CheckDataFitsLoss(train);

        Device = ChooseDevice(options.Device);
        try
        {
            _grad = CreateSession(Manifest.GradGraph, needsCustomOps);
            _optimizer = CreateSession(Manifest.OptimizerGraph, needsCustomOps: false);
            _eval = CreateSession(Manifest.EvalGraph, needsCustomOps);
        }
        catch (OnnxRuntimeException e)
        {
            _grad?.Dispose();
            _optimizer?.Dispose();
            throw new TrainingException($"{ArtifactDirectory}: ONNX Runtime cannot load the training graphs: {e.Message}", e);
        }

        _gradInputs = [.. _grad.InputNames];
        _evalInputs = [.. _eval.InputNames];
        try
        {
            CheckGraphInterfaces();
        }
        catch
        {
            _grad.Dispose();
            _optimizer.Dispose();
            _eval.Dispose();
            throw;
        }

        _memoryInfo = Device == ExecutionDevice.Cuda
            ? new OrtMemoryInfo("Cuda", OrtAllocatorType.DeviceAllocator, 0, OrtMemType.Default)
            : OrtMemoryInfo.DefaultInstance;
        _allocator = new OrtAllocator(_grad, _memoryInfo);
        _copier = Device == ExecutionDevice.Cuda ? new DeviceCopier(SessionOptionsFor(Device, needsCustomOps: false)) : null;

        _gradBinding = _grad.CreateIoBinding();
        _optimizerBinding = _optimizer.CreateIoBinding();
        _evalBinding = _eval.CreateIoBinding();
        _lr = HostScalar();
        _stepValue = HostScalar();
        _gradScale = HostScalar();
        _loss = HostScalar();
        _taskLoss = HostScalar();
        _gradNorm = HostScalar();

        foreach (var spec in Manifest.Parameters)
        {
            _parameters.Add(new ResidentParameter(spec, this));
        }

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

        TrainerState state;
        try
        {
            using var model = Model.Load(stateFile);
            state = Checkpoint.ReadState(model, _options.Seed);
            var tensors = model.Graph.Initializers.Where(v => v.Initializer is not null)
                .ToDictionary(v => v.Name, v => v.Initializer!, StringComparer.Ordinal);
            foreach (var p in _parameters)
            {
                if (!tensors.TryGetValue(p.Spec.Name, out var value))
                {
                    throw new TrainingException($"checkpoint '{stateFile}' has no value for parameter '{p.Spec.Name}'");
                }

                p.Load(value, tensors.GetValueOrDefault(Checkpoint.M(p.Spec.Name)), tensors.GetValueOrDefault(Checkpoint.V(p.Spec.Name)), stateFile);
            }
        }
        catch (Exception e) when (e is OnnxModelException or TrainingException)
        {
            throw new CheckpointUnreadableException($"{stateFile}: {e.Message}", e);
        }

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
            var local = _parallel?.BeginMicroBatch(micro, indices, micro == 0 ? [] : Accumulators()) ?? indices;
            var feeder = Feeder(local.Length, length);
            feeder.Fill(_train, local);
            stepTokens += (long)indices.Length * length;
            BindCommon(_gradBinding, _gradInputs, feeder);
            foreach (var p in _parameters.Where(p => p.Spec.Trainable))
            {
                _gradBinding.BindInput("grad_acc." + p.Spec.Name, micro == 0 ? Zeros(p.Spec) : p.Acc![p.AccCurrent]);
                _gradBinding.BindOutput("grad_acc_out." + p.Spec.Name, p.Acc![1 - p.AccCurrent]);
            }

            _gradBinding.BindOutput("loss", _loss);
            _gradBinding.BindOutput("task_loss", _taskLoss);
            _grad.RunWithBinding(_runOptions, _gradBinding);
            foreach (var p in _parameters.Where(p => p.Spec.Trainable))
            {
                p.AccCurrent = 1 - p.AccCurrent;
            }

            var l = ReadScalar(_loss);
            if (!double.IsFinite(l) && _parallel is null)
            {
                throw new TrainingDivergedException(step, "loss", l, _lastCheckpoint);
            }

            // Data parallel: this rank's share of the global batch's mean loss.
            var weight = _parallel?.CurrentWeight ?? 1.0;
            loss += weight * l;
            taskLoss += weight * ReadScalar(_taskLoss);
        }

        if (_parallel is not null)
        {
            (loss, taskLoss) = _parallel.Reduce(Accumulators(), loss, taskLoss);
            if (!double.IsFinite(loss))
            {
                throw new TrainingDivergedException(step, "loss", loss, _lastCheckpoint);
            }
        }

        var lr = _schedule.At(step);
        WriteScalar(_lr, (float)lr);
        WriteScalar(_stepValue, step);
        WriteScalar(_gradScale, (_parallel?.GradScale ?? 1f) / _options.Accumulate);
        _optimizerBinding.BindInput("lr", _lr);
        _optimizerBinding.BindInput("step", _stepValue);
        _optimizerBinding.BindInput("grad_scale", _gradScale);
        foreach (var p in _parameters.Where(p => p.Spec.Trainable))
        {
            var name = p.Spec.Name;
            _optimizerBinding.BindInput(name, p.Values[p.Current]);
            _optimizerBinding.BindInput("grad." + name, p.Acc![p.AccCurrent]);
            _optimizerBinding.BindInput(Checkpoint.M(name), p.M![p.Current]);
            _optimizerBinding.BindInput(Checkpoint.V(name), p.V![p.Current]);
            _optimizerBinding.BindOutput("new." + name, p.Values[1 - p.Current]);
            _optimizerBinding.BindOutput("new.m." + name, p.M![1 - p.Current]);
            _optimizerBinding.BindOutput("new.v." + name, p.V![1 - p.Current]);
        }

        _optimizerBinding.BindOutput("grad_norm", _gradNorm);
        _optimizer.RunWithBinding(_runOptions, _optimizerBinding);
        var gradNorm = ReadScalar(_gradNorm);
        if (!double.IsFinite(gradNorm))
        {
            // The new buffers hold the broken update; the old ones are untouched, so do not swap.
            throw new TrainingDivergedException(step, "grad_norm", gradNorm, _lastCheckpoint);
        }

        foreach (var p in _parameters.Where(p => p.Spec.Trainable))
        {
            p.Current = 1 - p.Current;
        }

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
        var classify = Manifest.Loss.Kind == "classify" && Manifest.ModelOutputs.Count > 0 && Limits.Classes is > 0;
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
            BindCommon(_evalBinding, _evalInputs, feeder);
            _evalBinding.BindOutput("loss", _loss);
            _evalBinding.BindOutput("task_loss", _taskLoss);
            if (counts is not null)
            {
                _evalBinding.BindOutputToDevice(Manifest.ModelOutputs[0], OrtMemoryInfo.DefaultInstance);
            }

            _eval.RunWithBinding(_runOptions, _evalBinding);
            loss += ReadScalar(_loss) * size;
            taskLoss += ReadScalar(_taskLoss) * size;
            if (counts is not null)
            {
                using var outputs = _evalBinding.GetOutputValues();
                var logits = outputs[Array.IndexOf(_evalBinding.GetOutputNames(), Manifest.ModelOutputs[0])];
                counts.Add(logits.GetTensorDataAsSpan<float>(), (int)Limits.Classes!.Value, [.. indices.Select(i => data.Examples[i].Label ?? Manifest.Loss.IgnoreIndex)], Manifest.Loss.IgnoreIndex);
            }

            seen += size;
            batches++;
        }

        _evalBinding.ClearBoundOutputs();
        loss /= seen;
        taskLoss /= seen;
        return new EvalResult(loss, taskLoss, counts?.Accuracy, counts?.MacroF1,
            Manifest.Loss.Kind == "causal_lm" ? Math.Exp(Math.Min(taskLoss, 700)) : null);
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
            path = Path.Combine(dir, "best");
            Directory.CreateDirectory(path);
            using var model = BuildCheckpoint();
            model.Metadata.Add(new("best_metric", metric));
            model.Metadata.Add(new("best_value", value.ToString("R", System.Globalization.CultureInfo.InvariantCulture)));
            var tmp = Path.Combine(path, Checkpoint.FileName + ".tmp");
            model.Save(tmp);
            File.Move(tmp, Path.Combine(path, Checkpoint.FileName), overwrite: true);
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
    public Model BuildCheckpoint()
    {
        var tensors = new List<Tensor>();
        foreach (var p in _parameters)
        {
            tensors.Add(p.ToTensor(p.Spec.Name, p.Values[p.Current]));
            if (p.Spec.Trainable)
            {
                tensors.Add(p.ToTensor(Checkpoint.M(p.Spec.Name), p.M![p.Current]));
                tensors.Add(p.ToTensor(Checkpoint.V(p.Spec.Name), p.V![p.Current]));
            }
        }

        return Checkpoint.Build(tensors, State,
        [
            new("lr_schedule", _schedule.Kind.ToString().ToLowerInvariant()),
            new("lr_peak", _schedule.BaseLr.ToString("R", System.Globalization.CultureInfo.InvariantCulture)),
            new("lr_warmup", _schedule.WarmupSteps.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            new("lr_total_steps", _schedule.TotalSteps.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ]);
    }

    /// <summary>The current values of the parameters, as host tensors named like the model's initializers.</summary>
    public IReadOnlyList<Tensor> ParameterTensors() => [.. _parameters.Select(p => p.ToTensor(p.Spec.Name, p.Values[p.Current]))];

    /// <summary>
    /// Writes <paramref name="sourceModel"/> with its parameters replaced by the current values: the fine-tuned
    /// model for inference.
    /// </summary>
    public void ExportInference(string sourceModel, string outputPath, IEnumerable<KeyValuePair<string, string>>? metadata = null) =>
        InferenceExport.Write(sourceModel, ParameterTensors(), outputPath, _state.Step, metadata);

    /// <summary>
    /// Peak bytes in use of the grad, optimizer and eval sessions' allocators for the execution device (ORT
    /// <c>MaxInUse</c>), summed; the resident state is allocated from the grad session's allocator, so it is
    /// included. Null when the allocators keep no statistics.
    /// </summary>
    public long? MaxInUseBytes()
    {
        long total = 0;
        var any = false;
        foreach (var session in new[] { _grad, _optimizer, _eval })
        {
            using var allocator = new OrtAllocator(session, _memoryInfo);
            if (AllocatorStats.MaxInUse(allocator) is { } bytes)
            {
                total += bytes;
                any = true;
            }
        }

        return any ? total : null;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _store?.Dispose();
        foreach (var p in _parameters)
        {
            p.Dispose();
        }

        foreach (var z in _zeros.Values)
        {
            z.Dispose();
        }

        foreach (var f in _feeders.Values)
        {
            f.Dispose();
        }

        foreach (var v in new[] { _lr, _stepValue, _gradScale, _loss, _taskLoss, _gradNorm })
        {
            v.Dispose();
        }

        _gradBinding.Dispose();
        _optimizerBinding.Dispose();
        _evalBinding.Dispose();
        _copier?.Dispose();
        _allocator.Dispose();
        _grad.Dispose();
        _optimizer.Dispose();
        _eval.Dispose();
        _runOptions.Dispose();
        _metrics?.Dispose();
    }

    /// <summary>The running gradient sums of the trainable parameters.</summary>
    private List<OrtValue> Accumulators() => [.. _parameters.Where(p => p.Spec.Trainable).Select(p => p.Acc![p.AccCurrent])];

    /// <summary>Data parallel: rank 0's parameters, moments and position to every rank (before the first step, after a load).</summary>
    private void SynchronizeRanks()
    {
        if (_parallel is null || _parallel.Synchronized)
        {
            return;
        }

        var state = _parallel.Synchronize(State, [.. _parameters.Where(p => p.Spec.Trainable)
            .SelectMany(p => new[] { p.Values[p.Current], p.M![p.Current], p.V![p.Current] })]);
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

        foreach (var p in _parameters)
        {
            if (inputs.Contains(p.Spec.Name))
            {
                binding.BindInput(p.Spec.Name, p.Values[p.Current]);
            }
        }
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

    private OrtValue Zeros(ParameterSpec spec)
    {
        var key = $"{spec.ElementType}:{string.Join('x', spec.Shape)}";
        if (!_zeros.TryGetValue(key, out var zeros))
        {
            zeros = Allocate(spec.ElementType, [.. spec.Shape]);
            Upload(zeros, new byte[spec.ElementType.ByteCount(spec.ElementCount)]);
            _zeros[key] = zeros;
        }

        return zeros;
    }

    private OrtValue Allocate(ElementType type, long[] shape) =>
        OrtValue.CreateAllocatedTensorValue(_allocator, (TensorElementType)(int)type, shape);

    private void Upload(OrtValue destination, ReadOnlySpan<byte> data)
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

    private byte[] Download(OrtValue source)
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
        if (Manifest.Loss.Kind == "classify" && Manifest.ModelOutputs.Count > 0
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

    private void CheckGraphInterfaces()
    {
        var known = new HashSet<string>(Manifest.DataInputs.Select(d => d.Name).Concat(Manifest.Parameters.Select(p => p.Name)), StringComparer.Ordinal);
        foreach (var input in _grad.InputNames)
        {
            if (!known.Contains(input) && !(input.StartsWith("grad_acc.", StringComparison.Ordinal) && known.Contains(input["grad_acc.".Length..])))
            {
                throw new TrainingException($"{Manifest.GradGraph} input '{input}' is neither a data input nor a parameter of training.json");
            }
        }

        foreach (var input in _eval.InputNames)
        {
            if (!known.Contains(input))
            {
                throw new TrainingException($"{Manifest.EvalGraph} input '{input}' is neither a data input nor a parameter of training.json");
            }
        }

        foreach (var (session, file, outputs) in new[]
        {
            (_grad, Manifest.GradGraph, new[] { "loss", "task_loss" }.Concat(Manifest.Trainable.Select(p => "grad_acc_out." + p.Name))),
            (_optimizer, Manifest.OptimizerGraph, new[] { "grad_norm" }.Concat(Manifest.Trainable.Select(p => "new." + p.Name))),
            (_eval, Manifest.EvalGraph, new[] { "loss", "task_loss" }),
        })
        {
            var have = session.OutputNames.ToHashSet(StringComparer.Ordinal);
            if (outputs.FirstOrDefault(o => !have.Contains(o)) is { } missing)
            {
                throw new TrainingException($"{file} has no output '{missing}' (the artifact does not follow training.json)");
            }
        }
    }

    private static ExecutionDevice ChooseDevice(ExecutionDevice wanted) => ResolveDevice(wanted);

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

    private SessionOptions SessionOptionsFor(ExecutionDevice device, bool needsCustomOps)
    {
        var options = new SessionOptions { LogSeverityLevel = OrtLogging.SessionLevel };
        if (_options.IntraOpThreads > 0)
        {
            options.IntraOpNumThreads = _options.IntraOpThreads;
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

    private InferenceSession CreateSession(string file, bool needsCustomOps)
    {
        var path = Path.Combine(ArtifactDirectory, file);
        if (!File.Exists(path))
        {
            throw new TrainingException($"{ArtifactDirectory}: {file} is missing");
        }

        using var options = SessionOptionsFor(Device, needsCustomOps);
        return new InferenceSession(path, options);
    }

    /// <summary>One parameter's resident tensors: value (and for trainable ones m, v, grad accumulators), double-buffered.</summary>
    private sealed class ResidentParameter : IDisposable
    {
        private readonly Trainer _owner;

        public ResidentParameter(ParameterSpec spec, Trainer owner)
        {
            Spec = spec;
            _owner = owner;
            long[] shape = [.. spec.Shape];
            var copies = spec.Trainable ? 2 : 1;
            Values = [.. Enumerable.Range(0, copies).Select(_ => owner.Allocate(spec.ElementType, shape))];
            if (spec.Trainable)
            {
                M = [owner.Allocate(spec.ElementType, shape), owner.Allocate(spec.ElementType, shape)];
                V = [owner.Allocate(spec.ElementType, shape), owner.Allocate(spec.ElementType, shape)];
                Acc = [owner.Allocate(spec.ElementType, shape), owner.Allocate(spec.ElementType, shape)];
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

        public void Load(Tensor value, Tensor? m, Tensor? v, string file)
        {
            Check(value, Spec.Name, file);
            Current = 0;
            _owner.Upload(Values[0], value.GetRawData().Span);
            if (!Spec.Trainable)
            {
                return;
            }

            var zeros = new byte[Spec.ElementType.ByteCount(Spec.ElementCount)];
            if (m is not null) Check(m, Checkpoint.M(Spec.Name), file);
            if (v is not null) Check(v, Checkpoint.V(Spec.Name), file);
            _owner.Upload(M![0], m is null ? zeros : m.GetRawData().Span);
            _owner.Upload(V![0], v is null ? zeros : v.GetRawData().Span);
        }

        public Tensor ToTensor(string name, OrtValue value) =>
            Tensor.FromRawData(name, Spec.ElementType, Spec.Shape, _owner.Download(value));

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
