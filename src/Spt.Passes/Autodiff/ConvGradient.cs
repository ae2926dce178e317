using Spt.Ir;

namespace Spt.Passes.Autodiff;

/// <summary>
/// The gradient of <c>y = Conv(x [N, C, *S], w [M, C/group, *K], b? [M])</c> with strides s, pads p, dilations d:
/// <code>
/// db = ReduceSum(dy, [0, 2, ...])
/// dx = ConvTranspose(dy, w; s, p, d, group, output_padding = S + p_begin + p_end - ((OS - 1) s + d (K - 1) + 1))
/// dw = T(Conv(T(x), T(dy); strides = d, dilations = s, p))[:, :, :K...]      // T swaps axes 0 and 1 (group 1)
/// </code>
/// The output padding needs the spatial sizes when a stride is above 1 (stride 1 always gives 0). auto_pad SAME_*
/// needs static sizes to turn into explicit pads.
/// </summary>
internal static class ConvGradient
{
    public static void Rule(GradientContext g)
    {
        var n = g.Node;
        var x = g.In(0);
        var w = g.In(1);
        var wShape = g.Facts.StaticShape(w);
        int rank = g.Rank(w) ?? g.Rank(x) ?? throw g.Fail("the rank of the Conv weight is unknown");
        int spatial = rank - 2;
        long[] strides = Attr(n, "strides", spatial, 1);
        long[] dilations = Attr(n, "dilations", spatial, 1);
        long group = n.GetInt("group", 1);
        var xShape = g.Facts.StaticShape(x);
        long[] pads = Pads(g, spatial, strides, dilations, xShape, wShape);
        var e = g.Emit;
        var dy = g.DY;
        long[] swap = [1, 0, .. Enumerable.Range(2, spatial).Select(i => (long)i)];

        g.Grad(2, () => e.ReduceSum(dy, [0, .. Enumerable.Range(2, spatial).Select(i => (long)i)], keepDims: false));
        g.Grad(0, () =>
        {
            var outputPadding = new long[spatial];
            for (int i = 0; i < spatial; i++)
            {
                if (strides[i] == 1)
                    continue;
                if (xShape is null || wShape is null)
                    throw g.Fail("a strided Conv needs static input and weight shapes for its input gradient");
                long size = xShape[2 + i], k = wShape[2 + i];
                long outSize = (size + pads[i] + pads[spatial + i] - dilations[i] * (k - 1) - 1) / strides[i] + 1;
                outputPadding[i] = size + pads[i] + pads[spatial + i] - ((outSize - 1) * strides[i] + dilations[i] * (k - 1) + 1);
            }
            return g.Op("ConvTranspose", [dy, w], ("strides", strides), ("pads", pads), ("dilations", dilations),
                ("group", group), ("output_padding", outputPadding));
        });
        g.Grad(1, () =>
        {
            if (group != 1)
                throw g.Fail($"the weight gradient of a grouped Conv (group {group}) is not supported");
            var full = g.Op("Conv", [g.Op("Transpose", [x], ("perm", swap)), g.Op("Transpose", [dy], ("perm", swap))],
                ("strides", dilations), ("dilations", strides), ("pads", pads));
            // [C, M, *K'] with K' >= K when the strides leave input positions unused: keep the first K.
            var axes = e.Ints([.. Enumerable.Range(2, spatial).Select(i => (long)i)]);
            var ends = wShape is not null ? e.Ints(wShape[2..]) : g.Op("Slice", e.Shape(w), e.Ints(2), e.Ints(rank));
            var kept = g.Op("Slice", full, e.Ints(new long[spatial]), ends, axes);
            return g.Op("Transpose", [kept], ("perm", swap));
        });
    }

    private static long[] Attr(Node n, string name, int count, long fallback) =>
        n.GetInts(name) is { } v ? [.. v] : [.. Enumerable.Repeat(fallback, count)];

    // Explicit pads [begin..., end...]: the attribute, VALID (none), or SAME_UPPER/SAME_LOWER from static sizes.
    private static long[] Pads(GradientContext g, int spatial, long[] strides, long[] dilations, long[]? xShape, long[]? wShape)
    {
        var autoPad = g.Node.GetString("auto_pad", "NOTSET");
        if (autoPad is "NOTSET" or "")
            return g.Node.GetInts("pads") is { } p ? [.. p] : new long[2 * spatial];
        if (autoPad == "VALID")
            return new long[2 * spatial];
        if (xShape is null || wShape is null)
            throw g.Fail($"auto_pad {autoPad} needs static input and weight shapes");
        var pads = new long[2 * spatial];
        for (int i = 0; i < spatial; i++)
        {
            long size = xShape[2 + i], k = wShape[2 + i];
            long outSize = (size + strides[i] - 1) / strides[i];
            long total = Math.Max(0, (outSize - 1) * strides[i] + dilations[i] * (k - 1) + 1 - size);
            long small = total / 2, large = total - small;
            (pads[i], pads[spatial + i]) = autoPad == "SAME_LOWER" ? (large, small) : (small, large);
        }
        return pads;
    }
}
