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
        new("SparseAttention", SparseAttention),
        new("RoutedFFN", RoutedFfn),
        new("PQLoss", PQLoss),
        new("PQEncode", null, "codes are integer argmins"),
        new("PQTopK", null, "key indices are integer selections"),
    ];

    // SparseAttention(Q, K, V, indices, mask?) -> Y, P
    // SparseAttentionGrad(dY, Q, K, V, indices, P, mask?) -> dQ, dK, dV (same scale/clamp/causal).
    private static void SparseAttention(IGradientContext g)
    {
        var n = g.Node;
        if (g.OutputGradient(1) != null)
            throw g.Fail("the attention probabilities P feed the loss; SparseAttentionGrad only takes the gradient of Y");
        var dy = g.OutputGradient(0);
        if (dy == null)
            return;
        var p = g.SavedOutput(1);
        Value?[] inputs = [dy, n.Inputs[0], n.Inputs[1], n.Inputs[2], n.Inputs[3], p, n.Inputs.Count > 4 ? n.Inputs[4] : null];
        var outs = g.Emit(CustomOpLibrary.Domain, "SparseAttentionGrad", TrimTrailingNulls(inputs),
            [g.NeedsGradient(0), g.NeedsGradient(1), g.NeedsGradient(2)], CopyAttributes(n));
        for (int i = 0; i < 3; i++)
        {
            if (g.NeedsGradient(i))
                g.AddGradient(i, outs[i]);
        }
    }

    // The base weights RoutedFFNGrad computes no gradient for when frozen_base = 1.
    private static readonly HashSet<int> FfnBaseWeights =
        [RoutedFfnOps.W1, RoutedFfnOps.B1, RoutedFfnOps.W2, RoutedFfnOps.B2, RoutedFfnOps.W3];

    // RoutedFFNGrad(dY, the 14 forward inputs, P, Sel, U) -> dX, dWr, dbr, dW1, db1, dW2, db2, dW3, dA1.. dB3
    // (positions from RoutedFfnOps).
    private static void RoutedFfn(IGradientContext g)
    {
        var n = g.Node;
        for (int o = 1; o < 4; o++)
        {
            if (g.OutputGradient(o) != null)
                throw g.Fail($"routing state output {o} feeds the loss; RoutedFFNGrad only takes the gradient of Y");
        }
        var dy = g.OutputGradient(0);
        if (dy == null)
            return;
        bool frozenBase = n.GetInt("frozen_base", 1) == 1;
        var sources = RoutedFfnOps.GradSources;
        var wanted = new bool[sources.Count];
        for (int o = 0; o < wanted.Length; o++)
        {
            int source = sources[o];
            bool present = source < n.Inputs.Count && n.Inputs[source] != null;
            wanted[o] = o == 0 || (present && g.NeedsGradient(source));
            if (wanted[o] && frozenBase && FfnBaseWeights.Contains(source))
                throw g.Fail($"input {source} is a base weight that is trainable here, but the node has frozen_base = 1; freeze it or rewrite with frozen_base = 0");
        }
        var inputs = new List<Value?> { dy };
        for (int i = 0; i < RoutedFfnOps.ForwardInputCount; i++)
            inputs.Add(i < n.Inputs.Count ? n.Inputs[i] : null);
        inputs.Add(g.SavedOutput(RoutedFfnOps.P));
        inputs.Add(g.SavedOutput(RoutedFfnOps.Sel));
        inputs.Add(g.SavedOutput(RoutedFfnOps.U));
        var outs = g.Emit(CustomOpLibrary.Domain, "RoutedFFNGrad", inputs, wanted, CopyAttributes(n));
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
        var attrs = new List<Ir.Attribute>();
        if (!g.NeedsGradient(0))
            attrs.Add(Ir.Attribute.FromInt("detach_inputs", 1));
        var outs = g.Emit(CustomOpLibrary.Domain, "PQLossGrad", [dl, n.Inputs[0], n.Inputs[1]], [true, true], attrs);
        if (g.NeedsGradient(0))
            g.AddGradient(0, outs[0]);
        if (g.NeedsGradient(1))
            g.AddGradient(1, outs[1]);
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
