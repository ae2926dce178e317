using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Canonicalization;

namespace Spt.Passes.Recognition;

/// <summary>
/// Classifies an attention mask by what it computes rather than how it is written. A mask term (the additive bias on
/// the scores and/or the condition of a <c>Where</c> on them) depends only on shapes and on a [B, S] mask input, so
/// its subgraph is evaluated, with the constant evaluator, at probe sizes and probe padding patterns; the positions it
/// blocks are compared with the known meanings:
/// <code>
/// blocked(b, i, j) = causal ∧ j &gt; i  ∨  padding ∧ keep[b, j] = 0  ∨  window w ∧ i − j ≥ w      // query i, key j
/// </code>
/// An additive value blocks a key when it is at most −1e4 (−inf, finfo.min and −1e4 fills alike) and keeps it when
/// it is 0; any other value is a bias, not a mask. A Where condition blocks where it selects the fill.
/// </summary>
internal static class MaskProbing
{
    // Probe sizes: two sequence lengths (a window shorter than the shorter one is told apart from causal) and a batch
    // of two whose second row is padded at the end; the first row has a hole in one pattern.
    private static readonly int[] ProbeSequences = [6, 11];
    private const int ProbeBatch = 2;
    private const int MaxNodes = 400;
    private const long MaxElements = 1 << 22;

    /// <summary>
    /// The meaning of the mask (<paramref name="bias"/> added to the scores, <paramref name="cond"/> selecting them
    /// when true if <paramref name="scoresWhenTrue"/>, else selecting the fill), or null with
    /// <paramref name="why"/> when the mask cannot be evaluated (an op the evaluator does not know, an input other
    /// than a [B, S] mask); the caller then falls back to reading its structure.
    /// </summary>
    public static MaskMeaning? Classify(Value? bias, Value? cond, bool scoresWhenTrue, Value scores, int scoresRank, ShapeAnalysis shapes, long opset, out string? why)
    {
        why = null;
        var roots = new[] { bias, cond }.Where(v => v is not null).Select(v => v!).ToList();
        if (roots.Count == 0)
            return new MaskMeaning(false, null, null);
        if (!Leaves(roots, out var inputs, out why))
            return null;
        if (inputs.Count > 1)
        {
            why = $"the mask depends on {inputs.Count} inputs ({string.Join(", ", inputs.Select(i => "'" + i.Name + "'"))})";
            return null;
        }
        var maskInput = inputs.Count == 1 ? inputs[0] : null;
        if (maskInput is not null && shapes.ShapeOf(maskInput) is not { Count: 2 })
        {
            why = $"the mask depends on input '{maskInput.Name}', which is not a [B, S] mask";
            return null;
        }
        // Probe sizes: the scores' own dims where they are fixed; symbolic batch and sequence dims (the scores' and
        // the mask input's symbols) take the probe values.
        var scoreDims = shapes.ShapeOf(scores);
        var maskDims = maskInput is null ? null : shapes.ShapeOf(maskInput);
        Dim? seqDim = scoreDims is { Count: >= 2 } sd ? sd[^1] : maskDims?[1];
        Dim? batchDim = scoreDims is { Count: 4 } bd ? bd[0] : maskDims?[0];
        var batchSymbols = new HashSet<string>(new[] { batchDim?.Param, maskDims?[0].Param }.OfType<string>(), StringComparer.Ordinal);
        var seqSymbols = new HashSet<string>(new[] { seqDim?.Param, scoreDims is { Count: >= 2 } q ? q[^2].Param : null, maskDims?[1].Param }.OfType<string>(), StringComparer.Ordinal);
        // The [B, S] token inputs (input_ids, attention_mask, ...) name the same two dims.
        foreach (var input in scores.Graph!.RequiredInputs)
        {
            if (shapes.ShapeOf(input) is { Count: 2 } d)
            {
                if (d[0].Param is { } b)
                    batchSymbols.Add(b);
                if (d[1].Param is { } sq)
                    seqSymbols.Add(sq);
            }
        }
        batchSymbols.ExceptWith(seqSymbols);
        int[] sequences = seqDim?.Value is { } fixedS ? [(int)fixedS] : ProbeSequences;
        int batch = batchDim?.Value is { } fixedB ? (int)fixedB : maskDims?[0].Value is { } mb ? (int)mb : ProbeBatch;
        var probes = new List<Probe>();
        foreach (int s in sequences)
        {
            probes.Add(new Probe(batch, s, batchSymbols, seqSymbols, Pattern(batch, s, hole: false)));
            if (maskInput is not null)
                probes.Add(new Probe(batch, s, batchSymbols, seqSymbols, Pattern(batch, s, hole: true)));
        }

        var blocked = new List<bool[,,]>();
        foreach (var probe in probes)
        {
            var evaluator = new Evaluator(probe, maskInput, shapes, opset);
            bool[,,]? acc = null;
            foreach (var (v, isCond) in new[] { (bias, false), (cond, true) })
            {
                if (v is null)
                    continue;
                if (evaluator.Eval(v) is not { } arr)
                {
                    why = evaluator.Why ?? "the mask could not be evaluated";
                    return null;
                }
                var part = Blocked(arr, isCond, scoresWhenTrue, scoresRank, probe, out string? reason);
                if (part is null)
                    return MaskMeaning.Fail(reason!);
                acc = acc is null ? part : Or(acc, part);
            }
            blocked.Add(acc!);
        }

        // The simplest meaning that explains every probe.
        foreach (bool padding in maskInput is null ? [false] : new[] { false, true })
        {
            foreach (bool causal in new[] { false, true })
            {
                if (probes.Select((p, k) => Matches(blocked[k], p, causal, padding, 0, inverted: false)).All(x => x))
                    return new MaskMeaning(causal, padding ? maskInput : null, null);
            }
            for (int w = 1; w < probes.Max(p => p.S); w++)
            {
                if (probes.Select((p, k) => Matches(blocked[k], p, true, padding, w, inverted: false)).All(x => x))
                    return new MaskMeaning(true, padding ? maskInput : null, null, w);
            }
        }
        if (maskInput is not null && (probes.Select((p, k) => Matches(blocked[k], p, false, true, 0, inverted: true)).All(x => x)
            || probes.Select((p, k) => Matches(blocked[k], p, true, true, 0, inverted: true)).All(x => x)))
        {
            return MaskMeaning.Fail($"the mask treats 1 in '{maskInput!.Name}' as padding (inverted key padding), which the sparse kernels do not take");
        }
        var first = blocked[^1];
        var p0 = probes[^1];
        var rows = Enumerable.Range(0, Math.Min(p0.S, 4)).Select(i =>
            $"query {i}: keys {{{string.Join(",", Enumerable.Range(0, p0.S).Where(j => first[0, i, j]))}}}");
        return MaskMeaning.Fail($"the mask blocks keys in a pattern that is not none, causal, key padding, causal + padding or a sliding window " +
                                $"(probe B={p0.B}, S={p0.S}, batch row 0 blocks {string.Join("; ", rows)})");
    }

    private sealed record Probe(int B, int S, IReadOnlySet<string> BatchSymbols, IReadOnlySet<string> SequenceSymbols, long[,] Keep)
    {
        public long? Resolve(Dim d) =>
            d.Value ?? (d.Param is null ? null : BatchSymbols.Contains(d.Param) ? B : SequenceSymbols.Contains(d.Param) ? S : null);
    }

    // keep[b, j]: row 0 full (or with key 1 padded: a hole), row 1 with its last two keys padded.
    private static long[,] Pattern(int b, int s, bool hole)
    {
        var keep = new long[b, s];
        for (int r = 0; r < b; r++)
        {
            for (int j = 0; j < s; j++)
                keep[r, j] = r % 2 == 1 && j >= s - 2 ? 0 : 1;
        }
        if (hole && s > 2)
            keep[0, 1] = 0;
        return keep;
    }

    private static bool Matches(bool[,,] blocked, Probe p, bool causal, bool padding, int window, bool inverted)
    {
        for (int b = 0; b < p.B; b++)
        {
            for (int i = 0; i < p.S; i++)
            {
                for (int j = 0; j < p.S; j++)
                {
                    bool pad = inverted ? p.Keep[b, j] != 0 : p.Keep[b, j] == 0;
                    bool expect = (causal && j > i) || (padding && pad) || (window > 0 && i - j >= window);
                    if (blocked[b, i, j] != expect)
                        return false;
                }
            }
        }
        return true;
    }

    private static bool[,,] Or(bool[,,] a, bool[,,] b)
    {
        var r = (bool[,,])a.Clone();
        for (int x = 0; x < r.GetLength(0); x++)
        {
            for (int y = 0; y < r.GetLength(1); y++)
            {
                for (int z = 0; z < r.GetLength(2); z++)
                    r[x, y, z] |= b[x, y, z];
            }
        }
        return r;
    }

    // The blocked (b, i, j) positions of one evaluated mask term, broadcast against scores [B, H, S, S] (rank 4) or
    // [B·H, S, S] (rank 3); null with a reason when the term is not a mask (other values, per-head differences, dims
    // that do not broadcast).
    private static bool[,,]? Blocked(ConstArray m, bool isCond, bool scoresWhenTrue, int scoresRank, Probe p, out string? reason)
    {
        reason = null;
        long[] shape = m.Shape;
        if (shape.Length > scoresRank)
        {
            reason = $"the mask has rank {shape.Length}, more than the scores' {scoresRank}";
            return null;
        }
        long At(int fromEnd) => fromEnd <= shape.Length ? shape[^fromEnd] : 1;
        long dk = At(1), dq = At(2), dh = scoresRank == 4 ? At(3) : 1, db = scoresRank == 4 ? At(4) : At(3);
        if (dk is not 1 && dk != p.S || dq is not 1 && dq != p.S || db is not 1 && (scoresRank == 3 || db != p.B))
        {
            reason = $"the mask's shape [{string.Join(", ", shape)}] does not broadcast to the scores at probe B={p.B}, S={p.S}";
            return null;
        }
        var strides = ConstArray.Strides(shape);
        long Index(long b, long h, long i, long j)
        {
            long[] coords = scoresRank == 4 ? [b, h, i, j] : [b, i, j];
            long idx = 0;
            for (int a = 0; a < shape.Length; a++)
            {
                long c = coords[coords.Length - shape.Length + a];
                idx += (shape[a] == 1 ? 0 : c) * strides[a];
            }
            return idx;
        }
        var result = new bool[p.B, p.S, p.S];
        for (int b = 0; b < p.B; b++)
        {
            for (int i = 0; i < p.S; i++)
            {
                for (int j = 0; j < p.S; j++)
                {
                    bool? first = null;
                    for (long h = 0; h < dh; h++)
                    {
                        int k = (int)Index(db == 1 ? 0 : b, h, dq == 1 ? 0 : i, dk == 1 ? 0 : j);
                        bool blocked;
                        if (isCond)
                        {
                            blocked = (m.Real(k) != 0) != scoresWhenTrue;
                        }
                        else
                        {
                            double x = m.Real(k);
                            if (x != 0 && !(x <= MaskAnalysis.LargeNegative))
                            {
                                reason = $"the additive term holds {x:G4} (neither 0 nor a large negative): a bias on the scores, not a mask";
                                return null;
                            }
                            blocked = x != 0;
                        }
                        if (first is { } f && f != blocked)
                        {
                            reason = "the mask differs between heads";
                            return null;
                        }
                        first = blocked;
                    }
                    result[b, i, j] = first ?? false;
                }
            }
        }
        return result;
    }

    // The graph inputs the mask subgraph reads (Shape and Size read only shapes: their inputs are not followed), or
    // false with a reason when the subgraph is too large or reads something the evaluator cannot.
    private static bool Leaves(IEnumerable<Value> roots, out List<Value> inputs, out string? why)
    {
        inputs = [];
        why = null;
        var seen = new HashSet<Value>();
        var stack = new Stack<Value>(roots);
        int nodes = 0;
        while (stack.Count > 0)
        {
            var v = stack.Pop();
            if (!seen.Add(v) || StaticShapesConstant(v))
                continue;
            if (v.IsGraphInput)
            {
                inputs.Add(v);
                continue;
            }
            if (v.Producer is not { } n)
            {
                why = $"value '{v.Name}' has no producer";
                return false;
            }
            if (++nodes > MaxNodes)
            {
                why = "the mask subgraph is too large to evaluate";
                return false;
            }
            if (!n.IsDefaultDomain)
            {
                why = $"the mask is computed by {n.Domain}::{n.OpType} '{n.Name}'";
                return false;
            }
            if (n.OpType is "Shape" or "Size")
                continue;
            foreach (var input in n.Inputs)
            {
                if (input is not null)
                    stack.Push(input);
            }
        }
        return true;
    }

    private static bool StaticShapesConstant(Value v) => Analysis.ConstantValue.Of(v) is not null;

    /// <summary>Evaluates mask subgraphs at one probe.</summary>
    private sealed class Evaluator(Probe probe, Value? maskInput, ShapeAnalysis shapes, long opset)
    {
        private readonly Dictionary<Value, ConstArray?> _memo = [];

        public string? Why { get; private set; }

        public ConstArray? Eval(Value v)
        {
            if (_memo.TryGetValue(v, out var known))
                return known;
            var r = Compute(v);
            _memo[v] = r;
            return r;
        }

        private ConstArray? Compute(Value v)
        {
            if (Analysis.ConstantValue.Of(v) is { } t)
            {
                if (t.ElementCount > MaxElements || !ConstArray.IsSupported(t.ElementType))
                    return Fail($"constant '{v.Name}' is too large or of an unsupported type");
                return ConstArray.From(t);
            }
            if (v.IsGraphInput)
            {
                if (!ReferenceEquals(v, maskInput))
                    return Fail($"input '{v.Name}' is not the mask input");
                var type = ShapeAnalysis.ElementTypeOf(v) ?? ElementType.Int64;
                if (!ConstArray.IsSupported(type))
                    return Fail($"mask input '{v.Name}' has an unsupported element type");
                var keep = probe.Keep;
                return ConstArray.Of(type, [probe.B, probe.S], i => keep[i / probe.S, i % probe.S], i => keep[i / probe.S, i % probe.S]);
            }
            var n = v.Producer!;
            if (n.OpType is "Shape" or "Size")
            {
                if (shapes.ShapeOf(n.Inputs[0]!) is not { } dims)
                    return Fail($"the rank of '{n.Inputs[0]!.Name}' is unknown");
                var resolved = dims.Select(probe.Resolve).ToArray();
                if (resolved.Any(d => d is null))
                    return Fail($"the mask depends on a dimension of '{n.Inputs[0]!.Name}' the probe cannot set");
                long[] values = [.. resolved.Select(d => d!.Value)];
                if (n.OpType == "Size")
                    return new ConstArray(ElementType.Int64, [], [values.Aggregate(1L, (a, b) => a * b)], null);
                var (s, e) = ShapeAnalysis.ClampRange(n.GetInt("start", 0), n.GetInt("end", values.Length), values.Length);
                long[] slice = e > s ? values[(int)s..(int)e] : [];
                return new ConstArray(ElementType.Int64, [slice.Length], slice, null);
            }
            var inputs = new List<ConstArray?>();
            foreach (var input in n.Inputs)
            {
                if (input is null)
                {
                    inputs.Add(null);
                    continue;
                }
                var x = Eval(input);
                if (x is null)
                    return null;
                inputs.Add(x);
            }
            var result = ConstantEvaluator.Evaluate(n, inputs, opset, MaxElements);
            return result ?? Fail($"cannot evaluate {n.OpType} '{n.Name}'");
        }

        private ConstArray? Fail(string why)
        {
            Why ??= why;
            return null;
        }
    }
}
