using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spt.Ir;
using Spt.Runtime.Data;

namespace Spt.Runtime.Training;

/// <summary>
/// Host tensors for the data inputs of one batch shape ([batch, sequence]; [batch] for class labels; [batch, ...] for
/// regression targets), allocated once and refilled per batch: the only per-step uploads of a training run. Examples
/// shorter than the batch's sequence are padded: the pad id, attention 0, labels the ignore index, token type 0.
/// </summary>
internal sealed class BatchFeeder : IDisposable
{
    private readonly List<(DataInputSpec Spec, OrtValue Value, int Width)> _inputs = [];

    private readonly bool _shiftLabels;
    private readonly long _ignoreIndex;
    private readonly long _decoderStart;

    public BatchFeeder(TrainingManifest manifest, int batch, int sequence)
    {
        // A decoder input carries the shift (teacher forcing: start, labels[:-1]), so its labels are scored as they are.
        _shiftLabels = manifest.Loss.Kind == "causal_lm" && !manifest.DataInputs.Any(d => d.Role == DataRole.DecoderInputIds);
        _ignoreIndex = manifest.Loss.IgnoreIndex;
        _decoderStart = manifest.Loss.DecoderStartId;
        Batch = batch;
        Sequence = sequence;
        foreach (var spec in manifest.DataInputs)
        {
            long[] shape = spec.Role switch
            {
                DataRole.Label => [batch],
                DataRole.Target => [batch, .. spec.Shape.Skip(1).Select(d => d.Value ?? throw new TrainingException(
                    $"regression target '{spec.Name}' has a symbolic dimension '{d.Param}' after the batch; targets are fed as [batch, fixed]"))],
                _ => [batch, sequence],
            };
            if (spec.Shape.Count != shape.Length)
            {
                throw new TrainingException($"data input '{spec.Name}' has rank {spec.Shape.Count} in training.json; " +
                    $"its role {spec.Role} is fed as rank {shape.Length}");
            }

            if (spec.Role is not (DataRole.Label or DataRole.Target) && spec.Shape[1].Value is { } fixedLength && fixedLength != sequence)
            {
                throw new TrainingException($"data input '{spec.Name}' has a fixed sequence length {fixedLength}, " +
                    $"the batch has {sequence} tokens: use --seq {fixedLength} (and data padded to it)");
            }

            if (spec.ElementType is not (ElementType.Int64 or ElementType.Int32 or ElementType.Float or ElementType.Bool))
            {
                throw new TrainingException($"data input '{spec.Name}' has element type {spec.ElementType.ShortName()}; " +
                    "token data is fed as int64, int32, float or bool");
            }

            var width = (int)shape.Skip(1).Aggregate(1L, (a, d) => a * d);
            _inputs.Add((spec, OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)(int)spec.ElementType, shape), width));
        }
    }

    public int Batch { get; }

    public int Sequence { get; }

    public IEnumerable<(string Name, OrtValue Value)> Values => _inputs.Select(i => (i.Spec.Name, i.Value));

    /// <summary>Writes examples <paramref name="indices"/> of <paramref name="data"/> into the tensors, padded to <see cref="Sequence"/>.</summary>
    public void Fill(Dataset data, int[] indices)
    {
        if (indices.Length != Batch)
        {
            throw new InvalidOperationException($"feeder for [{Batch}, {Sequence}] got {indices.Length} examples");
        }

        var positions = Enumerable.Range(0, Sequence).Select(i => (long)i).ToArray();
        for (var b = 0; b < Batch; b++)
        {
            var example = data.Examples[indices[b]];
            var length = example.InputIds.Length;
            if (length > Sequence)
            {
                throw new InvalidOperationException($"example of {length} tokens in a batch of {Sequence}");
            }

            var labels = Pad(example.Labels ?? example.InputIds, _ignoreIndex);
            if (example.Labels is null)
            {
                // Labels made from the ids: padding and masked positions carry no loss.
                for (var t = 0; t < length; t++)
                {
                    if (example.AttentionMask[t] == 0) labels[t] = _ignoreIndex;
                }
            }

            foreach (var (spec, value, width) in _inputs)
            {
                switch (spec.Role)
                {
                    case DataRole.InputIds:
                        Write(value, spec.ElementType, b * Sequence, Pad(example.InputIds, data.PadId));
                        break;
                    case DataRole.AttentionMask:
                        Write(value, spec.ElementType, b * Sequence, Pad(example.AttentionMask, 0));
                        break;
                    case DataRole.TokenTypeIds:
                        Write(value, spec.ElementType, b * Sequence, Pad(example.TokenTypeIds ?? new long[length], 0));
                        break;
                    case DataRole.PositionIds:
                        Write(value, spec.ElementType, b * Sequence, positions);
                        break;
                    case DataRole.Labels:
                        Write(value, spec.ElementType, b * Sequence, _shiftLabels ? Shifted(labels) : labels);
                        break;
                    case DataRole.DecoderInputIds:
                        Write(value, spec.ElementType, b * Sequence, ShiftedRight(labels, data.PadId));
                        break;
                    case DataRole.Label:
                        Write(value, spec.ElementType, b, [example.Label ?? throw new DataException($"{data.Source} {example.Where}: no 'label'")]);
                        break;
                    case DataRole.Target:
                        var target = example.Target ?? throw new DataException($"{data.Source} {example.Where}: no regression target");
                        if (target.Length != width)
                        {
                            throw new DataException($"{data.Source} {example.Where}: {target.Length} target values, the model's output '{spec.Name}' takes {width} per example");
                        }

                        target.CopyTo(value.GetTensorMutableDataAsSpan<float>()[(b * width)..]);
                        break;
                    default:
                        throw new TrainingException($"data input '{spec.Name}' with role {spec.Role} cannot be fed from token data");
                }
            }
        }
    }

    private long[] Pad(long[] row, long fill)
    {
        if (row.Length == Sequence)
        {
            return row;
        }

        var padded = new long[Sequence];
        row.CopyTo(padded, 0);
        Array.Fill(padded, fill, row.Length, Sequence - row.Length);
        return padded;
    }

    /// <summary>Next-token targets: labels[t + 1] at position t, the ignore index at the last position.</summary>
    private long[] Shifted(long[] labels)
    {
        var shifted = new long[labels.Length];
        Array.Copy(labels, 1, shifted, 0, labels.Length - 1);
        shifted[^1] = _ignoreIndex;
        return shifted;
    }

    /// <summary>
    /// Teacher forcing for a decoder: the decoder start id, then labels[0..S-2]; ignored label positions become the
    /// pad id (transformers' <c>shift_tokens_right</c>).
    /// </summary>
    private long[] ShiftedRight(long[] labels, long pad)
    {
        var shifted = new long[labels.Length];
        shifted[0] = _decoderStart;
        for (var t = 1; t < labels.Length; t++)
        {
            shifted[t] = labels[t - 1] == _ignoreIndex ? pad : labels[t - 1];
        }

        return shifted;
    }

    public void Dispose()
    {
        foreach (var (_, value, _) in _inputs)
        {
            value.Dispose();
        }
    }

    private static void Write(OrtValue value, ElementType type, int offset, long[] source)
    {
        switch (type)
        {
            case ElementType.Int64:
                source.CopyTo(value.GetTensorMutableDataAsSpan<long>()[offset..]);
                break;
            case ElementType.Int32:
                var i32 = value.GetTensorMutableDataAsSpan<int>();
                for (var i = 0; i < source.Length; i++) i32[offset + i] = checked((int)source[i]);
                break;
            case ElementType.Float:
                var f32 = value.GetTensorMutableDataAsSpan<float>();
                for (var i = 0; i < source.Length; i++) f32[offset + i] = source[i];
                break;
            case ElementType.Bool:
                var b8 = value.GetTensorMutableDataAsSpan<bool>();
                for (var i = 0; i < source.Length; i++) b8[offset + i] = source[i] != 0;
                break;
            default:
                throw new InvalidOperationException($"unsupported data element type {type}");
        }
    }
}
