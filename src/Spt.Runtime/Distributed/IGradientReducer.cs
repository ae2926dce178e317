using Microsoft.ML.OnnxRuntime;
using Spt.Runtime.Training;

namespace Spt.Runtime.Distributed;

/// <summary>
/// The communication of data-parallel training: every rank runs the same <see cref="Trainer"/> on its shard of each
/// global batch, and the reducer sums the ranks' gradient accumulators before the (identical) optimizer step. Given to
/// the trainer through <see cref="TrainerOptions.Reducer"/>; every rank must make the same calls in the same order
/// (they are collectives).
/// </summary>
public interface IGradientReducer
{
    /// <summary>This rank (0 writes checkpoints, metrics and exports).</summary>
    int Rank { get; }

    /// <summary>Number of ranks.</summary>
    int Size { get; }

    /// <summary>Whether the buffers of <paramref name="device"/> (host memory for CPU, device memory for CUDA) can be reduced.</summary>
    bool Supports(ExecutionDevice device);

    /// <summary>Whether <see cref="Scale"/> is available (it needs a kernel for device memory).</summary>
    bool CanScale { get; }

    /// <summary>
    /// In place, over all ranks: <c>buffer ← Σ_r weight_r · buffer_r</c> for every float tensor of
    /// <paramref name="buffers"/>, and <c>scalars ← Σ_r scalars_r</c> for the host values of <paramref name="scalars"/>.
    /// Every rank ends with bitwise the same sums.
    /// </summary>
    void AllReduce(IReadOnlyList<OrtValue> buffers, float weight, Span<float> scalars);

    /// <summary>Multiplies this rank's <paramref name="buffers"/> by <paramref name="factor"/> (no communication).</summary>
    void Scale(IReadOnlyList<OrtValue> buffers, float factor);

    /// <summary>Copies rank 0's <paramref name="buffers"/> and <paramref name="words"/> into every rank's.</summary>
    void Broadcast(IReadOnlyList<OrtValue> buffers, Span<long> words);

    /// <summary>Whether every rank passed the same <paramref name="value"/> (every rank gets the same answer).</summary>
    bool AllEqual(ulong value);
}
