using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Canonicalization;
using Spt.Passes.Patterns;

namespace Spt.Passes.Recognition;

/// <summary>
/// The internal fused attention node, <c>spt.internal::AttentionCore</c>, that the first recognition stage makes
/// and later stages lower (or expand back to dense ops). It never stays in an output model.
/// <code>
/// Y = softmax(scale · Q·Kᵀ + bias, Where(cond, ·, fill)) · V        // dropout after softmax when present
/// inputs:  0 Q [.., Sq, E]  1 K [.., Sk, E]  2 V [.., Sk, Ev]  3 bias?  4 cond?  5 key_padding_mask? [B, Sk]
///          6 dropout ratio?  7 dropout training_mode?
/// attrs:   scale, effective_scale, causal, fill, scores_when_true, rank (3: heads folded into batch, 4: [B, H, S, E]),
///          heads (when known), dropout (0/1), source
/// </code>
/// </summary>
public static class AttentionCoreOp
{
    /// <summary>The domain of compiler-internal ops.</summary>
    public const string Domain = "spt.internal";

    /// <summary>The fused attention core's op type.</summary>
    public const string OpType = "AttentionCore";

    internal const int Q = 0, K = 1, V = 2, Bias = 3, Cond = 4, KeyPadding = 5, DropoutRatio = 6, DropoutTraining = 7, InputCount = 8;

    /// <summary>Whether <paramref name="node"/> is a fused attention core.</summary>
    public static bool Is(Node node) => node.OpType == OpType && node.Domain == Domain;

    /// <summary>
    /// The logit scale of a core: its <c>scale</c> attribute, where a missing or 0 scale means 1/sqrt(E) as on
    /// spt::SparseAttention (<see cref="CustomOps.AttentionOps.EffectiveScale"/>). Null when the scale is left to
    /// the default and the head dim <paramref name="headDim"/> is unknown.
    /// </summary>
    public static double? Scale(Node core, long? headDim)
    {
        var scale = core.GetFloat(CustomOps.AttentionOps.ScaleAttr, CustomOps.AttentionOps.DefaultScale);
        return scale != 0 ? scale : headDim is { } e ? CustomOps.AttentionOps.EffectiveScale(0, e) : null;
    }
}

/// <summary>What stage one found around one Softmax.</summary>
internal sealed record AttentionCoreMatch(
    Node Softmax,
    Node ScoresMatMul,
    Node OutputMatMul,
    Node? Dropout,
    Value Q,
    Value KTransposed,
    Value V,
    int Rank,
    double Scale,
    double EffectiveScale,
    IReadOnlyList<(Node Scalar, Node Consumer, int InputIndex)> QBypass,
    IReadOnlyList<(Node Scalar, Node Consumer, int InputIndex)> KBypass,
    Value? Bias,
    Value? Cond,
    double Fill,
    bool ScoresWhenTrue,
    bool Causal,
    Value? KeyPadding,
    IReadOnlyList<Node> Region);

/// <summary>
/// Stage one of attention recognition: <c>MatMul(Q, Kᵀ) [·scale] [+mask | Where(mask)] → Softmax(last axis)
/// [→ Dropout] → MatMul(·, V)</c> becomes one <c>spt.internal::AttentionCore</c>. Scalar Mul/Div on the scores, on
/// Q and on Kᵀ (through single-use head reshapes/transposes) are folded into the core's scale; the mask must be a
/// recognizable causal or padding mask.
/// </summary>
public sealed class AttentionCoreFusion : IPass
{
    /// <inheritdoc />
    public string Name => "attention-core-fusion";

    // PV = MatMul([Dropout](Softmax(scores)), V), Softmax over the last axis.
    private static readonly OpPattern OutputPattern = Pat.Op("MatMul",
        Pat.Optional("Dropout", Pat.Op("Softmax", Pat.Any("scores")).AttrLastAxis("axis", -1).Named("softmax")),
        Pat.Any("v")).Named("pv");

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var found = context.Result<RecognitionResults>();
        var shapes = new StaticShapes();
        var softmaxes = model.Graph.Nodes.Where(n => n.OpType == "Softmax" && n.IsDefaultDomain).ToList();
        // Symbolic shapes for mask probing, computed once (the masks' subgraphs are not changed by the rewrites).
        var symbolic = softmaxes.Count > 0 ? ShapeAnalysis.Run(model) : null;
        long opset = model.GetOpsetVersion("") ?? 17;
        bool changed = false;
        int fused = model.Graph.Nodes.Count(AttentionCoreOp.Is);
        foreach (var softmax in softmaxes)
        {
            var m = Match(softmax, shapes, symbolic, opset);
            if (m.Match is null)
            {
                // A Softmax over scores (a product of two computed tensors) is an attention block the compiler missed
                // and counts as found; any other Softmax (a classifier head, a router) is reported apart.
                if (IsOverScores(softmax))
                    found.AddUnmatched("attention", softmax, m.Reason!);
                else
                    found.AddUnmatched("softmax", softmax, "not over attention scores (no product of two computed tensors feeds it)");
                continue;
            }
            Rewrite(model.Graph, m.Match, fused++);
            changed = true;
        }
        return changed;
    }

    /// <summary>Matches the attention core around <paramref name="softmax"/>; pure.</summary>
    internal static (AttentionCoreMatch? Match, string? Reason) Match(Node softmax, StaticShapes shapes, ShapeAnalysis? symbolic = null, long opset = 17)
    {
        var probs = softmax.Outputs[0];
        if (probs.Uses.Count != 1 || probs.IsGraphOutput)
            return (null, $"softmax output has {probs.Uses.Count} uses (the attention core needs exactly one: the PV MatMul)");
        var consumer = probs.Uses[0].Node;
        Node? dropout = null;
        if (consumer.OpType == "Dropout" && consumer.IsDefaultDomain)
        {
            dropout = consumer;
            if (dropout.Outputs[0].Uses.Count != 1)
                return (null, "dropout after softmax has more than one use");
            consumer = dropout.Outputs[0].Uses[0].Node;
        }
        if (consumer.OpType != "MatMul" || !consumer.IsDefaultDomain)
            return (null, $"softmax output feeds {consumer.OpType} '{consumer.Name}', not a MatMul with V");
        var pv = OutputPattern.Match(consumer);
        if (!pv.Success || !ReferenceEquals(pv.Node("softmax"), softmax))
            return (null, pv.Success ? "softmax is the V operand of the PV MatMul, not the probabilities" : pv.Reason);
        var axis = softmax.GetInt("axis", -1);
        var rankScores = shapes.RankOf(softmax.Inputs[0]!);
        if (axis != -1 && (rankScores is null || axis != rankScores - 1))
            return (null, $"softmax axis {axis} is not the last axis");

        // Walk the score chain down from the softmax input: scalar scales, additive masks, Where masks.
        double scale = 1.0;
        Value? bias = null;
        Value? cond = null;
        double fill = 0;
        bool scoresWhenTrue = true;
        var region = new List<Node> { softmax, consumer };
        if (dropout != null)
            region.Add(dropout);
        var cur = softmax.Inputs[0]!;
        Node? qk = null;
        for (int steps = 0; steps < 8 && qk is null; steps++)
        {
            if (cur.Producer is not { } n || !n.IsDefaultDomain)
                return (null, $"scores {Quote(cur)} do not come from a MatMul");
            switch (n.OpType)
            {
                case "MatMul":
                    qk = n;
                    break;
                case "Mul" or "Div":
                {
                    int constIndex = ConstantValue.Scalar(n.Inputs[1]) is not null ? 1 : n.OpType == "Mul" && ConstantValue.Scalar(n.Inputs[0]) is not null ? 0 : -1;
                    if (constIndex < 0)
                        return (null, $"scores are scaled by {n.OpType} '{n.Name}' with a non-constant factor");
                    double c = ConstantValue.Scalar(n.Inputs[constIndex])!.Value;
                    if (c == 0 || !double.IsFinite(c))
                        return (null, $"scale factor {c} of {n.OpType} '{n.Name}' is not finite and nonzero");
                    scale *= n.OpType == "Mul" ? c : 1 / c;
                    region.Add(n);
                    cur = n.Inputs[1 - constIndex]!;
                    break;
                }
                case "Add":
                {
                    if (bias != null)
                        return (null, $"more than one additive mask on the scores (at '{n.Name}')");
                    int scoreSide = LeadsToScores(n.Inputs[0]!) ? 0 : LeadsToScores(n.Inputs[1]!) ? 1 : -1;
                    if (scoreSide < 0)
                        return (null, $"neither operand of Add '{n.Name}' leads to the QK MatMul");
                    bias = n.Inputs[1 - scoreSide];
                    region.Add(n);
                    cur = n.Inputs[scoreSide]!;
                    break;
                }
                case "Where":
                {
                    if (cond != null)
                        return (null, $"more than one Where mask on the scores (at '{n.Name}')");
                    int scoreSide = LeadsToScores(n.Inputs[1]!) ? 1 : LeadsToScores(n.Inputs[2]!) ? 2 : -1;
                    if (scoreSide < 0)
                        return (null, $"neither branch of Where '{n.Name}' leads to the QK MatMul");
                    if (ConstantValue.Scalar(n.Inputs[3 - scoreSide]) is not { } f || f > MaskAnalysis.LargeNegative)
                        return (null, $"Where '{n.Name}' does not fill masked scores with a large negative constant");
                    cond = n.Inputs[0];
                    fill = f;
                    scoresWhenTrue = scoreSide == 1;
                    region.Add(n);
                    cur = n.Inputs[scoreSide]!;
                    break;
                }
                default:
                    return (null, $"scores pass through {n.OpType} '{n.Name}', which the attention core does not model");
            }
        }
        if (qk is null)
            return (null, "score chain too long");
        region.Add(qk);
        if (Region.FindOutsideUse(region, new HashSet<Value>(consumer.Outputs)) is { } outside)
            return (null, outside.Reason);

        // Q and Kᵀ: peel scalar scales (through single-use reshapes/transposes) into the scale.
        var (q, qScale, qBypass, qExtra) = PeelScalars(qk.Inputs[0]!);
        var (kt, kScale, kBypass, kExtra) = PeelScalars(qk.Inputs[1]!);
        int rank = shapes.RankOf(kt) ?? (kt.Producer is { OpType: "Transpose" } t && t.GetInts("perm") is { } perm ? perm.Count : 0);
        if (rank == 0)
            rank = shapes.RankOf(q) ?? 0;
        if (rank is not (3 or 4))
            return (null, rank == 0 ? "cannot tell the rank of Q·Kᵀ" : $"Q·Kᵀ has rank {rank}; expected 3 ([B*H, S, E]) or 4 ([B, H, S, E])");
        // Mask meaning: causal and/or key padding; anything else keeps the block dense. What the mask computes is
        // read by evaluating it at probe sizes; masks the evaluator cannot run are read from their structure.
        bool causal = false;
        Value? keyPadding = null;
        if (cond != null || bias != null)
        {
            string? notEvaluated = "no symbolic shapes";
            var probed = symbolic is null ? null : MaskProbing.Classify(bias, cond, scoresWhenTrue, qk.Outputs[0], rank, symbolic, opset, out notEvaluated);
            if (probed is { Window: > 0 } windowed)
                return (null, $"the mask is a causal sliding window of {windowed.Window} keys{(windowed.KeyPadding is null ? "" : " with key padding")}; " +
                              "the sparse attention kernels have no window attribute, so the block stays dense");
            if (probed is { Reason: null })
            {
                causal = probed.Causal;
                keyPadding = probed.KeyPadding;
            }
            else
            {
                // Not evaluated, or evaluated to no known meaning: the exporters' known structural forms still count
                // (a mask cut from a fixed-size buffer need not broadcast at the probe sizes).
                var structural = ReadStructure(cond, bias, scoresWhenTrue, shapes);
                if (structural.Reason is { } why)
                    return (null, probed?.Reason ?? $"{why}, and the mask could not be evaluated: {notEvaluated}");
                causal = structural.Causal;
                keyPadding = structural.KeyPadding;
            }
        }

        double total = scale * qScale * kScale;
        double effective = total * qExtra * kExtra;
        return (new AttentionCoreMatch(softmax, qk, consumer, dropout, q, kt, pv["v"], rank, total, effective, qBypass, kBypass,
            bias, cond, fill, scoresWhenTrue, causal, keyPadding, region), null);

        bool LeadsToScores(Value v)
        {
            for (int i = 0; i < 8; i++)
            {
                if (v.Producer is not { } p || !p.IsDefaultDomain)
                    return false;
                if (p.OpType == "MatMul")
                    return true;
                if (p.OpType is "Reshape" or "Transpose" or "Cast" or "Identity" or "Squeeze" or "Unsqueeze")
                {
                    v = p.Inputs[0]!;
                    continue;
                }
                if (p.OpType is not ("Mul" or "Div" or "Add" or "Where"))
                    return false;
                v = p.OpType == "Where" ? (LeadsToScores(p.Inputs[1]!) ? p.Inputs[1]! : p.Inputs[2]!) : p.Inputs[0]!;
            }
            return false;
        }
    }

    // The mask read from its structure: tril/triu buffers and Trilu as Where conditions, (1 - mask) * large negative
    // padding and triu(large negative, 1) as additive terms.
    private static MaskMeaning ReadStructure(Value? cond, Value? bias, bool scoresWhenTrue, StaticShapes shapes)
    {
        bool causal = false;
        if (cond != null)
        {
            var tri = MaskAnalysis.Triangle(cond, shapes);
            if (tri == TriangleKind.Unknown || (tri == TriangleKind.KeepLower) != scoresWhenTrue)
                return MaskMeaning.Fail($"Where condition {Quote(cond)} is not a causal (tril) mask");
            causal = true;
        }
        if (bias is null)
            return new MaskMeaning(causal, null, null);
        var meaning = MaskAnalysis.Additive(bias, shapes);
        return meaning.Reason != null ? meaning : meaning with { Causal = causal || meaning.Causal };
    }

    /// <summary>
    /// Whether <paramref name="softmax"/> normalizes scores: within a few elementwise, layout and mask ops above it
    /// lies a MatMul (or Einsum) whose two operands are both computed (neither is a weight), as in Q·Kᵀ.
    /// </summary>
    internal static bool IsOverScores(Node softmax)
    {
        var seen = new HashSet<Value>();
        var queue = new Queue<(Value Value, int Depth)>();
        queue.Enqueue((softmax.Inputs[0]!, 0));
        while (queue.Count > 0)
        {
            var (v, depth) = queue.Dequeue();
            if (!seen.Add(v) || depth > 12 || v.Producer is not { } p || !p.IsDefaultDomain)
                continue;
            if (p.OpType is "MatMul" or "Einsum")
            {
                if (p.Inputs.Count >= 2 && p.Inputs.All(i => i is not null && ConstantValue.Of(i) is null && Canonicalization.Rewriting.WeightInitializer(i) is null))
                    return true;
                continue;
            }
            if (p.OpType is "Mul" or "Div" or "Add" or "Sub" or "Where" or "Reshape" or "Transpose" or "Cast" or "Identity" or "Squeeze"
                or "Unsqueeze" or "Expand" or "Slice" or "Clip" or "Tanh" or "Dropout")
            {
                foreach (var input in p.Inputs)
                {
                    if (input is not null)
                        queue.Enqueue((input, depth + 1));
                }
            }
        }
        return false;
    }

    /// <summary>
    /// Walks up from an operand of the QK MatMul through Mul/Div by scalar constants and single-use
    /// Reshape/Transpose/Identity. Returns the value to feed instead (the first scalar op is bypassed when it is
    /// the operand itself), the product of peeled factors, the edits that bypass deeper scalar ops, and the factor of
    /// scalings seen beyond a multi-use value (kept in the graph: the operand is already pre-scaled by it).
    /// </summary>
    private static (Value Operand, double Scale, List<(Node, Node, int)> Bypass, double Unpeeled) PeelScalars(Value operand)
    {
        double scale = 1;
        double unpeeled = 1;
        var bypass = new List<(Node, Node, int)>();
        var result = operand;
        var cur = operand;
        Node? consumer = null; // who reads `cur` once the rewrite is done (null: the core itself)
        bool exclusive = true; // every value between the core and `cur` is read only by this chain (and Shape ops)
        for (int steps = 0; steps < 8; steps++)
        {
            if (cur.Producer is not { } n || !n.IsDefaultDomain)
                break;
            if (n.OpType is "Mul" or "Div" && ScalarSide(n) is { } side)
            {
                double c = ConstantValue.Scalar(n.Inputs[side])!.Value;
                double f = n.OpType == "Mul" ? c : 1 / c;
                var data = n.Inputs[1 - side]!;
                if (!double.IsFinite(f) || f == 0)
                    break;
                if (consumer is null)
                {
                    scale *= f;
                    result = data;
                }
                else if (exclusive)
                {
                    scale *= f;
                    bypass.Add((n, consumer, 0));
                }
                else
                {
                    unpeeled *= f;
                }
                cur = data;
                continue;
            }
            if (n.OpType is "Reshape" or "Transpose" or "Identity")
            {
                exclusive &= !cur.IsGraphOutput && cur.Uses.Count(u => u.Node.OpType != "Shape") == 1;
                consumer = n;
                cur = n.Inputs[0]!;
                continue;
            }
            break;
        }
        return (result, scale, bypass, unpeeled);
    }

    private static int? ScalarSide(Node n)
    {
        if (ConstantValue.Scalar(n.Inputs[1]) is not null)
            return 1;
        if (n.OpType == "Mul" && ConstantValue.Scalar(n.Inputs[0]) is not null)
            return 0;
        return null;
    }

    private static void Rewrite(Graph graph, AttentionCoreMatch m, int coreIndex)
    {
        var editor = graph.Edit();
        foreach (var (scalar, consumer, index) in m.QBypass.Concat(m.KBypass))
            editor.SetInput(consumer, index, scalar.Inputs[ScalarSide(scalar) == 1 ? 0 : 1]);

        // K = transpose of Kᵀ over the last two axes: fold into Kᵀ's own Transpose when it has one.
        var k = TransposeLastTwo(editor, m.ScoresMatMul, m.KTransposed, m.Rank);
        var inputs = new Value?[AttentionCoreOp.InputCount];
        inputs[AttentionCoreOp.Q] = m.Q;
        inputs[AttentionCoreOp.K] = k;
        inputs[AttentionCoreOp.V] = m.V;
        inputs[AttentionCoreOp.Bias] = m.Bias;
        inputs[AttentionCoreOp.Cond] = m.Cond;
        inputs[AttentionCoreOp.KeyPadding] = m.KeyPadding;
        if (m.Dropout != null)
        {
            inputs[AttentionCoreOp.DropoutRatio] = m.Dropout.Inputs.Count > 1 ? m.Dropout.Inputs[1] : null;
            inputs[AttentionCoreOp.DropoutTraining] = m.Dropout.Inputs.Count > 2 ? m.Dropout.Inputs[2] : null;
        }
        var attrs = new List<Ir.Attribute>
        {
            Ir.Attribute.FromFloat("scale", (float)m.Scale),
            Ir.Attribute.FromFloat("effective_scale", (float)m.EffectiveScale),
            Ir.Attribute.FromInt("causal", m.Causal ? 1 : 0),
            Ir.Attribute.FromFloat("fill", (float)Math.Max(m.Fill, float.MinValue)),
            Ir.Attribute.FromInt("scores_when_true", m.ScoresWhenTrue ? 1 : 0),
            Ir.Attribute.FromInt("rank", m.Rank),
            Ir.Attribute.FromInt("dropout", m.Dropout != null ? 1 : 0),
            Ir.Attribute.FromString("source", "decomposed"),
            Ir.Attribute.FromString("region", string.Join(",", m.Region.Select(n => n.Name))),
        };
        var core = editor.CreateNode(AttentionCoreOp.OpType, inputs, 1, attrs, AttentionCoreOp.Domain,
            name: $"{(m.Softmax.Name.Length > 0 ? m.Softmax.Name : "attention")}/AttentionCore_{coreIndex}");
        editor.InsertBefore(m.OutputMatMul, core);
        editor.ReplaceAllUsesWith(m.OutputMatMul.Outputs[0], core.Outputs[0], replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, m.Region);
    }

    /// <summary>K [.., Sk, E] from Kᵀ [.., E, Sk]: a new Transpose (folded with Kᵀ's own Transpose when it has one).</summary>
    internal static Value TransposeLastTwo(GraphEditor editor, Node anchor, Value kt, int rank)
    {
        long[] perm;
        Value source;
        if (kt.Producer is { OpType: "Transpose" } t && t.IsDefaultDomain && t.GetInts("perm") is { } p && p.Count == rank)
        {
            perm = [.. p];
            (perm[rank - 1], perm[rank - 2]) = (perm[rank - 2], perm[rank - 1]);
            source = t.Inputs[0]!;
        }
        else
        {
            perm = [.. Enumerable.Range(0, rank).Select(i => (long)i)];
            (perm[rank - 1], perm[rank - 2]) = (perm[rank - 2], perm[rank - 1]);
            source = kt;
        }
        if (perm.Select((x, i) => x == i).All(b => b))
            return source;
        var node = editor.CreateNode("Transpose", [source], 1, [Ir.Attribute.FromInts("perm", perm)]);
        editor.InsertBefore(anchor, node);
        return node.Outputs[0];
    }

    private static string Quote(Value v) => "'" + v.Name + "'";
}
