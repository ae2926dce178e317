using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Recognition;

/// <summary>A boolean score mask's meaning, as a function of (query i, key j) over the last two axes.</summary>
internal enum TriangleKind
{
    Unknown,

    /// <summary>true where j &lt;= i (the causal keep-mask, tril).</summary>
    KeepLower,

    /// <summary>true where j &gt; i (the causal masked-out positions, strict triu).</summary>
    MaskedUpper,
}

/// <summary>What an additive mask term or a Where condition means.</summary>
/// <param name="Causal">It hides keys after the query (causal).</param>
/// <param name="KeyPadding">A [B, Sk] keep-mask (1 = keep) it was computed from, when it is a padding mask.</param>
/// <param name="Reason">Why it could not be classified (null when it was).</param>
/// <param name="Window">With <paramref name="Causal"/>: each query sees only its last <c>Window</c> keys (0: all).</param>
internal sealed record MaskMeaning(bool Causal, Value? KeyPadding, string? Reason, long Window = 0)
{
    public static MaskMeaning Fail(string reason) => new(false, null, reason);
}

/// <summary>
/// Classifies attention masks the way exporters build them: causal masks from tril/triu buffers or Trilu of a
/// constant (boolean keep-masks in Where, additive large-negative masks), padding masks
/// <c>(1 - mask[:, None, None, :]) * -10000</c> from a [B, Sk] graph input.
/// </summary>
internal static class MaskAnalysis
{
    /// <summary>Additive values at or below this remove a key (exp underflows to 0 in fp32 after any sane scale).</summary>
    public const double LargeNegative = -1e4;

    // Ops that keep a mask's (i, j) meaning: broadcasting helpers and casts.
    private static bool IsTransparent(Node n) => n.IsDefaultDomain && n.OpType is "Identity" or "Unsqueeze" or "Expand" or "Cast";

    /// <summary>The triangle a boolean (or 0/1) condition describes.</summary>
    public static TriangleKind Triangle(Value v, StaticShapes shapes, int depth = 0)
    {
        if (depth > 16)
            return TriangleKind.Unknown;
        if (ConstantValue.Of(v) is { } t)
            return TriangleOfTensor(t, boolean: true);
        if (v.Producer is not { } n || !n.IsDefaultDomain)
            return TriangleKind.Unknown;
        switch (n.OpType)
        {
            case "Not":
                return Triangle(n.Inputs[0]!, shapes, depth + 1) switch
                {
                    TriangleKind.KeepLower => TriangleKind.MaskedUpper,
                    TriangleKind.MaskedUpper => TriangleKind.KeepLower,
                    _ => TriangleKind.Unknown,
                };
            case "Slice":
                // [.., :S, :S] of a causal buffer is causal when the last two axes start at 0.
                return SlicesFromOrigin(n, shapes) ? Triangle(n.Inputs[0]!, shapes, depth + 1) : TriangleKind.Unknown;
            case "Trilu":
            {
                if (ConstantValue.Of(n.Inputs[0]) is null && n.Inputs[0]?.Producer is not { OpType: "ConstantOfShape" })
                    return TriangleKind.Unknown;
                if (!AllNonZeroFill(n.Inputs[0]!))
                    return TriangleKind.Unknown;
                long k = n.Inputs.Count > 1 && n.Inputs[1] is { } kv ? (long)(ConstantValue.Scalar(kv) ?? long.MinValue) : 0;
                bool upper = n.GetInt("upper", 1) != 0;
                if (!upper && k == 0)
                    return TriangleKind.KeepLower;
                if (upper && k == 1)
                    return TriangleKind.MaskedUpper;
                return TriangleKind.Unknown;
            }
            default:
                return IsTransparent(n) ? Triangle(n.Inputs[0]!, shapes, depth + 1) : TriangleKind.Unknown;
        }
    }

    /// <summary>Classifies an additive mask term added to the scores.</summary>
    public static MaskMeaning Additive(Value v, StaticShapes shapes, int depth = 0)
    {
        if (depth > 16)
            return MaskMeaning.Fail("mask expression too deep");
        if (ConstantValue.Of(v) is { } t)
        {
            return TriangleOfTensor(t, boolean: false) == TriangleKind.MaskedUpper
                ? new MaskMeaning(true, null, null)
                : MaskMeaning.Fail($"constant additive mask {Describe(v)} is not a causal (strict upper triangle of large negatives) mask");
        }
        if (v.Producer is not { } n)
            return MaskMeaning.Fail($"additive mask {Describe(v)} is a graph input, not something derived from a [B, S] keep-mask");
        if (!n.IsDefaultDomain)
            return MaskMeaning.Fail($"additive mask comes from {n.Domain}::{n.OpType}");
        switch (n.OpType)
        {
            case "Slice":
                return SlicesFromOrigin(n, shapes) ? Additive(n.Inputs[0]!, shapes, depth + 1) : MaskMeaning.Fail("mask slice does not start at the origin of the last two axes");
            case "Trilu":
            {
                // triu(full(min), 1): large negatives strictly above the diagonal.
                long k = n.Inputs.Count > 1 && n.Inputs[1] is { } kv ? (long)(ConstantValue.Scalar(kv) ?? long.MinValue) : 0;
                bool upper = n.GetInt("upper", 1) != 0;
                if (upper && k == 1 && FillValue(n.Inputs[0]!) is { } fill && fill <= LargeNegative)
                    return new MaskMeaning(true, null, null);
                return MaskMeaning.Fail($"Trilu mask '{n.Name}' is not triu(large negative, 1)");
            }
            case "Add":
            {
                // causal + padding
                var a = Additive(n.Inputs[0]!, shapes, depth + 1);
                var b = Additive(n.Inputs[1]!, shapes, depth + 1);
                if (a.Reason != null)
                    return a;
                if (b.Reason != null)
                    return b;
                if (a.KeyPadding != null && b.KeyPadding != null)
                    return MaskMeaning.Fail("two padding masks");
                return new MaskMeaning(a.Causal || b.Causal, a.KeyPadding ?? b.KeyPadding, null);
            }
            case "Mul":
            {
                // (1 - keep) * large_negative, either operand order.
                for (int i = 0; i < 2; i++)
                {
                    if (ConstantValue.Scalar(n.Inputs[i]) is { } c && c <= LargeNegative)
                    {
                        var other = n.Inputs[1 - i]!;
                        if (other.Producer is { OpType: "Sub" } sub && ConstantValue.Scalar(sub.Inputs[0]) == 1.0)
                        {
                            var keep = PaddingSource(sub.Inputs[1]!, shapes);
                            return keep is null
                                ? MaskMeaning.Fail($"padding mask '{sub.Name}' is not computed from a [B, S] graph input broadcast to [B, 1, 1, S]")
                                : new MaskMeaning(false, keep, null);
                        }
                        return MaskMeaning.Fail($"additive mask '{n.Name}' scales something other than (1 - mask)");
                    }
                }
                return MaskMeaning.Fail($"additive mask '{n.Name}' is not (1 - mask) * large negative");
            }
            default:
                return IsTransparent(n) ? Additive(n.Inputs[0]!, shapes, depth + 1) : MaskMeaning.Fail($"additive mask comes from {n.OpType} '{n.Name}'");
        }
    }

    /// <summary>
    /// The [B, Sk] graph input behind a keep-mask broadcast to [B, 1, 1, Sk]: Cast/Unsqueeze (axes 1 and 2)/Expand
    /// chains. Null when the value is something else.
    /// </summary>
    public static Value? PaddingSource(Value v, StaticShapes shapes)
    {
        var cur = v;
        var unsqueezed = new List<long>();
        for (int guard = 0; guard < 8; guard++)
        {
            if (cur.IsGraphInput && !cur.IsInitializer)
            {
                if (shapes.RankOf(cur) != 2)
                    return null;
                // The mask must end up [B, 1, 1, Sk] (keys on the last axis).
                var axes = unsqueezed.Select(a => a).ToList();
                return axes.Count == 2 && axes.Contains(1) && axes.Contains(2) ? cur : null;
            }
            if (cur.Producer is not { } n || !n.IsDefaultDomain)
                return null;
            switch (n.OpType)
            {
                case "Cast" or "Identity":
                    break;
                case "Unsqueeze":
                {
                    var axes = n.GetInts("axes")?.ToArray()
                        ?? (n.Inputs.Count > 1 && n.Inputs[1] is { } av && shapes.IntsOf(av) is { } vals && vals.All(x => x.HasValue)
                            ? [.. vals.Select(x => x!.Value)]
                            : null);
                    if (axes is null)
                        return null;
                    // Normalize to axes of the final [B, 1, 1, S] layout.
                    unsqueezed.AddRange(axes.Select(a => a < 0 ? a + 4 : a));
                    break;
                }
                default:
                    return null;
            }
            cur = n.Inputs[0]!;
        }
        return null;
    }

    // Slice(x, starts, ends, axes): every sliced axis among the last two starts at 0 (needs x's rank).
    private static bool SlicesFromOrigin(Node n, StaticShapes shapes)
    {
        var rank = shapes.RankOf(n.Inputs[0]!);
        var starts = n.Inputs.Count > 1 && n.Inputs[1] is { } s ? shapes.IntsOf(s) : null;
        var axes = n.Inputs.Count > 3 && n.Inputs[3] is { } a ? shapes.IntsOf(a) : null;
        var steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? shapes.IntsOf(st) : null;
        if (starts is null || rank is null)
            return false;
        for (int i = 0; i < starts.Count; i++)
        {
            long? axis = axes is null ? i : i < axes.Count ? axes[i] : null;
            if (axis is null)
                return false;
            long ax = axis.Value < 0 ? axis.Value + rank.Value : axis.Value;
            if (steps is not null && i < steps.Count && steps[i] != 1)
                return false;
            if (ax >= rank - 2 && starts[i] != 0)
                return false;
        }
        return true;
    }

    private static bool AllNonZeroFill(Value v) => FillValue(v) is { } f && f != 0;

    private static double? FillValue(Value v)
    {
        if (ConstantValue.Of(v) is { } t)
        {
            var d = t.ToDoubleArray();
            return d.Length > 0 && d.All(x => x == d[0]) ? d[0] : null;
        }
        if (v.Producer is { OpType: "ConstantOfShape" } c)
        {
            return c.GetAttribute("value") is { Kind: AttributeKind.Tensor } a && a.AsTensor().ElementCount == 1
                ? a.AsTensor().ToDoubleArray()[0]
                : 0.0;
        }
        return null;
    }

    // Checks the last two axes of a constant: boolean = which entries are nonzero; additive = which are large negative
    // (and the rest zero).
    private static TriangleKind TriangleOfTensor(Tensor t, bool boolean)
    {
        var dims = t.Dims;
        if (dims.Count < 2 || t.ElementCount == 0 || t.ElementCount > (1L << 24))
            return TriangleKind.Unknown;
        long rows = dims[^2];
        long cols = dims[^1];
        if (rows != cols)
            return TriangleKind.Unknown;
        var d = t.ToDoubleArray();
        bool lower = true;
        bool upper = true;
        for (long k = 0; k < d.Length; k++)
        {
            long i = k / cols % rows;
            long j = k % cols;
            double x = d[k];
            bool set = boolean ? x != 0 : x <= LargeNegative;
            if (!boolean && !set && x != 0)
                return TriangleKind.Unknown;
            if (set != (j <= i))
                lower = false;
            if (set != (j > i))
                upper = false;
            if (!lower && !upper)
                return TriangleKind.Unknown;
        }
        return lower ? TriangleKind.KeepLower : upper ? TriangleKind.MaskedUpper : TriangleKind.Unknown;
    }

    private static string Describe(Value v) => "'" + v.Name + "'";
}
