using Spt.Ir;

namespace Spt.Passes.Analysis;

/// <summary>
/// What is statically known about tensor shapes in a graph whose batch and sequence dims are symbolic: per value
/// its rank and the dims that are fixed numbers (from weights, constants and head reshapes), and the elements of
/// small int64 shape tensors (<c>Concat(Unsqueeze(Gather(Shape(x), 2)), [4], ...)</c>) that are known. Results
/// are memoized per value; an instance is meant for one pass over a graph that does not change underneath it.
/// </summary>
public sealed class StaticShapes
{
    private const int MaxDepth = 200;
    private const int MaxIntElements = 16;

    private readonly Dictionary<Value, long?[]?> _shapes = [];
    private readonly Dictionary<Value, long?[]?> _ints = [];
    private int _depth;

    /// <summary>The dims of <paramref name="value"/> (null entries are unknown), or null when even the rank is unknown.</summary>
    public IReadOnlyList<long?>? ShapeOf(Value value)
    {
        if (_shapes.TryGetValue(value, out var known))
            return known;
        if (_depth > MaxDepth)
            return null;
        _depth++;
        long?[]? s;
        try
        {
            s = Infer(value);
        }
        finally
        {
            _depth--;
        }
        _shapes[value] = s;
        return s;
    }

    /// <summary>The rank of <paramref name="value"/>, or null.</summary>
    public int? RankOf(Value value) => ShapeOf(value)?.Count;

    /// <summary>The last dim of <paramref name="value"/> when known.</summary>
    public long? LastDim(Value value) => ShapeOf(value) is { Count: > 0 } s ? s[^1] : null;

    /// <summary>The elements of a small integer tensor (shape arithmetic), null entries unknown; null when not an int tensor we can follow.</summary>
    public IReadOnlyList<long?>? IntsOf(Value value)
    {
        if (_ints.TryGetValue(value, out var known))
            return known;
        if (_depth > MaxDepth)
            return null;
        _depth++;
        long?[]? r;
        try
        {
            r = EvalInts(value);
        }
        finally
        {
            _depth--;
        }
        _ints[value] = r;
        return r;
    }

    /// <summary>The constant tensor behind a value: an initializer that is not a graph input, or a Constant node.</summary>
    public static Tensor? ConstantOf(Value? value)
    {
        if (value is null)
            return null;
        if (value.Initializer is { } t)
            return value.IsGraphInput ? null : t;
        if (value.Producer is { OpType: "Constant" } c && c.IsDefaultDomain && c.GetAttribute("value") is { Kind: AttributeKind.Tensor } a)
            return a.AsTensor();
        if (value.Producer is { OpType: "Identity" } id && id.IsDefaultDomain)
            return ConstantOf(id.Inputs[0]);
        return null;
    }

    /// <summary>The value of a one-element numeric constant, or null.</summary>
    public static double? ScalarOf(Value? value)
    {
        var t = ConstantOf(value);
        if (t is null || t.ElementCount != 1 || t.ElementType == ElementType.String)
            return null;
        return t.ToDoubleArray()[0];
    }

    private long?[]? Infer(Value v)
    {
        if (v.Initializer is { } init)
            return [.. init.Dims.Select(d => (long?)d)];
        var declared = v.Shape is { } ds ? ds.Select(d => d.Value).ToArray() : null;
        if (v.Producer is not { } n)
            return declared;
        var inferred = n.IsDefaultDomain ? InferNode(n, v.ProducerOutputIndex) : InferSptNode(n, v.ProducerOutputIndex);
        if (inferred is null)
            return declared;
        if (declared is not null && declared.Length == inferred.Length)
        {
            for (int i = 0; i < inferred.Length; i++)
                inferred[i] ??= declared[i];
        }
        return inferred;
    }

    private long?[]? In(Node n, int i) => i < n.Inputs.Count && n.Inputs[i] is { } x ? ShapeOf(x)?.ToArray() : null;

    private long?[]? InferNode(Node n, int outputIndex)
    {
        switch (n.OpType)
        {
            case "Constant":
                return ConstantOf(n.Outputs[0]) is { } ct ? [.. ct.Dims.Select(d => (long?)d)] : null;
            case "Identity" or "Relu" or "Gelu" or "Erf" or "Tanh" or "Sigmoid" or "Neg" or "Sqrt" or "Exp" or "Softmax"
                or "LayerNormalization" or "Dropout" or "Cast" or "Not" or "Abs" or "Log" or "Sin" or "Cos" or "Trilu"
                or "SimplifiedLayerNormalization" or "Reciprocal" or "Floor" or "Ceil" or "Round":
                return outputIndex == 0 ? In(n, 0) : null;
            case "Add" or "Sub" or "Mul" or "Div" or "Pow" or "Where" or "Equal" or "Less" or "Greater" or "And" or "Or"
                or "Max" or "Min":
                return Broadcast([.. Enumerable.Range(0, n.Inputs.Count).Select(i => In(n, i))]);
            case "MatMul":
                return MatMulShape(In(n, 0), In(n, 1));
            case "Gemm":
            {
                var a = In(n, 0);
                var b = In(n, 1);
                if (a is not { Length: 2 } || b is not { Length: 2 })
                    return null;
                return [n.GetInt("transA", 0) != 0 ? a[1] : a[0], n.GetInt("transB", 0) != 0 ? b[0] : b[1]];
            }
            case "Transpose":
            {
                var x = In(n, 0);
                if (x is null)
                    return null;
                var perm = n.GetInts("perm")?.ToArray() ?? [.. Enumerable.Range(0, x.Length).Reverse().Select(i => (long)i)];
                return perm.Length == x.Length ? [.. perm.Select(p => x[p])] : null;
            }
            case "Shape":
                return In(n, 0) is { } xs ? [xs.Length] : null;
            case "Gather":
            {
                var data = In(n, 0);
                var idx = In(n, 1);
                if (data is null || idx is null)
                    return null;
                int axis = Axis(n.GetInt("axis", 0), data.Length);
                return [.. data.Take(axis), .. idx, .. data.Skip(axis + 1)];
            }
            case "Unsqueeze":
            {
                var x = In(n, 0);
                var axes = UnsqueezeAxes(n);
                if (x is null || axes is null)
                    return null;
                int rank = x.Length + axes.Length;
                var norm = axes.Select(a => a < 0 ? a + rank : a).ToHashSet();
                var r = new long?[rank];
                int k = 0;
                for (int i = 0; i < rank; i++)
                    r[i] = norm.Contains(i) ? 1 : x[k++];
                return r;
            }
            case "Squeeze":
            {
                var x = In(n, 0);
                var axes = UnsqueezeAxes(n);
                if (x is null)
                    return null;
                if (axes is null)
                    return x.All(d => d.HasValue) ? [.. x.Where(d => d != 1)] : null;
                var norm = axes.Select(a => a < 0 ? a + x.Length : a).ToHashSet();
                return [.. x.Where((_, i) => !norm.Contains(i))];
            }
            case "Concat":
            {
                var parts = Enumerable.Range(0, n.Inputs.Count).Select(i => In(n, i)).ToArray();
                if (parts.Any(p => p is null) || parts.Length == 0)
                    return null;
                int rank = parts[0]!.Length;
                int axis = Axis(n.GetInt("axis", 0), rank);
                var r = (long?[])parts[0]!.Clone();
                r[axis] = parts.Aggregate((long?)0, (acc, p) => acc + p![axis]);
                return r;
            }
            case "Reshape":
                return ReshapeShape(n);
            case "Flatten":
            {
                var x = In(n, 0);
                if (x is null)
                    return null;
                int axis = Axis(n.GetInt("axis", 1), x.Length);
                return [Product(x.Take(axis)), Product(x.Skip(axis))];
            }
            case "Slice":
                return SliceShape(n);
            case "Split":
                return SplitShape(n, outputIndex);
            case "ReduceMean" or "ReduceSum" or "ReduceMax":
            {
                var x = In(n, 0);
                var axes = n.GetInts("axes")?.ToArray() ?? (n.Inputs.Count > 1 && n.Inputs[1] is { } ax ? IntsOf(ax)?.Select(a => a ?? long.MinValue).ToArray() : null);
                if (x is null || axes is null || axes.Any(a => a == long.MinValue))
                    return null;
                var norm = axes.Select(a => Axis(a, x.Length)).ToHashSet();
                bool keep = n.GetInt("keepdims", 1) != 0;
                return keep ? [.. x.Select((d, i) => norm.Contains(i) ? 1 : d)] : [.. x.Where((_, i) => !norm.Contains(i))];
            }
            case "ConstantOfShape" or "Expand":
            {
                var shapeIn = n.OpType == "Expand" ? n.Inputs[1] : n.Inputs[0];
                if (shapeIn is null || IntsOf(shapeIn) is not { } target)
                    return null;
                if (n.OpType == "ConstantOfShape")
                    return [.. target];
                return Broadcast([In(n, 0), [.. target.Select(d => d == 1 ? null : d)]]);
            }
            case "Range":
                return [null];
            default:
                return null;
        }
    }

    // Our own ops (and the internal attention core), so that analysis sees through blocks already rewritten.
    private long?[]? InferSptNode(Node n, int outputIndex)
    {
        if (n.Domain == "com.microsoft" && n.OpType is "FastGelu" or "Gelu" or "BiasGelu" && outputIndex == 0)
            return In(n, 0);
        if (n.Domain is not ("spt" or "spt.internal"))
            return null;
        switch (n.OpType)
        {
            case "AttentionCore" or "SparseAttention" when outputIndex == 0:
            {
                // [.., Sq, E] with V's last dim
                var q = In(n, 0);
                var v = In(n, 2);
                if (q is null)
                    return null;
                var r = (long?[])q.Clone();
                r[^1] = v is { Length: > 0 } ? v[^1] : null;
                return r;
            }
            case "RoutedFFN" when outputIndex == 0:
                return In(n, 0);
            case "PQEncode":
            {
                var z = In(n, 0);
                var w = In(n, 1);
                return z is null ? null : [.. z[..^1], w is { Length: 3 } ? w[0] : null];
            }
            default:
                return null;
        }
    }

    private long?[]? ReshapeShape(Node n)
    {
        var x = In(n, 0);
        if (n.Inputs[1] is not { } shapeValue || IntsOf(shapeValue) is not { } target)
            return null;
        bool allowZero = n.GetInt("allowzero", 0) != 0;
        var r = new long?[target.Count];
        int minus = -1;
        for (int i = 0; i < r.Length; i++)
        {
            var d = target[i];
            if (d == 0 && !allowZero)
                r[i] = x is not null && i < x.Length ? x[i] : null;
            else if (d == -1)
            {
                minus = i;
                r[i] = null;
            }
            else
                r[i] = d;
        }
        if (minus >= 0 && x is not null && x.All(d => d.HasValue) && r.Where((_, i) => i != minus).All(d => d.HasValue))
        {
            long total = x.Aggregate(1L, (a, d) => a * d!.Value);
            long rest = r.Where((_, i) => i != minus).Aggregate(1L, (a, d) => a * d!.Value);
            r[minus] = rest == 0 ? null : total / rest;
        }
        return r;
    }

    private long?[]? SliceShape(Node n)
    {
        var x = In(n, 0);
        if (x is null)
            return null;
        var r = (long?[])x.Clone();
        var starts = n.Inputs.Count > 1 && n.Inputs[1] is { } s ? IntsOf(s) : null;
        var ends = n.Inputs.Count > 2 && n.Inputs[2] is { } e ? IntsOf(e) : null;
        var axes = n.Inputs.Count > 3 && n.Inputs[3] is { } a ? IntsOf(a) : null;
        var steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? IntsOf(st) : null;
        if (starts is null || ends is null)
            return [.. x.Select(_ => (long?)null)];
        for (int i = 0; i < starts.Count; i++)
        {
            long? axis = axes is null ? i : (i < axes.Count ? axes[i] : null);
            if (axis is null)
                return [.. x.Select(_ => (long?)null)];
            int ax = Axis(axis.Value, x.Length);
            long step = steps is not null && i < steps.Count ? steps[i] ?? 0 : 1;
            var dim = x[ax];
            if (starts[i] is not { } st0 || i >= ends.Count || ends[i] is not { } en0 || dim is null || step != 1)
            {
                r[ax] = null;
                continue;
            }
            long d = dim.Value;
            long b = Math.Clamp(st0 < 0 ? st0 + d : st0, 0, d);
            long f = Math.Clamp(en0 < 0 ? en0 + d : en0, 0, d);
            r[ax] = Math.Max(0, f - b);
        }
        return r;
    }

    private long?[]? SplitShape(Node n, int outputIndex)
    {
        var x = In(n, 0);
        if (x is null)
            return null;
        int axis = Axis(n.GetInt("axis", 0), x.Length);
        var r = (long?[])x.Clone();
        IReadOnlyList<long?>? split = n.Inputs.Count > 1 && n.Inputs[1] is { } sv ? IntsOf(sv) : n.GetInts("split")?.Select(v => (long?)v).ToList();
        if (split is not null && outputIndex < split.Count)
            r[axis] = split[outputIndex];
        else if (split is null && x[axis] is { } d && d % n.Outputs.Count == 0)
            r[axis] = d / n.Outputs.Count;
        else
            r[axis] = null;
        return r;
    }

    private long[]? UnsqueezeAxes(Node n)
    {
        if (n.GetInts("axes") is { } attr)
            return [.. attr];
        if (n.Inputs.Count > 1 && n.Inputs[1] is { } a && IntsOf(a) is { } vals && vals.All(v => v.HasValue))
            return [.. vals.Select(v => v!.Value)];
        return null;
    }

    private long?[]? EvalInts(Value v)
    {
        if (ConstantOf(v) is { } t)
        {
            if (t.ElementCount > MaxIntElements || t.ElementType is not (ElementType.Int64 or ElementType.Int32))
                return null;
            return [.. t.ToInt64Array().Select(x => (long?)x)];
        }
        if (v.Producer is not { } n || !n.IsDefaultDomain)
            return null;
        switch (n.OpType)
        {
            case "Shape":
            {
                var x = In(n, 0);
                if (x is null)
                    return null;
                long start = n.GetInt("start", 0);
                long end = n.GetInt("end", x.Length);
                int b = (int)Math.Clamp(start < 0 ? start + x.Length : start, 0, x.Length);
                int e = (int)Math.Clamp(end < 0 ? end + x.Length : end, 0, x.Length);
                return [.. x.Skip(b).Take(Math.Max(0, e - b))];
            }
            case "Cast" or "Identity":
                return n.Inputs[0] is { } c ? IntsOf(c)?.ToArray() : null;
            case "Unsqueeze" or "Squeeze":
                return n.Inputs[0] is { } u && IntsOf(u) is { Count: 1 } one ? [.. one] : null;
            case "Concat":
            {
                var r = new List<long?>();
                foreach (var input in n.Inputs)
                {
                    if (input is null || IntsOf(input) is not { } part)
                        return null;
                    r.AddRange(part);
                }
                return r.Count <= MaxIntElements ? [.. r] : null;
            }
            case "Gather":
            {
                if (n.Inputs[0] is not { } d || n.Inputs[1] is not { } i || IntsOf(d) is not { } data || IntsOf(i) is not { } idx)
                    return null;
                return [.. idx.Select(k => k is { } kk && (kk < 0 ? kk + data.Count : kk) is var j && j >= 0 && j < data.Count ? data[(int)j] : null)];
            }
            case "Slice":
            {
                if (n.Inputs[0] is not { } d || IntsOf(d) is not { } data)
                    return null;
                var starts = n.Inputs[1] is { } s ? IntsOf(s) : null;
                var ends = n.Inputs[2] is { } e ? IntsOf(e) : null;
                if (starts is not { Count: 1 } || ends is not { Count: 1 } || starts[0] is not { } st || ends[0] is not { } en)
                    return null;
                long len = data.Count;
                int b = (int)Math.Clamp(st < 0 ? st + len : st, 0, len);
                int f = (int)Math.Clamp(en < 0 ? en + len : en, 0, len);
                return [.. data.Skip(b).Take(Math.Max(0, f - b))];
            }
            case "Add" or "Sub" or "Mul" or "Div":
            {
                if (n.Inputs[0] is not { } a || n.Inputs[1] is not { } b || IntsOf(a) is not { } x || IntsOf(b) is not { } y)
                    return null;
                int len = Math.Max(x.Count, y.Count);
                if ((x.Count != len && x.Count != 1) || (y.Count != len && y.Count != 1))
                    return null;
                var r = new long?[len];
                for (int k = 0; k < len; k++)
                {
                    var p = x[x.Count == 1 ? 0 : k];
                    var q = y[y.Count == 1 ? 0 : k];
                    r[k] = p is { } pp && q is { } qq ? n.OpType switch
                    {
                        "Add" => pp + qq,
                        "Sub" => pp - qq,
                        "Mul" => pp * qq,
                        _ => qq == 0 ? null : (long)Math.Floor((double)pp / qq),
                    } : null;
                }
                return r;
            }
            default:
                return null;
        }
    }

    private static long? Product(IEnumerable<long?> dims)
    {
        long p = 1;
        foreach (var d in dims)
        {
            if (d is null)
                return null;
            p *= d.Value;
        }
        return p;
    }

    private static int Axis(long axis, int rank) => (int)(axis < 0 ? axis + rank : axis);

    private static long?[]? MatMulShape(long?[]? a, long?[]? b)
    {
        if (a is null || b is null || a.Length == 0 || b.Length == 0)
            return null;
        if (a.Length == 1 || b.Length == 1)
            return null;
        var batch = Broadcast([a[..^2], b[..^2]]);
        return batch is null ? null : [.. batch, a[^2], b[^1]];
    }

    private static long?[]? Broadcast(long?[]?[] shapes)
    {
        if (shapes.Any(s => s is null))
            return null;
        int rank = shapes.Max(s => s!.Length);
        var r = new long?[rank];
        for (int i = 0; i < rank; i++)
        {
            long? dim = 1;
            bool unknown = false;
            foreach (var s in shapes)
            {
                int k = i - (rank - s!.Length);
                if (k < 0)
                    continue;
                var d = s[k];
                if (d is null)
                    unknown = true;
                else if (d != 1)
                    dim = d;
            }
            r[i] = unknown && dim == 1 ? null : dim;
        }
        return r;
    }
}
