namespace Spt.Runtime.Data;

/// <summary>
/// The order in which training examples are visited: a fresh seeded permutation per epoch (Fisher-Yates driven by
/// SplitMix64, so the order depends only on the seed and the epoch, not on the .NET version), consumed in batches
/// that run on into the next epoch. The whole state is (seed, epoch, position), which a checkpoint stores. With
/// example lengths, each window of <c>bucket</c> consecutive examples of the permutation is sorted by length (stable),
/// so that consecutive batches hold examples of similar length and pad little; the order stays a function of
/// (seed, epoch).
/// </summary>
public sealed class DataOrder
{
    private int[] _permutation;
    private readonly IReadOnlyList<int>? _lengths;
    private readonly int _bucket;

    /// <summary>Starts at epoch 0, position 0 (or at a resumed state); <paramref name="lengths"/> turns on length buckets.</summary>
    public DataOrder(int count, ulong seed, long epoch = 0, int position = 0, IReadOnlyList<int>? lengths = null, int bucket = 256)
    {
        if (count <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(count), count, "there must be at least one example");
        }

        if (position < 0 || position > count)
        {
            throw new ArgumentOutOfRangeException(nameof(position), position, $"position must be within 0..{count}");
        }

        Count = count;
        Seed = seed;
        Epoch = epoch;
        Position = position;
        _lengths = lengths;
        _bucket = Math.Max(1, bucket);
        _permutation = Bucketed(Permutation(count, seed, epoch));
    }

    /// <summary>Number of examples.</summary>
    public int Count { get; }

    /// <summary>The shuffling seed.</summary>
    public ulong Seed { get; }

    /// <summary>The current epoch (0-based).</summary>
    public long Epoch { get; private set; }

    /// <summary>How many examples of the current epoch's permutation were consumed.</summary>
    public int Position { get; private set; }

    /// <summary>The next <paramref name="size"/> example indices, crossing into the next epoch when needed.</summary>
    public int[] Next(int size)
    {
        var result = new int[size];
        for (var i = 0; i < size; i++)
        {
            if (Position == Count)
            {
                Epoch++;
                Position = 0;
                _permutation = Bucketed(Permutation(Count, Seed, Epoch));
            }

            result[i] = _permutation[Position++];
        }

        return result;
    }

    /// <summary>The permutation of epoch <paramref name="epoch"/>.</summary>
    public static int[] Permutation(int count, ulong seed, long epoch)
    {
        var state = seed ^ (0x9E3779B97F4A7C15UL * (ulong)(epoch + 1));
        var perm = new int[count];
        for (var i = 0; i < count; i++)
        {
            perm[i] = i;
        }

        for (var i = count - 1; i > 0; i--)
        {
            var j = (int)(SplitMix64(ref state) % (ulong)(i + 1));
            (perm[i], perm[j]) = (perm[j], perm[i]);
        }

        return perm;
    }

    private int[] Bucketed(int[] permutation)
    {
        if (_lengths is null)
        {
            return permutation;
        }

        for (var start = 0; start < permutation.Length; start += _bucket)
        {
            var size = Math.Min(_bucket, permutation.Length - start);
            var window = permutation.AsSpan(start, size).ToArray();
            var sorted = window.Select((example, k) => (example, k)).OrderBy(x => _lengths[x.example]).ThenBy(x => x.k).Select(x => x.example).ToArray();
            sorted.CopyTo(permutation, start);
        }

        return permutation;
    }

    private static ulong SplitMix64(ref ulong state)
    {
        var z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
