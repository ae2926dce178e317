using Spt.Runtime.Training;

namespace Spt.Runtime.Distributed;

/// <summary>
/// A data-parallel run cannot go on: MPI or NCCL reported an error, a peer rank stopped or timed out, or the ranks
/// disagree about the model, the data or the flags. The message is one line and names the rank.
/// </summary>
public sealed class DistributedException : TrainingException
{
    /// <summary>Creates the exception.</summary>
    public DistributedException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
