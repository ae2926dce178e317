namespace Spt.Passes.Tests;

/// <summary>Seeded test weights.</summary>
internal static class TestValues
{
    /// <summary><paramref name="n"/> values uniform in [-1, 1), the same for the same <paramref name="seed"/>.</summary>
    public static float[] Uniform(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
    }
}
