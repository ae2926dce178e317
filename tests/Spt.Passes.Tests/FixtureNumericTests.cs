using Spt.Ir;
using Spt.Runtime;
using Xunit.Abstractions;

namespace Spt.Passes.Tests;

/// <summary>
/// Faithfulness: ORT runs each fixture and its <c>--exact</c> rewrite (our custom ops registered) on the same
/// generated inputs; the outputs must agree within 1e-4. Attention and FFN rewrites are also checked one at a
/// time, so a failure names the op family.
/// </summary>
public class FixtureNumericTests(ITestOutputHelper output)
{
    public enum Part
    {
        Attention,
        Ffn,
        Both,
    }

    public static TheoryData<string, Part> Cases()
    {
        var data = new TheoryData<string, Part>();
        foreach (var file in Fixtures.Names)
        {
            foreach (var part in Enum.GetValues<Part>())
                data.Add(file, part);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ExactRewriteComputesWhatTheOriginalDoes(string file, Part part)
    {
        using var original = Fixtures.Load(file);
        DropoutMode.ToInference(original);
        var options = FixtureRecognitionTests.OptionsFor(file, exact: true) with
        {
            Attention = part == Part.Ffn ? AttentionMode.Keep : AttentionMode.Sparse,
            Ffn = part == Part.Attention ? FfnMode.Keep : FfnMode.Routed,
        };
        var rewritten = Model.FromBytes(original.ToBytes());
        var report = SptOptimizer.Optimize(rewritten, options);
        // Fixtures whose attention is kept dense on purpose (a sliding window) rewrite only their FFNs.
        bool attentionKeptDense = Fixtures.Entry(file).TryGetProperty("attention_kept_dense", out _);
        Assert.True(report.AttentionRewritten + report.FfnRewritten > 0 || (attentionKeptDense && part == Part.Attention), "nothing was rewritten");
        var maxDiff = Compare(original, Model.FromBytes(rewritten.ToBytes()), 1e-4);
        output.WriteLine($"{file} [{part}]: attention {report.AttentionRewritten}/{report.AttentionFound}, ffn {report.FfnRewritten}/{report.FfnFound}, max |diff| {maxDiff:G3}");
    }

    /// <summary>
    /// Runs both models on the same inputs at two sizes (batch 2, sequence 8 and batch 3, sequence 5; masks pad a
    /// suffix) and returns the largest difference.
    /// </summary>
    internal static double Compare(Model expected, Model actual, double tolerance)
    {
        double max = 0;
        foreach (var (batch, sequence) in new[] { (2, 8), (3, 5) })
        {
            var inputs = InputGenerator.Generate(expected, new InputGeneratorOptions { Batch = batch, Sequence = sequence, Seed = 11 });
            var before = TestSupport.Run(expected, inputs);
            var after = TestSupport.Run(actual, inputs);
            Assert.Equal(before.Select(o => o.Key), after.Select(o => o.Key));
            for (int i = 0; i < before.Count; i++)
            {
                var diff = OutputComparison.Compare(before[i].Key, before[i].Value, after[i].Value, tolerance);
                Assert.True(diff.WithinTolerance, $"output {diff.Name} at batch {batch}, sequence {sequence}: shapes match {diff.ShapesMatch}, max abs diff {diff.MaxAbsDiff:G3}");
                max = Math.Max(max, diff.MaxAbsDiff);
            }
        }
        return max;
    }
}
