using Spt.Ir;
using Spt.Runtime.Training;

namespace Spt.Runtime.Tests;

public class CodebookCalibrationTests
{
    private const int B = 2, H = 2, S = 8, M = 2, C = 4, Dc = 2, E = M * Dc;

    // Z [B, H, S, E] -> PQEncode(Z, codebook) -> PQTopK(codes, codes, mask [B, S]) -> indices: a codebook shared by Q and K.
    private static Model PqModel(float[] codebook)
    {
        var b = new GraphBuilder(17).Opset("spt", 1);
        var z = b.Input("z", ElementType.Float, B, H, S, E);
        var mask = b.Input("mask", ElementType.Int64, B, S);
        var book = b.Initializer("codebook", codebook, M, C, Dc);
        var codes = b.DomainOp("spt", "PQEncode", [z, book]);
        b.Output(b.DomainOp("spt", "PQTopK", [codes, codes, mask], ("keys_per_query", 2L), ("causal", 0L)), "indices");
        return b.Build();
    }

    // Rows near four centres per subspace (±3 on each axis, spread 0.1); padded positions (the last two of each
    // sequence) sit at 1000, far from everything real.
    private static (float[] Z, long[] Mask) Data(int seed)
    {
        var rng = new Random(seed);
        var centres = new[] { (3f, 3f), (3f, -3f), (-3f, 3f), (-3f, -3f) };
        var z = new float[B * H * S * E];
        var mask = new long[B * S];
        for (int bi = 0; bi < B; bi++)
        {
            for (int s = 0; s < S; s++)
            {
                bool real = s < S - 2;
                mask[bi * S + s] = real ? 1 : 0;
                for (int h = 0; h < H; h++)
                {
                    for (int m = 0; m < M; m++)
                    {
                        var (cx, cy) = centres[rng.Next(4)];
                        int at = ((bi * H + h) * S + s) * E + m * Dc;
                        z[at] = real ? cx + (float)(rng.NextDouble() - 0.5) * 0.2f : 1000f;
                        z[at + 1] = real ? cy + (float)(rng.NextDouble() - 0.5) * 0.2f : 1000f;
                    }
                }
            }
        }
        return (z, mask);
    }

    [Fact]
    public void CodewordsMoveOntoTheClustersOfRealRows()
    {
        var rng = new Random(1);
        var random = Enumerable.Range(0, M * C * Dc).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        using var model = PqModel(random);
        var batches = Enumerable.Range(0, 3).Select(seed =>
        {
            var (z, mask) = Data(seed);
            return (IReadOnlyDictionary<string, TensorData>)new Dictionary<string, TensorData>
            {
                ["z"] = TensorData.FromFloats(z, [B, H, S, E]),
                ["mask"] = TensorData.FromLongs(mask, [B, S]),
            };
        }).ToList();

        var fits = CodebookCalibration.Calibrate(model, batches, seed: 3);

        var fit = Assert.Single(fits);
        Assert.Equal("codebook", fit.Codebook);
        Assert.Equal(3 * B * H * (S - 2), fit.Rows);  // padded positions left out
        Assert.True(fit.MeanDistanceAfter < 0.2, $"mean L1 after fitting {fit.MeanDistanceAfter}");
        Assert.True(fit.MeanDistanceBefore > 3, $"mean L1 of the random codebook {fit.MeanDistanceBefore}");
        var book = model.Graph.Initializers.Single(v => v.Name == "codebook").Initializer!.ToFloatArray();
        for (int m = 0; m < M; m++)
        {
            // Every centre has a codeword within 0.2 (L1), and no codeword went to the padding at 1000.
            var words = Enumerable.Range(0, C).Select(c => (book[(m * C + c) * Dc], book[(m * C + c) * Dc + 1])).ToList();
            foreach (var (cx, cy) in new[] { (3f, 3f), (3f, -3f), (-3f, 3f), (-3f, -3f) })
                Assert.Contains(words, w => Math.Abs(w.Item1 - cx) + Math.Abs(w.Item2 - cy) < 0.2);
            Assert.All(words, w => Assert.True(Math.Abs(w.Item1) < 10 && Math.Abs(w.Item2) < 10, $"codeword {w} follows padding"));
        }

        // The fitted model still runs: each code agrees with the cluster, so a query's kept keys share its cluster.
        using var runner = new OrtModelRunner(model);
        var indices = runner.Run(batches[0]).Single().Value.Longs!;
        Assert.All(indices, i => Assert.InRange(i, 0, S - 3));
    }

    [Fact]
    public void KMediansSeparatesWellSeparatedGroupsAndIsSeeded()
    {
        // Three groups on a line in 1-D at -10, 0, 10 (plus noise); C = 3 finds each group's median.
        var rng = new Random(5);
        var points = Enumerable.Range(0, 300).Select(i => (i % 3 - 1) * 10f + (float)(rng.NextDouble() - 0.5)).ToArray();
        var words = CodebookCalibration.Fit(points, 1, 3, 20, new Random(9)).Order().ToArray();
        Assert.Equal(-10, words[0], 0.5);
        Assert.Equal(0, words[1], 0.5);
        Assert.Equal(10, words[2], 0.5);
        Assert.Equal(CodebookCalibration.Fit(points, 1, 3, 20, new Random(9)), CodebookCalibration.Fit(points, 1, 3, 20, new Random(9)));
    }

    [Fact]
    public void AModelWithoutPQEncodeIsLeftAlone()
    {
        var b = new GraphBuilder(17);
        b.Output(b.Op("Relu", b.Input("x", ElementType.Float, 2)), "y");
        using var model = b.Build();
        var before = model.ToBytes();
        Assert.Empty(CodebookCalibration.Calibrate(model, [new Dictionary<string, TensorData> { ["x"] = TensorData.FromFloats([1f, -1f], [2]) }]));
        Assert.Equal(before, model.ToBytes());
    }
}
