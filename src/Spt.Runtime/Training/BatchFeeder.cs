using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spt.Ir;
using Spt.Runtime.Data;

namespace Spt.Runtime.Training;

/// <summary>
/// Host tensors for the data inputs of one batch shape ([batch, sequence], or [batch] for class labels), allocated
/// once and refilled per batch: the only per-step uploads of a training run.
/// </summary>
internal sealed class BatchFeeder : IDisposable
{
    private readonly List<(DataInputSpec Spec, OrtValue Value)> _inputs = [];

    private readonly bool _shiftLabels;
    private readonly long _ignoreIndex;

    public BatchFeeder(TrainingManifest manifest, int batch, int sequence)
    {
        _shiftLabels = manifest.Loss.Kind == "causal_lm";
        _ignoreIndex = manifest.Loss.IgnoreIndex;
        Batch = batch;
        Sequence = sequence;
        foreach (var spec in manifest.DataInputs)
        {
            long[] shape = spec.Role == DataRole.Label ? [batch] : [batch, sequence];
            if (spec.Shape.Count != shape.Length)
            {
                throw new TrainingException($"data input '{spec.Name}' has rank {spec.Shape.Count} in training.json; " +
                    $"its role {spec.Role} is fed as rank {shape.Length}");
            }

            if (spec.ElementType is not (ElementType.Int64 or ElementType.Int32 or ElementType.Float or ElementType.Bool))
            {
                throw new TrainingException($"data input '{spec.Name}' has element type {spec.ElementType.ShortName()}; " +
                    "token data is fed as int64, int32, float or bool");
            }

            _inputs.Add((spec, OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)(int)spec.ElementType, shape)));
        }
    }

    public int Batch { get; }

    public int Sequence { get; }

    public IEnumerable<(string Name, OrtValue Value)> Values => _inputs.Select(i => (i.Spec.Name, i.Value));

    /// <summary>Writes examples <paramref name="indices"/> of <paramref name="data"/> into the tensors.</summary>
    public void Fill(Dataset data, int[] indices)
    {
        if (indices.Length != Batch || data.SequenceLength != Sequence)
        {
            throw new InvalidOperationException($"feeder for [{Batch}, {Sequence}] got {indices.Length} examples of length {data.SequenceLength}");
        }

        foreach (var (spec, value) in _inputs)
        {
            for (var b = 0; b < Batch; b++)
            {
                var example = data.Examples[indices[b]];
                switch (spec.Role)
                {
                    case DataRole.InputIds:
                        Write(value, spec.ElementType, b * Sequence, example.InputIds);
                        break;
                    case DataRole.AttentionMask:
                        Write(value, spec.ElementType, b * Sequence, example.AttentionMask);
                        break;
                    case DataRole.Labels:
                        Write(value, spec.ElementType, b * Sequence, _shiftLabels ? Shifted(example.Labels ?? example.InputIds) : example.Labels ?? example.InputIds);
                        break;
                    case DataRole.Other:
                        Write(value, spec.ElementType, b * Sequence, spec.Name.Contains("position", StringComparison.OrdinalIgnoreCase)
                            ? [.. Enumerable.Range(0, Sequence).Select(i => (long)i)]
                            : new long[Sequence]);
                        break;
                    case DataRole.Label:
                        Write(value, spec.ElementType, b, [example.Label ?? throw new DataException($"{data.Source} {example.Where}: no 'label'")]);
                        break;
                    default:
                        throw new TrainingException($"data input '{spec.Name}' with role {spec.Role} cannot be fed from token data");
                }
            }
        }
    }

    /// <summary>Next-token targets: labels[t + 1] at position t, the ignore index at the last position.</summary>
    private long[] Shifted(long[] labels)
    {
        var shifted = new long[labels.Length];
        Array.Copy(labels, 1, shifted, 0, labels.Length - 1);
        shifted[^1] = _ignoreIndex;
        return shifted;
    }

    public void Dispose()
    {
        foreach (var (_, value) in _inputs)
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
