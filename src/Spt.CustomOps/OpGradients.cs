using Spt.Ir;

namespace Spt.CustomOps;

/// <summary>
/// What a gradient rule sees while the backward graph of one forward node is built. The autodiff in
/// <c>Spt.Passes</c> implements it; the rules of sptc's own ops (<see cref="OpGradients"/>) are written against it.
/// </summary>
public interface IGradientContext
{
    /// <summary>The forward node being differentiated.</summary>
    Node Node { get; }

    /// <summary>The gradient of the loss w.r.t. forward output <paramref name="outputIndex"/>, or null when none flows back.</summary>
    Value? OutputGradient(int outputIndex);

    /// <summary>Whether forward input <paramref name="inputIndex"/> needs a gradient (it lies on a path from a trainable parameter).</summary>
    bool NeedsGradient(int inputIndex);

    /// <summary>Adds <paramref name="gradient"/> to the gradient of forward input <paramref name="inputIndex"/>.</summary>
    void AddGradient(int inputIndex, Value gradient);

    /// <summary>
    /// Forward output <paramref name="outputIndex"/>, giving it a name first when the forward node left it omitted
    /// (state saved for the backward, e.g. attention probabilities).
    /// </summary>
    Value SavedOutput(int outputIndex);

    /// <summary>
    /// Appends a node to the backward graph and returns its outputs; outputs whose <paramref name="wanted"/> entry is
    /// false are left omitted (empty names).
    /// </summary>
    IReadOnlyList<Value> Emit(string domain, string opType, IReadOnlyList<Value?> inputs, IReadOnlyList<bool> wanted,
        IEnumerable<Ir.Attribute> attributes);

    /// <summary>A user or model error about the forward node (names node, op type and opset).</summary>
    Exception Fail(string problem);
}

/// <summary>The gradient entry of one sptc op: a rule, or a reason why the op has no gradient.</summary>
public sealed record OpGradient(string OpType, Action<IGradientContext>? Rule, string? NoGradientReason = null);

/// <summary>
/// Gradient rules of the ops in domain <c>spt</c>, beside their schemas: the forward op maps to its fused gradient
/// op with the same attributes. Input and output positions follow the schemas (AttentionOps, RoutedFfnOps) and the
/// native bindings. The autodiff registry reads <see cref="All"/>.
/// </summary>
public static class OpGradients
{
    /// <summary>Every gradient entry of the spt domain.</summary>
    public static IReadOnlyList<OpGradient> All { get; } =
    [
        new(AttentionOps.SparseAttention.Name, SparseAttention),
        new(RoutedFfnOps.RoutedFfn.Name, RoutedFfn),
        new(AttentionOps.PQLoss.Name, PQLoss),
        new(AttentionOps.PQEncode.Name, null, "codes are integer argmins"),
        new(AttentionOps.PQTopK.Name, null, "key indices are integer selections"),
    ];

    // SparseAttention(Q, K, V, indices, mask?) -> Y, P
    // SparseAttentionGrad(dY, Q, K, V, indices, P, mask?) -> dQ, dK, dV (same scale/clamp/causal).
    private static void SparseAttention(IGradientContext g)
    {
        var n = g.Node;
        if (g.OutputGradient(AttentionOps.P) != null)
            throw g.Fail("the attention probabilities P feed the loss; SparseAttentionGrad only takes the gradient of Y");
        var dy = g.OutputGradient(AttentionOps.Y);
        if (dy == null)
            return;
        // The backward reads the bias only through P; the bias itself gets no gradient (it is a frozen table).
        if (n.Inputs.Count > AttentionOps.AttnBias && n.Inputs[AttentionOps.AttnBias] is not null && g.NeedsGradient(AttentionOps.AttnBias))
            throw g.Fail("the attention bias (relative position / ALiBi) of SparseAttention is trained; the op takes no gradient into attn_bias, freeze it");
        var inputs = new Value?[AttentionOps.SparseAttentionGrad.Inputs.Count];
        inputs[AttentionOps.GradDY] = dy;
        foreach (var i in (int[])[AttentionOps.Q, AttentionOps.K, AttentionOps.V, AttentionOps.Indices])
            inputs[i + AttentionOps.GradShift] = n.Inputs[i];
        inputs[AttentionOps.GradP] = g.SavedOutput(AttentionOps.P);
        inputs[AttentionOps.GradKeyPadding] = AttentionOps.KeyPadding < n.Inputs.Count ? n.Inputs[AttentionOps.KeyPadding] : null;
        // dQ, dK, dV are the gradients of Q, K, V (positions 0, 1, 2 on both sides).
        int[] differentiable = [AttentionOps.Q, AttentionOps.K, AttentionOps.V];
        var outs = g.Emit(CustomOpLibrary.Domain, AttentionOps.SparseAttentionGrad.Name, TrimTrailingNulls(inputs),
            [.. differentiable.Select(g.NeedsGradient)], CopyAttributes(n));
        foreach (var i in differentiable)
        {
            if (g.NeedsGradient(i))
                g.AddGradient(i, outs[i]);
        }
    }


    // RoutedFFNGrad(dY, the 14 forward inputs, P, Sel, U) -> dX, dWr, dbr, dW1, db1, dW2, db2, dW3, dA1.. dB3
    // (positions from RoutedFfnOps).
    private static void RoutedFfn(IGradientContext g)
    {
        var n = g.Node;
        foreach (var o in (int[])[RoutedFfnOps.P, RoutedFfnOps.Sel, RoutedFfnOps.U])
        {
            if (g.OutputGradient(o) != null)
                throw g.Fail($"routing state output {o} feeds the loss; RoutedFFNGrad only takes the gradient of Y");
        }
        var dy = g.OutputGradient(RoutedFfnOps.Y);
        if (dy == null)
            return;
        bool frozenBase = n.GetInt(RoutedFfnOps.FrozenBaseAttr, RoutedFfnOps.DefaultFrozenBase) == 1;
        var sources = RoutedFfnOps.GradSources;
        var wanted = new bool[sources.Count];
        for (int o = 0; o < wanted.Length; o++)
        {
            int source = sources[o];
            bool present = source < n.Inputs.Count && n.Inputs[source] != null;
            wanted[o] = o == RoutedFfnOps.DX || (present && g.NeedsGradient(source));
            if (wanted[o] && frozenBase && RoutedFfnOps.BaseWeights.Contains(source))
                throw g.Fail($"input {source} is a base weight that is trainable here, but the node has frozen_base = 1; freeze it or rewrite with frozen_base = 0");
        }
        var inputs = new List<Value?> { dy };
        for (int i = 0; i < RoutedFfnOps.ForwardInputCount; i++)
            inputs.Add(i < n.Inputs.Count ? n.Inputs[i] : null);
        inputs.Add(g.SavedOutput(RoutedFfnOps.P));
        inputs.Add(g.SavedOutput(RoutedFfnOps.Sel));
        inputs.Add(g.SavedOutput(RoutedFfnOps.U));
        var outs = g.Emit(CustomOpLibrary.Domain, RoutedFfnOps.RoutedFfnGrad.Name, inputs, wanted, CopyAttributes(n));
        for (int o = 0; o < wanted.Length; o++)
        {
            if (wanted[o] && g.NeedsGradient(sources[o]))
                g.AddGradient(sources[o], outs[o]);
        }
    }

    // PQLoss(Z, codebook) -> loss; PQLossGrad(dLoss, Z, codebook) -> dZ, dCodebook.
    private static void PQLoss(IGradientContext g)
    {
        var n = g.Node;
        var dl = g.OutputGradient(0);
        if (dl == null)
            return;
        var schema = AttentionOps.PQLossGrad;
        var attrs = g.NeedsGradient(AttentionOps.PQZ) ? [] : schema.NodeAttributes((AttentionOps.DetachInputsAttr, 1L));
        var inputs = new Value?[schema.Inputs.Count];
        inputs[AttentionOps.PQGradDLoss] = dl;
        inputs[AttentionOps.PQGradZ] = n.Inputs[AttentionOps.PQZ];
        inputs[AttentionOps.PQGradCodebook] = n.Inputs[AttentionOps.PQCodebook];
        var outs = g.Emit(CustomOpLibrary.Domain, schema.Name, inputs, [true, true], attrs);
        if (g.NeedsGradient(AttentionOps.PQZ))
            g.AddGradient(AttentionOps.PQZ, outs[AttentionOps.PQGradDZ]);
        if (g.NeedsGradient(AttentionOps.PQCodebook))
            g.AddGradient(AttentionOps.PQCodebook, outs[AttentionOps.PQGradDCodebook]);
    }

    private static IEnumerable<Ir.Attribute> CopyAttributes(Node n) => n.Attributes.ToList();

    private static List<Value?> TrimTrailingNulls(IEnumerable<Value?> inputs)
    {
        var list = inputs.ToList();
        while (list.Count > 0 && list[^1] == null)
            list.RemoveAt(list.Count - 1);
        return list;
    }
}
