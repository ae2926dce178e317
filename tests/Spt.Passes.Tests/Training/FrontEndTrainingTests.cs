using Spt.Ir;
using Spt.Passes.Training;

namespace Spt.Passes.Tests.Training;

/// <summary>
/// Dense training graphs of exports whose shapes the compiler must work out through exporter shape arithmetic: a
/// BERT classifier pooling <c>x[:, 0]</c> (a Gather on axis 1), a ViT front end (Conv2d patches, a cls token
/// expanded with <c>expand(B, -1, -1)</c>) and a Conv1d front end. The gradient of grad.onnx agrees with a central
/// difference of eval.onnx's loss along a random direction, for every parameter at once and for the Conv weights.
/// </summary>
public sealed class FrontEndTrainingTests
{
    public static TheoryData<string, string> Cases => new()
    {
        { "bert_cls_op17", "pooler.weight" },
        { "vit_conv_op17", "patch_embed.weight" },
        { "conv1d_front_op17", "conv1.weight" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsMatchFiniteDifferences(string stem, string convOrPooler)
    {
        var source = Fixtures.LoadModel(stem);
        var art = TrainingCompiler.Compile(source);
        Assert.Contains(art.Parameters, p => p.Name == convOrPooler && p.Trainable);
        var rng = new Random(7);
        var feeds = DataFeeds(art, rng);
        foreach (var p in art.Parameters)
            feeds[p.Name] = source.Graph.FindValue(p.Name)!.Initializer!;
        var gradFeeds = new Dictionary<string, Tensor>(feeds, StringComparer.Ordinal);
        foreach (var p in art.Parameters.Where(p => p.Trainable))
            gradFeeds[ArtifactContract.Accumulator(p.Name)] = Tensor.Create("", new float[Count(p.Shape)], [.. p.Shape]);

        using var grad = new OrtRunner(art.Grad);
        var outs = grad.Run(gradFeeds);
        Assert.True(float.IsFinite(outs[ArtifactContract.Loss].ToFloatArray()[0]));

        using var eval = new OrtRunner(art.Eval);
        foreach (var only in new string?[] { null, convOrPooler })
        {
            // d = a random direction over the chosen parameters; <g, d> against (L(p + h d) - L(p - h d)) / 2h.
            var chosen = art.Parameters.Where(p => p.Trainable && (only is null || p.Name == only)).ToList();
            var directions = chosen.ToDictionary(p => p.Name, p => Enumerable.Range(0, (int)Count(p.Shape)).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray());
            double analytic = chosen.Sum(p => Dot(outs[ArtifactContract.AccumulatorOutput(p.Name)].ToFloatArray(), directions[p.Name]));
            const float h = 1e-2f;
            double Loss(float sign)
            {
                var shifted = new Dictionary<string, Tensor>(feeds, StringComparer.Ordinal);
                foreach (var p in chosen)
                {
                    var value = feeds[p.Name].ToFloatArray();
                    var d = directions[p.Name];
                    shifted[p.Name] = Tensor.Create(p.Name, value.Select((v, i) => v + (sign * h * d[i])).ToArray(), [.. p.Shape]);
                }
                return eval.Run(shifted)[ArtifactContract.Loss].ToFloatArray()[0];
            }
            double numeric = (Loss(1) - Loss(-1)) / (2 * h);
            Assert.True(Math.Abs(numeric - analytic) <= 2e-2 * Math.Max(1e-3, Math.Abs(numeric)),
                $"{stem} ({only ?? "all parameters"}): finite difference {numeric:G6}, gradient {analytic:G6}");
        }
    }

    private static Dictionary<string, Tensor> DataFeeds(TrainingArtifacts art, Random rng)
    {
        const int batch = 2, seq = 8;
        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var d in art.DataInputs)
        {
            feeds[d.Name] = d.Role switch
            {
                "input_ids" => Tensor.Create(d.Name, [.. Enumerable.Range(0, batch * seq).Select(_ => (long)rng.Next(64))], batch, seq),
                "attention_mask" => Tensor.Create(d.Name, [.. Enumerable.Range(0, batch * seq).Select(i => i % seq < seq - 2 || i < seq ? 1L : 0L)], batch, seq),
                "labels" => Tensor.Create(d.Name, [.. Enumerable.Range(0, batch * seq).Select(_ => (long)rng.Next(64))], batch, seq),
                "label" => Tensor.Create(d.Name, [.. Enumerable.Range(0, batch).Select(i => (long)(i % 3))], batch),
                _ => Tensor.Create(d.Name, [.. Enumerable.Range(0, batch * 3 * 16 * 16).Select(_ => (float)(rng.NextDouble() * 2 - 1))], batch, 3, 16, 16),
            };
        }
        return feeds;
    }

    private static long Count(IReadOnlyList<long> shape) => shape.Aggregate(1L, (a, b) => a * b);

    private static double Dot(float[] a, float[] b) => a.Select((x, i) => (double)x * b[i]).Sum();
}
