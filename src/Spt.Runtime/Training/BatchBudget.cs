using Spt.Runtime.Data;

namespace Spt.Runtime.Training;

/// <summary>
/// Refuses a batch that cannot work before anything is allocated: larger than the training set, or needing more
/// memory than the machine has by a lower-bound estimate (the resident training state plus the logits of one
/// micro-batch and their gradient), with the numbers in the message.
/// </summary>
internal static class BatchBudget
{
    // Resident copies of a trainable parameter: value, m and v, each double-buffered, plus two gradient accumulators.
    private const int TrainableCopies = 8;

    public static void Check(TrainerOptions options, Dataset train, ModelLimits limits, TrainingManifest manifest)
    {
        if (options.BatchSize > train.Count)
        {
            throw new TrainingException($"--batch {options.BatchSize} is larger than the {train.Count} training sequences of {train.Source}; give --batch {train.Count} or less");
        }

        var needed = Estimate(options.BatchSize, train.SequenceLength, limits.Vocabulary, manifest);
        var available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (available > 0 && needed > available)
        {
            throw new TrainingException(FormattableString.Invariant(
                $"--batch {options.BatchSize} x --seq {train.SequenceLength} needs at least {Gib(needed)} (training state and one micro-batch's logits and their gradient), but the machine has {Gib(available)}; lower --batch (use --accumulate for a larger effective batch)"));
        }
    }

    /// <summary>A lower bound of the bytes one training step holds (float32 state and logits).</summary>
    public static long Estimate(int batch, int sequence, long? vocabulary, TrainingManifest manifest)
    {
        double state = manifest.Parameters.Sum(p => (double)p.ElementCount * (p.Trainable ? TrainableCopies : 1)) * sizeof(float);
        // [B, S, V] logits and d logits.
        double logits = 2.0 * batch * sequence * (vocabulary ?? 0) * sizeof(float);
        return (long)Math.Min(long.MaxValue, state + logits);
    }

    private static string Gib(long bytes) => FormattableString.Invariant($"{bytes / (double)(1L << 30):0.0} GiB");
}
