using Spt.Ir;
using Spt.Passes.Autodiff;

namespace Spt.Passes.Training;

/// <summary>
/// Builds <c>optimizer.onnx</c>: one AdamW step over all trainable parameters with global-norm clipping, exactly as
/// torch.optim.AdamW after torch.nn.utils.clip_grad_norm_. Inputs: <c>lr</c>, <c>step</c> (1-based),
/// <c>grad_scale</c> (f32 scalars) and per parameter <c>&lt;name&gt;</c>, <c>grad.&lt;name&gt;</c>,
/// <c>m.&lt;name&gt;</c>, <c>v.&lt;name&gt;</c>. Outputs: per parameter <c>new.&lt;name&gt;</c>,
/// <c>new.m.&lt;name&gt;</c>, <c>new.v.&lt;name&gt;</c>, then <c>grad_norm</c> (of the scaled gradients, before
/// clipping).
/// </summary>
public static class AdamWGraph
{
    /// <summary>Default-domain opset of the optimizer graph.</summary>
    public const long Opset = 17;

    /// <summary>Builds the optimizer model for parameters given as (name, shape).</summary>
    public static Model Build(IReadOnlyList<(string Name, IReadOnlyList<long> Shape)> parameters, AdamWOptions o)
    {
        var b = new GraphBuilder(Opset, "adamw");
        var lr = b.Input(ArtifactContract.LearningRate, ElementType.Float);
        var step = b.Input(ArtifactContract.Step, ElementType.Float);
        var gradScale = b.Input(ArtifactContract.GradScale, ElementType.Float);
        var e = new OpEmitter(b.Graph, Opset, "adamw");
        var ps = new List<(string Name, Value P, Value G, Value M, Value V)>();
        foreach (var (name, shape) in parameters)
        {
            object[] dims = [.. shape.Select(d => (object)d)];
            ps.Add((name, b.Input(name, ElementType.Float, dims), b.Input(ArtifactContract.Gradient(name), ElementType.Float, dims),
                b.Input(ArtifactContract.FirstMoment(name), ElementType.Float, dims), b.Input(ArtifactContract.SecondMoment(name), ElementType.Float, dims)));
        }

        // g = grad * grad_scale; ||g|| = |grad_scale| * ||grad|| over all parameters. The scale is applied per parameter
        // in its update, not up front: scaled copies of all gradients would be alive together until the norm is known
        // (as many bytes as the parameters). Exact for a power-of-two scale (1 without accumulation).
        e.Prefix = "adamw/norm";
        var squares = ps.Select(p => e.ReduceSum(e.Op("Mul", p.G, p.G), null, keepDims: false)).ToList();
        var norm = e.Op("Mul", e.Op("Sqrt", squares.Count == 0 ? e.Scalar(0f) : e.Sum(squares)), e.Op("Abs", gradScale));
        var coef = gradScale;
        if (o.MaxGradNorm > 0)
        {
            // torch: coef = min(1, max_norm / (norm + 1e-6))
            var clip = e.Op("Min", e.Op("Div", e.Scalar(o.MaxGradNorm), e.Op("Add", norm, e.Scalar(1e-6f))), e.Scalar(1f));
            coef = e.Op("Mul", gradScale, clip);
        }

        // Bias corrections and the per-step scalars.
        var bc1 = e.Op("Sub", e.Scalar(1f), e.Op("Pow", e.Scalar(o.Beta1), step));
        var bc2Sqrt = e.Op("Sqrt", e.Op("Sub", e.Scalar(1f), e.Op("Pow", e.Scalar(o.Beta2), step)));
        var stepSize = e.Op("Div", lr, bc1);
        var decay = e.Op("Sub", e.Scalar(1f), e.Op("Mul", lr, e.Scalar(o.WeightDecay)));

        for (int i = 0; i < ps.Count; i++)
        {
            var (name, p, grad, m, v) = ps[i];
            e.Prefix = "adamw/" + name;
            var g = e.Op("Mul", grad, coef);
            // p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2
            var decayed = e.Op("Mul", p, decay);
            var m1 = e.Op("Add", e.Op("Mul", m, e.Scalar(o.Beta1)), e.Op("Mul", g, e.Scalar(1 - o.Beta1)));
            var v1 = e.Op("Add", e.Op("Mul", v, e.Scalar(o.Beta2)), e.Op("Mul", e.Op("Mul", g, g), e.Scalar(1 - o.Beta2)));
            // p <- p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
            var denom = e.Op("Add", e.Op("Div", e.Op("Sqrt", v1), bc2Sqrt), e.Scalar(o.Epsilon));
            var p1 = e.Op("Sub", decayed, e.Op("Mul", stepSize, e.Op("Div", m1, denom)));
            b.Output(e.Op("Identity", p1), ArtifactContract.Updated(name));
            b.Output(e.Op("Identity", m1), ArtifactContract.Updated(ArtifactContract.FirstMoment(name)));
            b.Output(e.Op("Identity", v1), ArtifactContract.Updated(ArtifactContract.SecondMoment(name)));
        }
        b.Output(e.Op("Identity", norm), ArtifactContract.GradNorm);
        return b.Build();
    }
}
