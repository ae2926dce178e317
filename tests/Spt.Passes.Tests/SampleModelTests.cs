using Spt.Ir;
using Spt.Ir.Samples;

namespace Spt.Passes.Tests;

public class SampleModelTests
{
    [Theory]
    [InlineData(2, 64, 4, 256)]
    [InlineData(3, 32, 2, 64)]
    public void EveryBlockOfTheSampleDecoderIsFoundAndRewritten(int layers, int d, int heads, int dff)
    {
        using var model = SampleModels.TinyDecoder(new SampleDecoderConfig(layers, d, heads, dff));
        Assert.Empty(GraphVerifier.Verify(model.Graph));
        var report = SptOptimizer.Optimize(model, new SptOptions { Exact = true });
        Assert.Equal(layers, report.AttentionFound);
        Assert.Equal(layers, report.AttentionRewritten);
        Assert.Equal(layers, report.FfnFound);
        Assert.Equal(layers, report.FfnRewritten);
        Assert.All(report.Attention, a =>
        {
            Assert.True(a.Causal);
            Assert.Equal(d / heads, a.HeadDim);
            Assert.Equal(heads, a.Heads);
            Assert.Equal(Math.Pow(d / heads, -0.5), a.EffectiveScale, 1e-6);
            Assert.NotNull(a.QProjection);
            Assert.NotNull(a.OutProjection);
        });
        Assert.All(report.Ffn, f => Assert.Equal("relu", f.Activation));
        Assert.Equal(0, TestSupport.Count(model, "Softmax"));
        Assert.Equal(layers, TestSupport.Count(model, "RoutedFFN"));
    }

    [Theory]
    [InlineData(null, 16, 16L)]   // the default floor
    [InlineData(null, 0, null)]   // no floor: the reference's S/8 alone
    [InlineData(4, 16, null)]     // an explicit count is not floored
    public void TheKeyFloorReachesEveryPQTopK(int? topK, int minTopK, long? expected)
    {
        using var model = SampleModels.TinyDecoder(new SampleDecoderConfig(2, 32, 2, 64));
        SptOptimizer.Optimize(model, new SptOptions { TopK = topK, MinTopK = minTopK });
        var topks = model.Graph.Nodes.Where(n => n.OpType == "PQTopK").ToList();
        Assert.Equal(2, topks.Count);
        Assert.All(topks, n => Assert.Equal(expected, n.Attributes.Any(a => a.Name == "min_keys_per_query") ? n.GetInt("min_keys_per_query", -1) : null));
        Assert.All(topks, n => Assert.Equal(topK is null, n.Attributes.Any(a => a.Name == "keys_ratio")));
    }

    [Fact]
    public void ExactRewriteOfTheSampleMatchesTheDenseModel()
    {
        using var original = SampleModels.TinyDecoder();
        var rewritten = Model.FromBytes(original.ToBytes());
        SptOptimizer.Optimize(rewritten, new SptOptions { Exact = true });
        FixtureNumericTests.Compare(original, Model.FromBytes(rewritten.ToBytes()), 1e-4);
    }
}
