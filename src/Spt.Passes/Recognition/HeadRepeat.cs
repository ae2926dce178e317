using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Recognition;

/// <summary>
/// K/V heads repeated for grouped-query and multi-query attention: a [B, H, S, E] value computed from a
/// [B, Hkv, S, E] source X with head h a copy of X's head h / (H / Hkv), the grouping the sparse attention ops take
/// without the copies. Two exporter forms are read:
/// <code>
/// Reshape(Expand(Unsqueeze(X, 2), [B, Hkv, n, S, E]), [B, Hkv·n, S, E])              // LLaMA-2 repeat_kv
/// Concat_1(Reshape(Expand(Unsqueeze(Split_1(X)[j], ..))) for j in 0..Hkv-1)            // torch.repeat_interleave(X, n, 1)
/// </code>
/// A Tile along the heads (head h reads h mod Hkv) is a different grouping and is refused with that reason.
/// </summary>
internal static class HeadRepeat
{
    /// <summary>
    /// The unrepeated source of <paramref name="kv"/> [B, H, S, E] and its head count, or (null, 0) when
    /// <paramref name="kv"/> is not a head repeat; <paramref name="refusal"/> is set for a repeat with another grouping.
    /// </summary>
    public static (Value? Source, long KvHeads) Find(Value kv, StaticShapes shapes, out string? refusal)
    {
        refusal = null;
        if (shapes.ShapeOf(kv) is not { Count: 4 } outShape || outShape[1] is not { } heads)
            return (null, 0);
        if (kv.Producer is not { } n || !n.IsDefaultDomain)
            return (null, 0);
        switch (n.OpType)
        {
            case "Reshape" when RepeatOfOne(kv, shapes) is { } one:
                return one.Source is { } src && shapes.ShapeOf(src) is { Count: 4 } s && s[1] is { } hkv && hkv * one.Copies == heads ? (src, hkv) : (null, 0);
            case "Tile":
                if (n.Inputs[1] is { } reps && shapes.IntsOf(reps) is { Count: 4 } r4 && r4[1] is > 1)
                    refusal = $"K/V heads are repeated by Tile '{n.Name}' (query head h reads kv head h mod Hkv); the sparse attention ops group consecutive query heads (h / (H / Hkv))";
                return (null, 0);
            default:
                return (null, 0);
        }
    }

    // Reshape(Expand(Unsqueeze(X, axis 2), [.., Hx, n, S, E]), [.., Hx·n, S, E]): X's heads each copied n times in a row.
    private static (Value? Source, long Copies)? RepeatOfOne(Value v, StaticShapes shapes)
    {
        if (v.Producer is not { OpType: "Reshape" } reshape || reshape.Inputs[0]?.Producer is not { OpType: "Expand" } expand
            || expand.Inputs[0]?.Producer is not { OpType: "Unsqueeze" } unsqueeze)
            return null;
        var axes = unsqueeze.GetInts("axes") ?? (unsqueeze.Inputs.Count > 1 && unsqueeze.Inputs[1] is { } a ? shapes.IntsOf(a)?.Select(x => x ?? long.MinValue).ToList() : null);
        if (axes is not { Count: 1 } || axes[0] is not (2 or -3))
            return null;
        var source = unsqueeze.Inputs[0]!;
        var src = shapes.ShapeOf(source);
        var expanded = shapes.ShapeOf(expand.Outputs[0]);
        var result = shapes.ShapeOf(reshape.Outputs[0]);
        // The reshape merges (Hx, n) into the heads; heads and head dim of the expanded value stay X's where known
        // (torch writes the expand target through Where(target == -1, 1, target), which static shapes do not follow).
        if (src is not { Count: 4 } || result is not { Count: 4 } || src[1] is not { } hx || result[1] is not { } heads || heads % hx != 0)
            return null;
        long copies = heads / hx;
        if (expanded is { Count: 5 } && ((expanded[1] is { } e1 && e1 != hx) || (expanded[2] is { } e2 && e2 != copies)))
            return null;
        if (src[3] is { } e && (result[3] != e || (expanded is { Count: 5 } && expanded[4] is { } e4 && e4 != e)))
            return null;
        return (source, copies);
    }
}
