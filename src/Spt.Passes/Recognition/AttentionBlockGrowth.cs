using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Recognition;

/// <summary>
/// Stage two of attention recognition: grows every <c>spt.internal::AttentionCore</c> to its block: the Q/K/V
/// projections behind the head split (through reshapes, transposes, scalings, rotary embeddings and the
/// Slice/Split of a packed projection) and the output projection behind the head merge. Records the block (layer
/// index in graph order) for the lowering and the report. A core that cannot be grown is marked to be kept dense.
/// </summary>
public sealed class AttentionBlockGrowth : IPass
{
    /// <inheritdoc />
    public string Name => "attention-block-growth";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var results = context.Result<RecognitionResults>();
        var shapes = new StaticShapes();
        results.Attention.Clear();
        results.CoreInfo.Clear();
        int layer = 0;
        foreach (var core in model.Graph.Nodes.Where(AttentionCoreOp.Is))
        {
            var info = new AttentionBlockInfo
            {
                Layer = layer++,
                CoreNode = core.Name,
                Source = core.GetString("source", "decomposed")!,
                MatchedNodes = [.. (core.GetString("region", "") ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries)],
                Causal = core.GetInt("causal", 0) != 0,
                Window = core.GetInt("window", 0),
                KeyPaddingMask = core.Inputs[AttentionCoreOp.KeyPadding]?.Name,
                EffectiveScale = core.GetFloat("effective_scale", 1),
                OpScale = AttentionCoreOp.Scale(core, shapes.LastDim(core.Inputs[AttentionCoreOp.Q]!)) ?? 0,
                HeadsFolded = core.GetInt("rank", 4) == 3,
            };
            bool rotQ = false, rotK = false;
            info.QProjection = FindProjection(core.Inputs[AttentionCoreOp.Q]!, ref rotQ)?.Name;
            // Grouped K/V: the projections lie behind the head repeat.
            var (kSource, kvHeads) = HeadRepeat.Find(core.Inputs[AttentionCoreOp.K]!, shapes, out _);
            var (vSource, vHeads) = HeadRepeat.Find(core.Inputs[AttentionCoreOp.V]!, shapes, out _);
            info.KProjection = FindProjection(kSource ?? core.Inputs[AttentionCoreOp.K]!, ref rotK)?.Name;
            bool rotV = false;
            info.VProjection = FindProjection(vSource ?? core.Inputs[AttentionCoreOp.V]!, ref rotV)?.Name;
            if (kSource != null && vSource != null && kvHeads == vHeads)
                info.KvHeads = kvHeads;
            else if (kSource is null && vSource is null && shapes.ShapeOf(core.Inputs[AttentionCoreOp.K]!) is { Count: 4 } ks && ks[1] is { } kh)
                info.KvHeads = kh;
            info.OutProjection = FindOutProjection(core.Outputs[0])?.Name;
            info.Rotary = rotQ && rotK;
            info.HeadDim = shapes.LastDim(core.Inputs[AttentionCoreOp.Q]!);
            long heads = core.GetInt("heads", 0);
            if (heads == 0 && !info.HeadsFolded && shapes.ShapeOf(core.Inputs[AttentionCoreOp.Q]!) is { Count: 4 } qs && qs[1] is { } h)
                heads = h;
            if (heads == 0 && info.HeadDim is { } e && info.OutProjection is not null && OutWidth(model.Graph, core.Outputs[0], shapes) is { } d)
                heads = d / e;
            info.Heads = heads > 0 ? heads : null;
            var missing = new List<string>();
            if (info.QProjection is null)
                missing.Add("Q projection");
            if (info.KProjection is null)
                missing.Add("K projection");
            if (info.VProjection is null)
                missing.Add("V projection");
            if (info.OutProjection is null)
                missing.Add("output projection");
            if (missing.Count > 0)
                info.KeptDenseReason = $"attention core '{core.Name}' could not be grown to its block: no {string.Join(", ", missing)} found";
            results.Attention.Add(info);
            results.CoreInfo[core] = info;
        }
        return false;
    }

    private static long? OutWidth(Graph graph, Value coreOut, StaticShapes shapes) =>
        FindOutProjection(coreOut) is { } proj && proj.Inputs[0] is { } x ? shapes.LastDim(x) : null;

    /// <summary>The linear layer (MatMul or Gemm with a constant weight) that produces what flows into <paramref name="v"/>.</summary>
    internal static Node? FindProjection(Value v, ref bool rotary)
    {
        for (int steps = 0; steps < 16; steps++)
        {
            if (v.Producer is not { } n)
                return null;
            if (Linear.ReadsConstantWeight(n))
                return n;
            switch (n.OpType)
            {
                case "Transpose" or "Reshape" or "Identity" or "Squeeze" or "Unsqueeze" or "Split" or "Slice" or "Cast":
                    v = n.Inputs[0]!;
                    continue;
                case "Concat" when PartialRotaryInput(n) is { } whole:
                    // Partial rotary (GPT-NeoX): rotary on a slice of the head dims, Concat with the rest.
                    rotary = true;
                    v = whole;
                    continue;
                case "Gather" when ConstantValue.Of(n.Inputs[1]) is not null:
                    // q/k/v picked from a fused projection by index (BLOOM's [B, S, H, 3, E] view, index lists).
                    v = n.Inputs[0]!;
                    continue;
                case "Mul" or "Div" when ConstantValue.Scalar(n.Inputs[1]) is not null:
                    v = n.Inputs[0]!;
                    continue;
                case "Mul" when ConstantValue.Scalar(n.Inputs[0]) is not null:
                    v = n.Inputs[1]!;
                    continue;
                case "Add":
                {
                    // Linear bias: Add(b, MatMul) in either order.
                    if (ConstantValue.Of(n.Inputs[0]) is not null)
                    {
                        v = n.Inputs[1]!;
                        continue;
                    }
                    if (ConstantValue.Of(n.Inputs[1]) is not null)
                    {
                        v = n.Inputs[0]!;
                        continue;
                    }
                    // Rotary: x·cos + rotate_half(x)·sin; continue with x.
                    if (RotaryInput(n) is { } x)
                    {
                        rotary = true;
                        v = x;
                        continue;
                    }
                    return null;
                }
                default:
                    return null;
            }
        }
        return null;
    }

    // Concat_last(rotary(Slice(x)), Slice(x)) (either order, the rotary on one part): x. Every part is a Slice of the
    // same x, one of them through a rotary embedding.
    private static Value? PartialRotaryInput(Node concat)
    {
        if (concat.Inputs.Count < 2 || concat.GetInt("axis", 0) != -1 && concat.Inputs[0] is { } first && concat.GetInt("axis", 0) != (first.Shape?.Count ?? 0) - 1)
            return null;
        Value? whole = null;
        bool rotated = false;
        foreach (var part in concat.Inputs)
        {
            var p = part;
            if (p?.Producer is { OpType: "Add" } add && RotaryInput(add) is { } x)
            {
                rotated = true;
                p = x;
            }
            if (p?.Producer is not { OpType: "Slice" } slice || slice.Inputs[0] is not { } src || (whole != null && !ReferenceEquals(whole, src)))
                return null;
            whole = src;
        }
        return rotated ? whole : null;
    }

    // Add(Mul(x, cos), Mul(Concat(Neg(Slice(x)), Slice(x)), sin)) -> x
    private static Value? RotaryInput(Node add)
    {
        if (add.Inputs[0]?.Producer is not { OpType: "Mul" } m1 || add.Inputs[1]?.Producer is not { OpType: "Mul" } m2)
            return null;
        foreach (var (direct, rotated) in new[] { (m1, m2), (m2, m1) })
        {
            foreach (var x in direct.Inputs)
            {
                if (x is null)
                    continue;
                foreach (var r in rotated.Inputs)
                {
                    if (r?.Producer is { OpType: "Concat" } cat && cat.Inputs.Count == 2
                        && cat.Inputs.All(part => FromSliceOf(part, x)))
                        return x;
                }
            }
        }
        return null;

        static bool FromSliceOf(Value? part, Value x)
        {
            var p = part?.Producer;
            if (p is { OpType: "Neg" })
                p = p.Inputs[0]?.Producer;
            return p is { OpType: "Slice" } && ReferenceEquals(p.Inputs[0], x);
        }
    }

    /// <summary>The linear layer that reads the attention output after the head merge.</summary>
    internal static Node? FindOutProjection(Value v)
    {
        for (int steps = 0; steps < 8; steps++)
        {
            var uses = v.Uses.Where(u => u.Node.OpType != "Shape").ToList();
            if (uses.Count != 1)
                return null;
            var n = uses[0].Node;
            if (Linear.ReadsConstantWeight(n) && uses[0].InputIndex == 0)
                return n;
            if (n.OpType is not ("Transpose" or "Reshape" or "Identity" or "Squeeze" or "Unsqueeze"))
                return null;
            v = n.Outputs[0];
        }
        return null;
    }
}
