using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Spt.Runtime.Data;
using Spt.Runtime.Training;

namespace Spt.Runtime.Distributed;

/// <summary>
/// What a <see cref="Trainer"/> does differently on one rank of a data-parallel run.
/// <para>
/// Sharding: every rank draws the same global batch of <see cref="TrainerOptions.BatchSize"/> rows from the same seeded
/// <see cref="DataOrder"/> and computes rows <c>[rank·b, (rank+1)·b)</c>, b = batch / ranks. The order, and so a
/// checkpoint's data position, does not depend on the number of ranks.
/// </para>
/// <para>
/// Weights: the task losses are means over counted targets (label ≠ ignore index), so the loss of the global batch is
/// <c>L = Σ_r (c_r / C) · L_r</c> with c_r the targets in rank r's shard and C = Σ c_r; its gradient is the same
/// weighted sum of the ranks' gradients. When every example has the same number of targets (text data, classification)
/// the weight is 1/N: the reduction is a plain sum and 1/N joins the optimizer's <c>grad_scale</c>. Otherwise each
/// rank's accumulator is multiplied by its weight before the sum; over several micro-batches the accumulator holds
/// <c>Σ_k s_k g_k / s_cur</c> and is rescaled by <c>s_cur / s_next</c> before the next one. The PQ codebook term is a
/// mean over all positions; with unequal target counts it is weighted like the task loss (not exact).
/// </para>
/// </summary>
internal sealed class DataParallel
{
    private readonly IGradientReducer _reducer;
    private readonly int[] _targets;
    private readonly bool _equalWeights;
    private double _weight;

    public DataParallel(IGradientReducer reducer, TrainingManifest manifest, Dataset train, TrainerOptions options, ExecutionDevice device)
    {
        _reducer = reducer;
        var ranks = reducer.Size;
        if (options.BatchSize % ranks != 0)
        {
            throw new DistributedException($"--batch {options.BatchSize} is the global batch of all {ranks} ranks: it must be a multiple of {ranks}");
        }

        if (!reducer.Supports(device))
        {
            throw new DistributedException($"the {reducer.GetType().Name} cannot reduce {device.ToString().ToLowerInvariant()} buffers " +
                "(MPI reduces host memory for --device cpu; NCCL device memory for --device cuda)");
        }

        LocalBatch = options.BatchSize / ranks;
        _targets = [.. train.Examples.Select(e => Targets(manifest, e))];
        _equalWeights = _targets.Distinct().Count() <= 1;
        if (!_equalWeights && options.Accumulate > 1 && !reducer.CanScale)
        {
            throw new DistributedException("the examples have different numbers of label positions, and this reducer cannot rescale device " +
                "accumulators between micro-batches: use --accumulate 1 (or data of equal lengths) for data-parallel CUDA training");
        }

        Fingerprint = ComputeFingerprint(manifest, train, options);
    }

    /// <summary>Rows of the global batch this rank computes.</summary>
    public int LocalBatch { get; }

    /// <summary>False until rank 0's state was copied to every rank (and again after a checkpoint was loaded).</summary>
    public bool Synchronized { get; set; }

    /// <summary>A hash of what the ranks must agree on: parameters, data, and the flags that shape the run.</summary>
    public ulong Fingerprint { get; }

    /// <summary>The factor that joins the optimizer's <c>grad_scale</c>: 1/N for a plain sum, 1 when the ranks weighted their gradients.</summary>
    public float GradScale => _equalWeights ? 1f / _reducer.Size : 1f;

    /// <summary>
    /// This rank's rows of the global micro-batch <paramref name="global"/>; when the ranks are weighted, rescales the
    /// running accumulators (<paramref name="accumulators"/>, empty for the first micro-batch) to the new weight.
    /// </summary>
    public int[] BeginMicroBatch(int micro, int[] global, IReadOnlyList<OrtValue> accumulators)
    {
        var local = global.AsSpan(_reducer.Rank * LocalBatch, LocalBatch).ToArray();
        var weight = 1.0 / _reducer.Size;
        if (!_equalWeights)
        {
            long mine = 0, all = 0;
            foreach (var i in global)
            {
                all += _targets[i];
            }

            foreach (var i in local)
            {
                mine += _targets[i];
            }

            weight = all > 0 ? (double)mine / all : 1.0 / _reducer.Size;
            if (micro > 0 && weight > 0)
            {
                _reducer.Scale(accumulators, (float)(_weight / weight));
            }
        }

        if (micro == 0 || weight > 0)
        {
            _weight = weight;
        }

        CurrentWeight = weight;
        return local;
    }

    /// <summary>This rank's weight in the current micro-batch's global loss.</summary>
    public double CurrentWeight { get; private set; }

    /// <summary>
    /// Sums the accumulators over the ranks (weighted when the ranks are) and the weighted losses; returns the losses of
    /// the global batch (summed over micro-batches, as the single-process trainer sums them).
    /// </summary>
    public (double Loss, double TaskLoss) Reduce(IReadOnlyList<OrtValue> accumulators, double weightedLoss, double weightedTaskLoss)
    {
        Span<float> scalars = [(float)weightedLoss, (float)weightedTaskLoss];
        _reducer.AllReduce(accumulators, _equalWeights ? 1f : (float)_weight, scalars);
        return (scalars[0], scalars[1]);
    }

    /// <summary>
    /// Checks that every rank runs the same setup, then copies rank 0's trainable state (<paramref name="replicated"/>)
    /// and trainer position to every rank; returns the position.
    /// </summary>
    public TrainerState Synchronize(TrainerState state, IReadOnlyList<OrtValue> replicated)
    {
        if (!_reducer.AllEqual(Fingerprint))
        {
            throw new DistributedException($"rank {_reducer.Rank} of {_reducer.Size}: the ranks do not train the same thing: the model, the data file " +
                "or the flags (--batch, --seq, --steps, --lr, --seed, ...) differ from rank 0's");
        }

        Span<long> words = [state.Step, unchecked((long)state.DataSeed), state.DataEpoch, state.DataPosition, state.TokensSeen];
        _reducer.Broadcast(replicated, words);
        Synchronized = true;
        return new TrainerState(words[0], unchecked((ulong)words[1]), words[2], checked((int)words[3]), words[4]);
    }

    // Counted targets of one example, as the loss counts them: shifted next-token labels for causal LM, the class label
    // for classification.
    private static int Targets(TrainingManifest manifest, Example example)
    {
        var ignore = manifest.Loss.IgnoreIndex;
        if (manifest.Input(DataRole.Label) is not null)
        {
            return example.Label is { } label && label != ignore ? 1 : 0;
        }

        if (manifest.Input(DataRole.Labels) is null)
        {
            return 1;
        }

        var labels = example.Labels ?? example.InputIds;
        var start = manifest.Loss.Kind == "causal_lm" ? 1 : 0;
        var count = 0;
        for (var t = start; t < labels.Length; t++)
        {
            if (labels[t] != ignore)
            {
                count++;
            }
        }

        return count;
    }

    private static ulong ComputeFingerprint(TrainingManifest manifest, Dataset train, TrainerOptions options)
    {
        var hash = 14695981039346656037UL;
        void Add(long value)
        {
            for (var i = 0; i < 8; i++)
            {
                hash = (hash ^ (byte)(value >> (8 * i))) * 1099511628211UL;
            }
        }

        void AddText(string text)
        {
            foreach (var c in text)
            {
                Add(c);
            }
        }

        foreach (var p in manifest.Parameters)
        {
            AddText(p.Name);
            Add(p.Trainable ? 1 : 0);
            foreach (var d in p.Shape)
            {
                Add(d);
            }
        }

        AddText(string.Create(CultureInfo.InvariantCulture,
            $"{options.Steps} {options.BatchSize} {options.Accumulate} {options.LearningRate:R} {options.WarmupSteps} {options.Schedule} {options.Seed}"));
        Add(train.Count);
        Add(train.SequenceLength);
        foreach (var e in train.Examples)
        {
            foreach (var id in e.InputIds) Add(id);
            foreach (var m in e.AttentionMask) Add(m);
            foreach (var l in e.Labels ?? []) Add(l);
            Add(e.Label ?? long.MinValue);
        }

        return hash;
    }
}
