namespace Spt.Passes.Training;

/// <summary>Shape of a learning-rate schedule.</summary>
public enum LrScheduleKind
{
    /// <summary>The base rate at every step.</summary>
    Constant,
    /// <summary>Linear warm-up from 0 to the base rate, then linear decay to 0 at the last step.</summary>
    Linear,
    /// <summary>Linear warm-up, then half a cosine from the base rate down to <c>MinRatio</c> × base rate.</summary>
    Cosine,
}

/// <summary>
/// A learning-rate schedule, evaluated by the runtime on the host and fed to <c>optimizer.onnx</c> as <c>lr</c>.
/// Steps are 1-based optimizer steps (the value fed as <c>step</c>). Warm-up: step s &lt;= W gets base × s / W (so
/// the first step already moves). After warm-up, with p = (s − W) / max(1, T − W) clamped to [0, 1]:
/// linear gives base × (1 − p), cosine gives base × (m + (1 − m) × (1 + cos(π p)) / 2) with m = <see cref="MinRatio"/>.
/// </summary>
/// <param name="Kind">Schedule shape.</param>
/// <param name="BaseLr">Peak learning rate.</param>
/// <param name="WarmupSteps">Warm-up steps W (0 = none).</param>
/// <param name="TotalSteps">Total optimizer steps T (needed by linear and cosine).</param>
/// <param name="MinRatio">Cosine floor as a fraction of the base rate.</param>
public sealed record LrSchedule(LrScheduleKind Kind, double BaseLr, int WarmupSteps = 0, int TotalSteps = 0, double MinRatio = 0)
{
    /// <summary>A constant rate (with optional warm-up).</summary>
    public static LrSchedule Constant(double lr, int warmupSteps = 0) => new(LrScheduleKind.Constant, lr, warmupSteps);

    /// <summary>Linear warm-up then linear decay to 0 at <paramref name="totalSteps"/>.</summary>
    public static LrSchedule Linear(double lr, int warmupSteps, int totalSteps) => new(LrScheduleKind.Linear, lr, warmupSteps, totalSteps);

    /// <summary>Linear warm-up then cosine decay to <paramref name="minRatio"/> × lr at <paramref name="totalSteps"/>.</summary>
    public static LrSchedule Cosine(double lr, int warmupSteps, int totalSteps, double minRatio = 0) =>
        new(LrScheduleKind.Cosine, lr, warmupSteps, totalSteps, minRatio);

    /// <summary>Parses <c>constant</c>, <c>linear</c> or <c>cosine</c>.</summary>
    public static LrSchedule Parse(string kind, double lr, int warmupSteps, int totalSteps) => kind.ToLowerInvariant() switch
    {
        "constant" => Constant(lr, warmupSteps),
        "linear" => Linear(lr, warmupSteps, totalSteps),
        "cosine" => Cosine(lr, warmupSteps, totalSteps),
        _ => throw new ArgumentException($"unknown LR schedule '{kind}' (expected constant, linear or cosine)", nameof(kind)),
    };

    /// <summary>The learning rate of 1-based optimizer step <paramref name="step"/>.</summary>
    public double At(long step)
    {
        if (step < 1)
            throw new ArgumentOutOfRangeException(nameof(step), "steps are 1-based");
        if (WarmupSteps > 0 && step <= WarmupSteps)
            return BaseLr * step / WarmupSteps;
        if (Kind == LrScheduleKind.Constant)
            return BaseLr;
        double p = Math.Clamp((double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        return Kind == LrScheduleKind.Linear
            ? BaseLr * (1 - p)
            : BaseLr * (MinRatio + (1 - MinRatio) * 0.5 * (1 + Math.Cos(Math.PI * p)));
    }
}
