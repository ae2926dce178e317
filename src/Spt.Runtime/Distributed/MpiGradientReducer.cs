using System.Numerics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spt.Runtime.Training;

namespace Spt.Runtime.Distributed;

/// <summary>
/// Sums host-memory gradient accumulators over MPI, in place. Tensors of at least <see cref="BucketBytes"/> are reduced
/// directly in their ORT buffers; smaller ones are packed, in order, into staging buckets of about
/// <see cref="BucketBytes"/> (fewer, larger messages), together with the host scalars (the weighted losses) in the last
/// bucket. Each bucket's all-reduce is started as soon as it is packed, so packing overlaps the transfers already in
/// flight. (The whole backward pass is one ORT run, so every accumulator is ready at the same moment: there is no
/// earlier point at which a bucket could start.)
/// </summary>
public sealed class MpiGradientReducer : IGradientReducer
{
    private readonly MpiWorld _world;
    private readonly List<float[]> _staging = [];

    /// <summary>Reduces over <paramref name="world"/> with buckets of <paramref name="bucketBytes"/>.</summary>
    public MpiGradientReducer(MpiWorld world, int bucketBytes = 4 << 20)
    {
        ArgumentNullException.ThrowIfNull(world);
        ArgumentOutOfRangeException.ThrowIfLessThan(bucketBytes, 1024);
        _world = world;
        BucketBytes = bucketBytes;
    }

    /// <summary>Bucket size in bytes.</summary>
    public int BucketBytes { get; }

    /// <inheritdoc />
    public int Rank => _world.Rank;

    /// <inheritdoc />
    public int Size => _world.Size;

    /// <inheritdoc />
    public bool CanScale => true;

    /// <inheritdoc />
    public bool Supports(ExecutionDevice device) => device == ExecutionDevice.Cpu;

    /// <inheritdoc />
    public void AllReduce(IReadOnlyList<OrtValue> buffers, float weight, Span<float> scalars)
    {
        if (weight != 1f)
        {
            Scale(buffers, weight);
        }

        var bucketFloats = BucketBytes / sizeof(float);
        var requests = new List<nint>();
        var packed = new List<(OrtValue Buffer, int Bucket, int Offset)>();
        var bucket = -1;
        var used = bucketFloats;
        foreach (var buffer in buffers)
        {
            var data = Floats(buffer);
            if (data.Length >= bucketFloats)
            {
                requests.AddRange(_world.StartAllReduceSum(MpiWorld.AddressOf(MemoryMarshal.AsBytes(data)), data.Length));
                continue;
            }

            if (used + data.Length > bucketFloats)
            {
                Flush(bucket, used, requests);
                bucket++;
                used = 0;
            }

            data.CopyTo(Staging(bucket, bucketFloats).AsSpan(used));
            packed.Add((buffer, bucket, used));
            used += data.Length;
        }

        if (bucket < 0 || used + scalars.Length > bucketFloats)
        {
            Flush(bucket, used, requests);
            bucket++;
            used = 0;
        }

        var scalarOffset = used;
        scalars.CopyTo(Staging(bucket, bucketFloats).AsSpan(used));
        Flush(bucket, used + scalars.Length, requests);
        _world.Wait([.. requests], "MPI_Iallreduce");

        foreach (var (buffer, b, offset) in packed)
        {
            var data = Floats(buffer);
            _staging[b].AsSpan(offset, data.Length).CopyTo(data);
        }

        _staging[bucket].AsSpan(scalarOffset, scalars.Length).CopyTo(scalars);
    }

    /// <inheritdoc />
    public void Scale(IReadOnlyList<OrtValue> buffers, float factor)
    {
        foreach (var buffer in buffers)
        {
            var data = Floats(buffer);
            var vectors = MemoryMarshal.Cast<float, Vector<float>>(data);
            var f = new Vector<float>(factor);
            for (var i = 0; i < vectors.Length; i++)
            {
                vectors[i] *= f;
            }

            for (var i = vectors.Length * Vector<float>.Count; i < data.Length; i++)
            {
                data[i] *= factor;
            }
        }
    }

    /// <inheritdoc />
    public void Broadcast(IReadOnlyList<OrtValue> buffers, Span<long> words)
    {
        _world.Broadcast(MemoryMarshal.AsBytes(words));
        foreach (var buffer in buffers)
        {
            var bytes = buffer.GetTensorMutableRawData();
            _world.Broadcast(MpiWorld.AddressOf(bytes), bytes.Length);
        }
    }

    /// <inheritdoc />
    public bool AllEqual(ulong value)
    {
        Span<ulong> root = [value];
        _world.Broadcast(MemoryMarshal.AsBytes(root));
        Span<int> differs = [root[0] == value ? 0 : 1];
        _world.AllReduceMax(differs);
        return differs[0] == 0;
    }

    private static Span<float> Floats(OrtValue buffer)
    {
        var type = buffer.GetTensorTypeAndShape().ElementDataType;
        return type == TensorElementType.Float
            ? buffer.GetTensorMutableDataAsSpan<float>()
            : throw new DistributedException($"data-parallel training reduces float32 gradients; this artifact has a {type} gradient");
    }

    private float[] Staging(int bucket, int floats)
    {
        while (_staging.Count <= bucket)
        {
            // Pinned: MPI reads and writes it after the call that started the transfer has returned.
            _staging.Add(GC.AllocateArray<float>(floats, pinned: true));
        }

        return _staging[bucket];
    }

    private void Flush(int bucket, int used, List<nint> requests)
    {
        if (bucket >= 0 && used > 0)
        {
            requests.AddRange(_world.StartAllReduceSum(MpiWorld.AddressOf(MemoryMarshal.AsBytes(_staging[bucket].AsSpan())), used));
        }
    }
}
