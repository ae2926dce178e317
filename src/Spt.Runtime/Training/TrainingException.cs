namespace Spt.Runtime.Training;

/// <summary>
/// A user, data or artifact error in training (bad data file, token ids beyond the vocabulary, a malformed
/// artifact directory, ...). The message is one line that names the file, input or parameter at fault.
/// </summary>
public class TrainingException : Exception
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public TrainingException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a one-line message and its cause.</summary>
    public TrainingException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// The loss (or the gradient norm) became NaN or infinite. The run stopped before writing a checkpoint for
/// <see cref="Step"/>; the last good checkpoint on disk is untouched.
/// </summary>
public sealed class TrainingDivergedException : TrainingException
{
    /// <summary>Creates the exception for optimizer step <paramref name="step"/> (1-based).</summary>
    public TrainingDivergedException(long step, string quantity, double value, string? lastCheckpoint)
        : base($"{quantity} is {FormatValue(value)} at step {step}; training stopped" +
               (lastCheckpoint is null ? " (no checkpoint was written before it)" : $"; the last good checkpoint is {lastCheckpoint}"))
    {
        Step = step;
        Quantity = quantity;
        Value = value;
        LastCheckpoint = lastCheckpoint;
    }

    /// <summary>The optimizer step (1-based) whose loss or gradient norm was not finite.</summary>
    public long Step { get; }

    /// <summary>"loss" or "grad_norm".</summary>
    public string Quantity { get; }

    /// <summary>The non-finite value.</summary>
    public double Value { get; }

    /// <summary>Directory of the last checkpoint written before the failure, or null.</summary>
    public string? LastCheckpoint { get; }

    private static string FormatValue(double v) => double.IsNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
}
