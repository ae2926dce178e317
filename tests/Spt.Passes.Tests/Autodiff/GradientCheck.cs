using Spt.Ir;
using Spt.Passes.Autodiff;
using Spt.Passes.Tests.Training;

namespace Spt.Passes.Tests.Autodiff;

/// <summary>
/// Finite-difference gradient checks in ORT, in float32: the loss is sum(y * r) for a fixed random r, so every
/// output element matters; the analytic gradient from the backward graph is compared with central differences
/// (step h) by ||a - fd|| / ||fd||.
/// </summary>
internal static class GradientCheck
{
    public sealed class Case
    {
        public required GraphBuilder Builder { get; init; }
        public required Value Output { get; init; }
        public required Dictionary<string, Tensor> Feeds { get; init; }
        public required string[] Differentiate { get; init; }
    }

    /// <summary>
    /// Deterministic values in [lo, hi), kept 0.03 away from the kinks of the piecewise rules (0 and ±0.5), where
    /// central differences straddle the kink.
    /// </summary>
    public static float[] Random(int count, double lo, double hi, int seed)
    {
        var rng = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double v = lo + (hi - lo) * rng.NextDouble();
            foreach (double kink in new[] { 0, 0.5, -0.5 })
            {
                if (Math.Abs(v - kink) < 0.03)
                    v = kink + (v >= kink ? 0.03 : -0.03);
            }
            values[i] = (float)v;
        }
        return values;
    }

    private static int StableSeed(string name, long count) => name.Aggregate(17, (h, ch) => h * 31 + ch) ^ (int)count;

    /// <summary>A builder whose inputs are the given float tensors (dims known, or symbolic when <paramref name="symbolic"/>).</summary>
    public static (GraphBuilder B, Dictionary<string, Tensor> Feeds) Start(long opset, bool symbolic, params (string Name, long[] Dims, float Lo, float Hi)[] inputs)
    {
        var b = new GraphBuilder(opset);
        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, dims, lo, hi) in inputs)
        {
            long count = dims.Aggregate(1L, (a, c) => a * c);
            feeds[name] = Tensor.Create(name, Random((int)count, lo, hi, StableSeed(name, count)), dims);
            b.Input(name, ElementType.Float, [.. dims.Select((d, i) => symbolic ? (object)$"{name}_d{i}" : d)]);
        }
        return (b, feeds);
    }

    /// <summary>Runs the check; returns the worst relative error over the differentiated inputs.</summary>
    public static double Run(Case c, double h = 1e-2, bool customOps = false)
    {
        var b = c.Builder;
        var y = c.Output;
        // loss = sum(y * r), r a fixed tensor shaped like y (computed at run time: r = sin(1.7 * iota + 0.3)).
        var yShape = b.Op("Shape", y);
        var size = b.Op("Size", y);
        var iota = b.Op("Cast", [b.Op("Range", b.Initializer(Tensor.Scalar("check.zero", 0L)), size, b.Initializer(Tensor.Scalar("check.one", 1L)))], ("to", (long)ElementType.Float));
        var phase = b.Op("Add", b.Op("Mul", iota, b.Initializer(Tensor.Scalar("check.k", 1.7f))), b.Initializer(Tensor.Scalar("check.phase", 0.3f)));
        var r = b.Op("Reshape", b.Op("Sin", phase), yShape);
        var loss = b.Op("ReduceSum", [b.Op("Mul", y, r)], ("keepdims", 0L));
        b.Output(loss, "loss");
        var model = b.Build();
        var forward = Model.FromBytes(model.ToBytes(), new LoadOptions { Verify = false });

        var parameters = c.Differentiate.Select(n => model.Graph.FindValue(n)!).ToList();
        var result = new BackwardBuilder().Build(model.Graph, model.Graph.FindValue("loss")!, parameters);
        var ed = model.Graph.Edit();
        foreach (var p in parameters)
        {
            var g = result.Gradients[p] ?? throw new InvalidOperationException($"no gradient for {p.Name}");
            ed.AddOutput(ed.AddNode("Identity", [g], outputNames: ["d." + p.Name]).Outputs[0]);
        }

        using var gradRunner = new OrtRunner(model, customOps);
        using var fwdRunner = new OrtRunner(forward, customOps);
        var analytic = gradRunner.Run(c.Feeds);
        double worst = 0;
        foreach (var name in c.Differentiate)
        {
            var a = analytic["d." + name].ToFloatArray();
            var x = c.Feeds[name].ToFloatArray();
            Assert.Equal(x.Length, a.Length);
            var fd = new double[x.Length];
            for (int i = 0; i < x.Length; i++)
            {
                double Loss(float v)
                {
                    var copy = (float[])x.Clone();
                    copy[i] = v;
                    var feeds = new Dictionary<string, Tensor>(c.Feeds) { [name] = Tensor.Create(name, copy, [.. c.Feeds[name].Dims]) };
                    return fwdRunner.Run(feeds)["loss"].ToFloatArray()[0];
                }
                fd[i] = (Loss((float)(x[i] + h)) - Loss((float)(x[i] - h))) / (2 * h);
            }
            double diff = 0, norm = 0;
            for (int i = 0; i < fd.Length; i++)
            {
                diff += (a[i] - fd[i]) * (a[i] - fd[i]);
                norm += fd[i] * fd[i];
            }
            Assert.True(norm > 1e-8, $"finite differences of {name} are all zero: the case does not exercise the gradient");
            worst = Math.Max(worst, Math.Sqrt(diff / norm));
        }
        return worst;
    }
}
