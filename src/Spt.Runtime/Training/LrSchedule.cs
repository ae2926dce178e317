namespace Spt.Runtime.Training;

/// <summary>The shape of the learning-rate curve after warm-up.</summary>
public enum LrScheduleKind
{
    /// <summary>The peak rate after warm-up, for good.</summary>
    Constant,

    /// <summary>Linear decay from the peak to 0 at the last step.</summary>
    Linear,

    /// <summary>Half-cosine decay from the peak to 0 at the last step.</summary>
    Cosine,
}

/// <summary>
/// Learning rate per optimizer step: linear warm-up from <c>peak/warmup</c> to <c>peak</c> over the first
/// <see cref="WarmupSteps"/> steps, then the peak, or linear or cosine decay towards 0 at step
/// <see cref="TotalSteps"/> + 1 (the shapes of Hugging Face's <c>get_{constant,linear,cosine}_schedule_with_warmup</c>,
/// shifted so that neither the first nor the last step has a zero rate). A pure function of the step, so resuming
/// needs only the step.
/// </summary>
public sealed record LrSchedule(LrScheduleKind Kind, double PeakLr, long WarmupSteps, long TotalSteps)
{
    /// <summary>The learning rate of optimizer step <paramref name="step"/> (1-based).</summary>
    public double At(long step)
    {
        if (step < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(step), step, "steps are 1-based");
        }

        if (WarmupSteps > 0 && step <= WarmupSteps)
        {
            return PeakLr * step / WarmupSteps;
        }

        var decaySteps = Math.Max(1, TotalSteps - WarmupSteps);
        var progress = Math.Clamp((double)(step - WarmupSteps - 1) / decaySteps, 0, 1);
        return Kind switch
        {
            LrScheduleKind.Constant => PeakLr,
            LrScheduleKind.Linear => PeakLr * (1 - progress),
            LrScheduleKind.Cosine => PeakLr * 0.5 * (1 + Math.Cos(Math.PI * progress)),
            _ => throw new ArgumentOutOfRangeException(nameof(Kind)),
        };
    }

    /// <summary>Parses constant | linear | cosine.</summary>
    public static LrScheduleKind ParseKind(string name) => name.ToLowerInvariant() switch
    {
        "constant" => LrScheduleKind.Constant,
        "linear" => LrScheduleKind.Linear,
        "cosine" => LrScheduleKind.Cosine,
        _ => throw new TrainingException($"unknown LR schedule '{name}' (expected constant, linear or cosine)"),
    };
}
