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
    IReadOnlyList<Node> Region,
    FoldedHeads? Folded = null,
    long Window = 0,
    bool BiasIsScoreBias = false);

/// <summary>
/// Heads folded into the batch ([B·H, S, E] operands, as bmm-based exporters write attention) around scores that are
/// viewed as [B, H, Sq, Sk] for the mask or the softmax: the core is built unfolded, with <see cref="Heads"/> heads.
/// </summary>
/// <param name="Heads">H, read from the [B, H, Sq, Sk] view.</param>
/// <param name="UnfoldV">V is [B·H, Sk, Ev] (bmm with V) rather than [B, H, Sk, Ev].</param>
/// <param name="FoldOutput">The PV product is [B·H, Sq, Ev]: the core's [B, H, Sq, Ev] output is folded back.</param>
/// <param name="BiasFolded">The additive term applies to the folded [B·H, Sq, Sk] scores (a score bias such as BLOOM's
/// ALiBi inside baddbmm; a mask there is refused).</param>
internal sealed record FoldedHeads(long Heads, bool UnfoldV, bool FoldOutput, bool BiasFolded = false);

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
    internal static Matched<AttentionCoreMatch> Match(Node softmax, StaticShapes shapes, ShapeAnalysis? symbolic = null, long opset = 17)
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
        // Probabilities viewed from [B, H, Sq, Sk] to [B·H, Sq, Sk] before a bmm with V (BLOOM).
        Node? probsView = null;
        if (consumer is { OpType: "Reshape" } pr && pr.IsDefaultDomain && pr.Outputs[0].Uses.Count == 1 && !pr.Outputs[0].IsGraphOutput)
        {
            probsView = pr;
            consumer = pr.Outputs[0].Uses[0].Node;
        }
        if (consumer.OpType != "MatMul" || !consumer.IsDefaultDomain)
            return (null, $"softmax output feeds {consumer.OpType} '{consumer.Name}', not a MatMul with V");
        var pvMatch = probsView is null ? OutputPattern.Match(consumer) : null;
        if (pvMatch is { } pm && (!pm.Success || !ReferenceEquals(pm.Node("softmax"), softmax)))
            return (null, pm.Success ? "softmax is the V operand of the PV MatMul, not the probabilities" : pm.Reason);
        if (probsView is not null && !ReferenceEquals(consumer.Inputs[0], probsView.Outputs[0]))
            return (null, $"the viewed probabilities of Reshape '{probsView.Name}' are the V operand of the PV MatMul");
        var vOperand = probsView is null ? pvMatch!["v"] : consumer.Inputs[1]!;
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
        if (probsView != null)
            region.Add(probsView);
        // Views of the scores between [B·H, Sq, Sk] and [B, H, Sq, Sk], walking down from the softmax.
        var views = new List<Node>();
        var cur = softmax.Inputs[0]!;
        Node? qk = null;
        for (int steps = 0; steps < 12 && qk is null; steps++)
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
                case "Reshape":
                    views.Add(n);
                    region.Add(n);
                    cur = n.Inputs[0]!;
                    break;
                case "Max" when ConstantValue.Scalar(n.Inputs[1]) is { } floor && floor <= MaskAnalysis.LargeNegative && LeadsToScores(n.Inputs[0]!):
                    // max(scores, finfo.min) after the mask (OPT) only lifts -inf to the lowest float: same softmax.
                    region.Add(n);
                    cur = n.Inputs[0]!;
                    break;
                case "Add" when IsZeros(n.Inputs[0]!) || IsZeros(n.Inputs[1]!):
                {
                    // baddbmm(zeros, q, kᵀ, beta, alpha) = beta·0 + alpha·q·kᵀ (GPT-NeoX): the zero term adds nothing.
                    int zero = IsZeros(n.Inputs[0]!) ? 0 : 1;
                    region.Add(n);
                    if (n.Inputs[zero]!.Producer is { } zp && zp.OpType != "ConstantOfShape")
                        region.Add(zp);
                    cur = n.Inputs[1 - zero]!;
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

        // Q and Kᵀ: peel scalar scales (through single-use reshapes/transposes) into the scale.
        var (q, qScale, qBypass, qExtra) = PeelScalars(qk.Inputs[0]!);
        var (kt, kScale, kBypass, kExtra) = PeelScalars(qk.Inputs[1]!);
        int rank = shapes.RankOf(kt) ?? (kt.Producer is { OpType: "Transpose" } t && t.GetInts("perm") is { } perm ? perm.Count : 0);
        if (rank == 0)
            rank = shapes.RankOf(q) ?? 0;
        if (rank is not (3 or 4))
            return (null, rank == 0 ? "cannot tell the rank of Q·Kᵀ" : $"Q·Kᵀ has rank {rank}; expected 3 ([B*H, S, E]) or 4 ([B, H, S, E])");
        // The value the masks apply to: the scores themselves, or their [B, H, Sq, Sk] view.
        var maskScores = qk.Outputs[0];
        FoldedHeads? folded = null;
        if (views.Count > 0 || probsView != null)
        {
            var f = ReadFoldedHeads(qk, views, probsView, softmax, consumer, vOperand, rank, region, shapes, symbolic, cond, bias, out var unfoldedScores);
            if (f.Folded is null)
                return (null, f.Reason);
            folded = f.Folded;
            maskScores = unfoldedScores!;
        }
        if (Region.FindOutsideUse(region, new HashSet<Value>(consumer.Outputs)) is { } outside)
            return (null, outside.Reason);
        // Mask meaning: causal and/or key padding; anything else keeps the block dense. What the mask computes is
        // read by evaluating it at probe sizes; masks the evaluator cannot run are read from their structure.
        bool causal = false;
        long window = 0;
        Value? keyPadding = null;
        // An additive term that is no mask the kernels take (a relative position bias, ALiBi, a soft bias) is passed to
        // SparseAttention as attn_bias, read at the selected keys: exact whatever it holds.
        bool scoreBias = false;
        if (bias != null && !IsKnownMask(bias, maskScores, folded is null ? rank : 4, symbolic, shapes, opset))
        {
            int biasRank = shapes.RankOf(bias) ?? symbolic?.ShapeOf(bias)?.Count ?? -1;
            int limit = folded is { BiasFolded: true } ? 3 : rank == 3 && folded is null ? 3 : 4;
            if (biasRank < 0 || biasRank > limit)
                return (null, $"the additive term '{bias.Name}' on the scores is no mask and its rank ({(biasRank < 0 ? "unknown" : biasRank.ToString(System.Globalization.CultureInfo.InvariantCulture))}) does not fit an attention bias [1|B, 1|H, 1|Sq, Sk]");
            scoreBias = true;
        }
        else if (folded is { BiasFolded: true })
        {
            return (null, $"mask term '{bias!.Name}' applies to the folded [B·H, Sq, Sk] scores; only a mask on the [B, H, Sq, Sk] view is modelled");
        }
        var maskBias = scoreBias ? null : bias;
        if (cond != null || maskBias != null)
        {
            string? notEvaluated = "no symbolic shapes";
            var probed = symbolic is null ? null : MaskProbing.Classify(maskBias, cond, scoresWhenTrue, maskScores, folded is null ? rank : 4, symbolic, opset, out notEvaluated);
            if (probed is { Reason: null })
            {
                causal = probed.Causal;
                keyPadding = probed.KeyPadding;
                window = probed.Window;
            }
            else
            {
                // Not evaluated, or evaluated to no known meaning: the exporters' known structural forms still count
                // (a mask cut from a fixed-size buffer need not broadcast at the probe sizes).
                var structural = ReadStructure(cond, maskBias, scoresWhenTrue, shapes);
                if (structural.Reason is { } why)
                    return (null, probed?.Reason ?? $"{why}, and the mask could not be evaluated: {notEvaluated}");
                causal = structural.Causal;
                keyPadding = structural.KeyPadding;
            }
        }

        double total = scale * qScale * kScale;
        double effective = total * qExtra * kExtra;
        return (new AttentionCoreMatch(softmax, qk, consumer, dropout, q, kt, vOperand, rank, total, effective, qBypass, kBypass,
            bias, cond, fill, scoresWhenTrue, causal, keyPadding, region, folded, window, scoreBias), null);

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
                if (p.OpType is not ("Mul" or "Div" or "Add" or "Where" or "Max"))
                    return false;
                v = p.OpType == "Where" ? (LeadsToScores(p.Inputs[1]!) ? p.Inputs[1]! : p.Inputs[2]!) : p.Inputs[0]!;
            }
            return false;
        }
    }

    /// <summary>
    /// Reads the views around scores computed with heads folded into the batch: <paramref name="views"/> (walking down
    /// from the softmax) must alternate between [B·H, Sq, Sk] and [B, H, Sq, Sk], each only splitting or merging the
    /// leading dim, ending in the [B·H, ..] product of the QK MatMul; a view of the probabilities goes back to
    /// [B·H, Sq, Sk] before a bmm with V. Masks may only apply to the [B, H, Sq, Sk] view.
    /// </summary>
    private static (FoldedHeads? Folded, string? Reason) ReadFoldedHeads(Node qk, List<Node> views, Node? probsView, Node softmax, Node pv,
        Value v, int rank, IReadOnlyCollection<Node> regionNodes, StaticShapes shapes, ShapeAnalysis? symbolic, Value? cond, Value? bias, out Value? unfoldedScores)
    {
        unfoldedScores = null;
        if (rank != 3)
            return (null, $"scores of rank {rank} pass through Reshape '{(views.Count > 0 ? views[0] : probsView!).Name}'; only [B·H, Sq, Sk] scores viewed as [B, H, Sq, Sk] are modelled");
        if (views.Count is 0 or > 2)
            return (null, views.Count == 0
                ? $"the probabilities are viewed by Reshape '{probsView!.Name}' but the scores never are: nothing to fold back"
                : $"the scores pass through {views.Count} Reshapes; expected one view to [B, H, Sq, Sk] and at most one back");
        // Innermost view: [B·H, Sq, Sk] -> [B, H, Sq, Sk].
        var inner = views[^1];
        if (!SplitsLeading(inner, shapes, symbolic, out long heads, out string? why))
            return (null, why);
        var outer = views.Count == 2 ? views[0] : null;
        if (outer != null && !MergesLeading(outer, shapes, symbolic, out why))
            return (null, why);
        if (probsView != null && (outer != null || !MergesLeading(probsView, shapes, symbolic, out why)))
            return (null, outer != null ? $"the scores are viewed back to [B·H, Sq, Sk] by '{outer.Name}' and the probabilities again by '{probsView.Name}'" : why);
        // The softmax runs on [B, H, ..] unless the scores were viewed back; the PV product is [B·H, ..] when the
        // probabilities it reads are.
        bool softmaxFolded = outer != null;
        bool pvFolded = softmaxFolded || probsView != null;
        int? vRank = shapes.RankOf(v);
        if (vRank != (pvFolded ? 3 : 4))
            return (null, $"V '{v.Name}' has rank {(vRank is { } vr ? vr.ToString(System.Globalization.CultureInfo.InvariantCulture) : "unknown")}; the {(pvFolded ? "[B·H, Sq, Sk]" : "[B, H, Sq, Sk]")} probabilities need {(pvFolded ? 3 : 4)}");
        // Every mask term must sit on the [B, H, Sq, Sk] view (between the views), where its meaning is read; an
        // additive term on the folded scores may still be a score bias (decided by the caller).
        bool OnFolded(Value? term) => term is not null && term.Uses.Select(u => u.Node).FirstOrDefault(u => regionNodes.Contains(u)) is { } user && !IsBetween(user, inner, outer ?? softmax);
        if (OnFolded(cond))
            return (null, $"mask term '{cond!.Name}' applies to the folded [B·H, Sq, Sk] scores; only a mask on the [B, H, Sq, Sk] view is modelled");
        unfoldedScores = inner.Outputs[0];
        return (new FoldedHeads(heads, UnfoldV: pvFolded, FoldOutput: shapes.RankOf(pv.Outputs[0]) == 3, BiasFolded: OnFolded(bias)), null);

        // Whether `node` lies on the score chain between the inner view and `top` (exclusive of the inner view).
        static bool IsBetween(Node node, Node innerView, Node top)
        {
            var cur = top;
            for (int i = 0; i < 16 && cur != null; i++)
            {
                if (ReferenceEquals(cur, node))
                    return true;
                if (ReferenceEquals(cur, innerView))
                    return false;
                cur = cur.Inputs.Select(x => x?.Producer).FirstOrDefault(p => p != null && p.IsDefaultDomain && IsChainOp(p));
            }
            return false;
        }

        static bool IsChainOp(Node p) => p.OpType is "Reshape" or "Add" or "Where" or "Max" or "Mul" or "Div" or "MatMul" or "Softmax" or "Dropout";
    }

    // Reshape [X, Sq, Sk] -> [B, H, Sq, Sk] with X = B·H: the last two dims kept, H a known number.
    private static bool SplitsLeading(Node view, StaticShapes shapes, ShapeAnalysis? symbolic, out long heads, out string? why)
    {
        heads = 0;
        why = null;
        var target = shapes.IntsOf(view.Inputs[1]!);
        var outShape = shapes.ShapeOf(view.Outputs[0]);
        long? h = outShape is { Count: 4 } os ? os[1] : null;
        h ??= target is { Count: 4 } t && t[1] is > 0 ? t[1] : null;
        if (outShape?.Count is not (null or 4) || (target is not null && target.Count != 4))
        {
            why = $"Reshape '{view.Name}' of the [B·H, Sq, Sk] scores does not view them as [B, H, Sq, Sk]";
            return false;
        }
        if (h is not { } hh || hh < 1)
        {
            why = $"the number of heads in the [B, H, Sq, Sk] view '{view.Name}' is not statically known";
            return false;
        }
        if (!KeepsLastTwo(view.Inputs[0]!, view.Outputs[0], shapes, symbolic))
        {
            why = $"Reshape '{view.Name}' does not keep the scores' last two dims (Sq, Sk)";
            return false;
        }
        heads = hh;
        return true;
    }

    // Reshape [B, H, Sq, Sk] -> [B·H, Sq, Sk]: rank 3, the last two dims kept.
    private static bool MergesLeading(Node view, StaticShapes shapes, ShapeAnalysis? symbolic, out string? why)
    {
        why = null;
        if (shapes.RankOf(view.Outputs[0]) is not 3 || shapes.RankOf(view.Inputs[0]!) is not (null or 4) || !KeepsLastTwo(view.Inputs[0]!, view.Outputs[0], shapes, symbolic))
        {
            why = $"Reshape '{view.Name}' does not merge [B, H, Sq, Sk] back to [B·H, Sq, Sk]";
            return false;
        }
        return true;
    }

    // Whether b's last two dims may be a's: no two known sizes or two named symbols differ (the symbolic analysis
    // names dims it cannot relate with fresh "?" symbols, which prove nothing either way).
    private static bool KeepsLastTwo(Value a, Value b, StaticShapes shapes, ShapeAnalysis? symbolic)
    {
        var sa = symbolic?.ShapeOf(a);
        var sb = symbolic?.ShapeOf(b);
        if (sa is { Count: >= 2 } && sb is { Count: >= 2 } && (Differ(sa[^1], sb[^1]) || Differ(sa[^2], sb[^2])))
            return false;
        var fa = shapes.ShapeOf(a);
        var fb = shapes.ShapeOf(b);
        return !(fa is { Count: >= 2 } && fb is { Count: >= 2 } && ((fa[^1] is { } x && fb[^1] is { } y && x != y) || (fa[^2] is { } p && fb[^2] is { } r && p != r)));
    }

    private static bool Differ(Dim a, Dim b) =>
        (a.Value is { } x && b.Value is { } y && x != y)
        || (a.Value is null && b.Value is null && Named(a) && Named(b) && a.Param != b.Param)
        || (a.Value is not null && Named(b)) || (b.Value is not null && Named(a));

    private static bool Named(Dim d) => !string.IsNullOrEmpty(d.Param) && !d.Param.StartsWith('?');

    // A tensor of zeros: ConstantOfShape with a zero (or absent) value, possibly scaled by a constant (baddbmm's beta).
    private static bool IsZeros(Value v)
    {
        if (v.Producer is { OpType: "Mul" } m && m.IsDefaultDomain && (ConstantValue.Scalar(m.Inputs[1]) is not null || ConstantValue.Scalar(m.Inputs[0]) is not null))
            v = ConstantValue.Scalar(m.Inputs[1]) is not null ? m.Inputs[0]! : m.Inputs[1]!;
        if (ConstantValue.Of(v) is { } c)
            return c.ElementType != ElementType.String && c.ToDoubleArray().All(x => x == 0);
        if (v.Producer is { OpType: "ConstantOfShape" } z && z.IsDefaultDomain)
            return z.GetAttribute("value") is not { Kind: Ir.AttributeKind.Tensor } a || a.AsTensor().ToDoubleArray().All(x => x == 0);
        return false;
    }

    // Whether an additive term alone is a mask the kernels take (none, causal, key padding, sliding window), by
    // evaluation or, failing that, by its structure.
    private static bool IsKnownMask(Value bias, Value maskScores, int rank, ShapeAnalysis? symbolic, StaticShapes shapes, long opset)
    {
        if (symbolic is not null && MaskProbing.Classify(bias, null, true, maskScores, rank, symbolic, opset, out _) is { } probed)
            return probed.Reason is null;
        return MaskAnalysis.Additive(bias, shapes).Reason is null;
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
                or "Unsqueeze" or "Expand" or "Slice" or "Clip" or "Tanh" or "Dropout" or "Max" or "Min")
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
        Value q = m.Q, v = m.V;
        int rank = m.Rank;
        if (m.Folded is { } f)
        {
            // [B·H, S, E] -> [B, H, S, E]: the core runs on the unfolded heads.
            q = Unfold(editor, m.OutputMatMul, q, f.Heads);
            k = Unfold(editor, m.OutputMatMul, k, f.Heads);
            if (f.UnfoldV)
                v = Unfold(editor, m.OutputMatMul, v, f.Heads);
            rank = 4;
        }
        var inputs = new Value?[AttentionCoreOp.InputCount];
        inputs[AttentionCoreOp.Q] = q;
        inputs[AttentionCoreOp.K] = k;
        inputs[AttentionCoreOp.V] = v;
        inputs[AttentionCoreOp.Bias] = m.Bias;
        if (m.BiasIsScoreBias && m.Folded is { BiasFolded: true } fb && m.Bias is { } folded3 && new StaticShapes().ShapeOf(folded3) is not [1, ..])
            inputs[AttentionCoreOp.Bias] = Unfold(editor, m.OutputMatMul, folded3, fb.Heads); // [B·H, 1|Sq, Sk] -> [B, H, 1|Sq, Sk]
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
            Ir.Attribute.FromInt("window", m.Window),
            Ir.Attribute.FromInt("score_bias", m.BiasIsScoreBias ? 1 : 0),
            Ir.Attribute.FromFloat("fill", (float)Math.Max(m.Fill, float.MinValue)),
            Ir.Attribute.FromInt("scores_when_true", m.ScoresWhenTrue ? 1 : 0),
            Ir.Attribute.FromInt("rank", rank),
            Ir.Attribute.FromInt("dropout", m.Dropout != null ? 1 : 0),
            Ir.Attribute.FromString("source", "decomposed"),
            Ir.Attribute.FromString("region", string.Join(",", m.Region.Select(n => n.Name))),
        };
        if (m.Folded is { } heads)
            attrs.Add(Ir.Attribute.FromInt("heads", heads.Heads));
        var core = editor.CreateNode(AttentionCoreOp.OpType, inputs, 1, attrs, AttentionCoreOp.Domain,
            name: $"{(m.Softmax.Name.Length > 0 ? m.Softmax.Name : "attention")}/AttentionCore_{coreIndex}");
        editor.InsertBefore(m.OutputMatMul, core);
        var y = core.Outputs[0];
        if (m.Folded is { FoldOutput: true })
            y = Fold(editor, m.OutputMatMul, y);
        editor.ReplaceAllUsesWith(m.OutputMatMul.Outputs[0], y, replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, m.Region);
    }

    // x [B·H, S, E] -> Reshape(x, [-1, H, S, E]) with S, E read from x's shape.
    private static Value Unfold(GraphEditor editor, Node anchor, Value x, long heads)
    {
        var graph = editor.Graph;
        var lead = editor.AddInitializer(Tensor.Create(graph.UniqueName(x.Name + "/unfold_lead"), new long[] { -1, heads }, 2));
        var shape = EmitBefore(editor, anchor, "Shape", [x]);
        var tail = EmitBefore(editor, anchor, "Slice", [shape, I64(editor, x.Name + "/one", 1), I64(editor, x.Name + "/three", 3)]);
        var target = EmitBefore(editor, anchor, "Concat", [lead, tail], Ir.Attribute.FromInt("axis", 0));
        return EmitBefore(editor, anchor, "Reshape", [x, target]);
    }

    // y [B, H, S, E] -> Reshape(y, [-1, S, E]).
    private static Value Fold(GraphEditor editor, Node anchor, Value y)
    {
        var graph = editor.Graph;
        var lead = editor.AddInitializer(Tensor.Create(graph.UniqueName(y.Name + "/fold_lead"), new long[] { -1 }, 1));
        var shape = EmitBefore(editor, anchor, "Shape", [y]);
        var tail = EmitBefore(editor, anchor, "Slice", [shape, I64(editor, y.Name + "/two", 2), I64(editor, y.Name + "/four", 4)]);
        var target = EmitBefore(editor, anchor, "Concat", [lead, tail], Ir.Attribute.FromInt("axis", 0));
        return EmitBefore(editor, anchor, "Reshape", [y, target]);
    }

    private static Value I64(GraphEditor editor, string name, long value) =>
        editor.AddInitializer(Tensor.Create(editor.Graph.UniqueName(name), new[] { value }, 1));

    private static Value EmitBefore(GraphEditor editor, Node anchor, string op, Value?[] inputs, params Ir.Attribute[] attrs)
    {
        var node = editor.CreateNode(op, inputs, 1, attrs);
        editor.InsertBefore(anchor, node);
        return node.Outputs[0];
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
