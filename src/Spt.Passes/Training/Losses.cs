using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Autodiff;

namespace Spt.Passes.Training;

/// <summary>
/// Loss subgraphs built from stock ops (and spt::PQLoss for the codebook term), appended with an
/// <see cref="OpEmitter"/>. The autodiff differentiates them like the rest of the forward graph.
/// </summary>
public static class Losses
{
    /// <summary>
    /// Causal-LM cross-entropy. <paramref name="labels"/> [B, L] int64 are already shifted: labels[b, t] is the token
    /// that should follow position t, so logits[:, :L] are scored (L = S − 1 for labels = ids[:, 1:]; L = S for
    /// labels padded with the ignore index). Positions labelled <paramref name="ignoreIndex"/> do not count; the loss
    /// is the mean over counted positions (0 when none counts).
    /// </summary>
    public static Value CausalLm(OpEmitter e, Value logits, Value labels, long ignoreIndex)
    {
        var length = e.Op("Gather", [e.Shape(labels), e.Ints(1)], ("axis", 0L));
        var scored = e.Op("Slice", logits, e.Ints(0), length, e.Ints(1)); // [B, L, V]
        return MeanNll(e, e.Op("LogSoftmax", [scored], ("axis", -1L)), labels, e.Op("Gather", [e.Shape(logits), e.Ints(-1)], ("axis", 0L)), ignoreIndex);
    }

    /// <summary>
    /// Classification cross-entropy: logits [B, C] against label [B] int64; [B, S, C] logits are scored at the
    /// first (or, with <paramref name="lastToken"/>, the last) position. Labels equal to
    /// <paramref name="ignoreIndex"/> do not count.
    /// </summary>
    public static Value Classification(OpEmitter e, Value logits, int? logitsRank, Value label, long ignoreIndex, bool lastToken)
    {
        if (logitsRank == 3)
            logits = e.Op("Gather", [logits, e.IntScalar(lastToken ? -1 : 0)], ("axis", 1L));
        var classes = e.Op("Gather", [e.Shape(logits), e.Ints(-1)], ("axis", 0L));
        return MeanNll(e, e.Op("LogSoftmax", [logits], ("axis", -1L)), label, classes, ignoreIndex);
    }

    /// <summary>Mean squared error over all elements of <paramref name="output"/> and <paramref name="target"/>.</summary>
    public static Value MeanSquaredError(OpEmitter e, Value output, Value target)
    {
        var d = e.Op("Sub", output, target);
        return e.ReduceMean(e.Op("Mul", d, d), null, keepDims: false);
    }

    // -mean over counted positions of logp[..., label]; the label picked with a one-hot product so that the gradient
    // needs no scatter.
    private static Value MeanNll(OpEmitter e, Value logp, Value labels, Value classes, long ignoreIndex)
    {
        var valid = e.Op("Not", e.Op("Equal", labels, e.IntScalar(ignoreIndex)));
        var safe = e.Op("Where", valid, labels, e.IntScalar(0));
        var onehot = e.Op("OneHot", [safe, classes, e.Constant("onehot_values", () => Tensor.Create("", [0f, 1f], 2))], ("axis", -1L));
        var picked = e.ReduceSum(e.Op("Mul", logp, onehot), [-1], keepDims: false);
        var weight = e.Cast(valid, ElementType.Float);
        var total = e.ReduceSum(e.Op("Mul", picked, weight), null, keepDims: false);
        var count = e.Op("Max", e.ReduceSum(weight, null, keepDims: false), e.Scalar(1f));
        return e.Op("Neg", e.Op("Div", total, count));
    }

    /// <summary>
    /// The PQ codebook loss of every spt::PQEncode in the graph: Σ PQLoss(Z, codebook) over the encoded tensors (per
    /// layer Q and K, which share their codebook). Null when the graph has no PQEncode.
    /// </summary>
    public static Value? PQAuxiliary(OpEmitter e, Graph graph)
    {
        var terms = new List<Value>();
        foreach (var n in graph.Nodes.ToList())
        {
            if (AttentionOps.PQEncode.Is(n))
                terms.Add(e.Node(AttentionOps.PQLoss.Name, [n.Inputs[AttentionOps.PQZ], n.Inputs[AttentionOps.PQCodebook]], 1, domain: AttentionOps.PQLoss.Domain)[0]);
        }
        return terms.Count == 0 ? null : e.Sum(terms);
    }
}
