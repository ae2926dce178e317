using Spt.Passes.Training;

namespace Spt.Runtime.Training;

/// <summary>Which ORT execution provider runs the training graphs.</summary>
public enum ExecutionDevice
{
    /// <summary>CUDA when ORT reports the CUDA provider, else CPU.</summary>
    Auto,

    /// <summary>The CPU provider.</summary>
    Cpu,

    /// <summary>The CUDA provider (an error when ORT does not report it).</summary>
    Cuda,
}

/// <summary>How a <see cref="Trainer"/> runs.</summary>
public sealed record TrainerOptions
{
    /// <summary>Optimizer steps to reach (a resumed run continues up to this step).</summary>
    public long Steps { get; init; } = 100;

    /// <summary>Sequences per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Micro-batches whose gradients are summed (on the device) before one optimizer step.</summary>
    public int Accumulate { get; init; } = 1;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>Linear warm-up steps.</summary>
    public long WarmupSteps { get; init; }

    /// <summary>Shape of the learning-rate curve (<see cref="LrSchedule"/> of the training compiler).</summary>
    public LrScheduleKind Schedule { get; init; } = LrScheduleKind.Constant;

    /// <summary>Evaluate on the held-out set every this many steps (0: only at the end, when there is an eval set).</summary>
    public long EvalEvery { get; init; }

    /// <summary>At most this many eval batches per evaluation (0: the whole eval set).</summary>
    public int EvalBatches { get; init; }

    /// <summary>Where checkpoints go (null: none are written).</summary>
    public string? CheckpointDir { get; init; }

    /// <summary>Checkpoint every this many steps (0: at every evaluation and at the end).</summary>
    public long CheckpointEvery { get; init; }

    /// <summary>How many checkpoints are kept.</summary>
    public int Keep { get; init; } = 3;

    /// <summary>Seed of the data order.</summary>
    public ulong Seed { get; init; }

    /// <summary>Metrics JSONL file (null: none).</summary>
    public string? MetricsPath { get; init; }

    /// <summary>Execution provider.</summary>
    public ExecutionDevice Device { get; init; } = ExecutionDevice.Auto;

    /// <summary>ORT intra-op threads (0: ORT's default).</summary>
    public int IntraOpThreads { get; init; }

    /// <summary>
    /// Turn on ONNX Runtime's per-node profiler: each session writes its Chrome-trace JSON to a file whose name starts
    /// with this path and the session's role (<c>-grad</c>, <c>-optimizer</c>, <c>-eval</c>) when the trainer is
    /// disposed. Null: no profiling.
    /// </summary>
    public string? ProfilePrefix { get; init; }

    /// <summary>Keep the best evaluation by this metric (<see cref="EvalResult.MetricNames"/>); null: none.</summary>
    public string? BestMetric { get; init; }

    /// <summary>Stop after this many evaluations in a row without a better <see cref="BestMetric"/> (0: never).</summary>
    public int Patience { get; init; }

    /// <summary>
    /// Data parallelism: the communicator that sums the ranks' gradients (null: one process). <see cref="BatchSize"/> is
    /// then the global batch, split evenly over the ranks.
    /// </summary>
    public Distributed.IGradientReducer? Reducer { get; init; }

    /// <summary>Checks the values; throws <see cref="TrainingException"/> naming the flag at fault.</summary>
    public void Validate()
    {
        if (Steps < 1) throw new TrainingException($"--steps must be at least 1 (got {Steps})");
        if (BatchSize < 1) throw new TrainingException($"--batch must be at least 1 (got {BatchSize})");
        if (Accumulate < 1) throw new TrainingException($"--accumulate must be at least 1 (got {Accumulate})");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) throw new TrainingException($"--lr must be a positive number (got {LearningRate})");
        if (WarmupSteps < 0) throw new TrainingException($"--warmup must not be negative (got {WarmupSteps})");
        if (EvalEvery < 0) throw new TrainingException($"--eval-every must not be negative (got {EvalEvery})");
        if (Steps > int.MaxValue) throw new TrainingException($"--steps must be at most {int.MaxValue} (got {Steps})");
        if (WarmupSteps > Steps) throw new TrainingException($"--warmup ({WarmupSteps}) must not exceed --steps ({Steps})");
        if (Keep < 1) throw new TrainingException($"--keep must be at least 1 (got {Keep})");
        if (BestMetric is { } m && !EvalResult.MetricNames.Contains(m)) throw new TrainingException($"--best-metric must be one of {string.Join(", ", EvalResult.MetricNames)} (got '{m}')");
        if (Patience < 0) throw new TrainingException($"--patience must not be negative (got {Patience})");
        if (Patience > 0 && BestMetric is null) throw new TrainingException("--patience needs --best-metric (the metric that must improve)");
    }
}

/// <summary>What one optimizer step did.</summary>
/// <param name="Step">The step just taken (1-based).</param>
/// <param name="TotalSteps">The run's last step.</param>
/// <param name="Loss">Total loss (task + weighted PQ term), mean over the micro-batches.</param>
/// <param name="TaskLoss">Task loss, mean over the micro-batches.</param>
/// <param name="LearningRate">The learning rate used.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="TokensPerSecond">Training tokens per second over this step.</param>
/// <param name="Seconds">Wall time of this step.</param>
/// <param name="EvalLoss">Held-out task loss, when this step evaluated.</param>
/// <param name="Checkpoint">The checkpoint written after this step, if any.</param>
public sealed record StepReport(
    long Step, long TotalSteps, double Loss, double TaskLoss, double LearningRate, double GradNorm,
    double TokensPerSecond, double Seconds, double? EvalLoss, string? Checkpoint)
{
    /// <summary>The whole evaluation (metrics included), when this step evaluated.</summary>
    public EvalResult? Eval { get; init; }
}

/// <summary>The best evaluation of a run by its chosen metric.</summary>
/// <param name="Metric">The metric.</param>
/// <param name="Value">Its best value.</param>
/// <param name="Step">The step evaluated.</param>
/// <param name="StateFile">The checkpoint of that step (CHECKPOINT_DIR/best/state.onnx), or null without a checkpoint directory.</param>
public sealed record BestEvaluation(string Metric, double Value, long Step, string? StateFile);

/// <summary>The outcome of <see cref="Trainer.Run"/>.</summary>
/// <param name="FirstStep">The first step this run took (greater than 1 after a resume).</param>
/// <param name="LastStep">The last step taken.</param>
/// <param name="FirstLoss">Loss of the first step of this run.</param>
/// <param name="FinalLoss">Loss of the last step.</param>
/// <param name="FinalEvalLoss">Held-out task loss at the end, or null without an eval set.</param>
/// <param name="Seconds">Wall time of the steps (evaluations and checkpoints excluded).</param>
/// <param name="TokensPerSecond">Mean training throughput.</param>
/// <param name="LastCheckpoint">The newest checkpoint, if any.</param>
public sealed record TrainingResult(
    long FirstStep, long LastStep, double FirstLoss, double FinalLoss, double? FinalEvalLoss, double Seconds,
    double TokensPerSecond, string? LastCheckpoint)
{
    /// <summary>The best evaluation by <see cref="TrainerOptions.BestMetric"/>, or null.</summary>
    public BestEvaluation? Best { get; init; }

    /// <summary>Whether <see cref="TrainerOptions.Patience"/> stopped the run before its last step.</summary>
    public bool StoppedEarly { get; init; }
}
