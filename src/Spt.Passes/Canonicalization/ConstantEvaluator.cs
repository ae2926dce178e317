using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// A small dense tensor for compile-time evaluation: integer and bool elements as <c>long</c> (exact, so INT64_MAX
/// slice ends survive), floating-point elements as <c>double</c>; written back in the original element type.
/// </summary>
internal sealed class ConstArray
{
    public ConstArray(ElementType type, long[] shape, long[]? ints, double[]? reals)
    {
        Type = type;
        Shape = shape;
        Ints = ints;
        Reals = reals;
    }

    public ElementType Type { get; }

    public long[] Shape { get; }

    public long[]? Ints { get; }

    public double[]? Reals { get; }

    public bool IsReal => Reals is not null;

    public int Count => Ints?.Length ?? Reals!.Length;

    public static bool IsSupported(ElementType t) => ShapeAnalysis.IsInteger(t) || t is ElementType.Bool
        or ElementType.Float or ElementType.Double or ElementType.Float16;

    public static ConstArray From(Tensor t)
    {
        long[] shape = [.. t.Dims];
        return t.ElementType.IsFloatingPoint()
            ? new ConstArray(t.ElementType, shape, null, t.ToDoubleArray())
            : new ConstArray(t.ElementType, shape, t.ToInt64Array(), null);
    }

    public static ConstArray Of(ElementType type, long[] shape, Func<int, double> real, Func<int, long> integer)
    {
        int n = (int)shape.Aggregate(1L, (p, d) => p * d);
        return type.IsFloatingPoint()
            ? new ConstArray(type, shape, null, [.. Enumerable.Range(0, n).Select(real)])
            : new ConstArray(type, shape, [.. Enumerable.Range(0, n).Select(integer)], null);
    }

    public double Real(int i) => Reals is not null ? Reals[i] : Ints![i];

    public long Int(int i) => Ints is not null ? Ints[i] : (long)Reals![i];

    public Tensor ToTensor(string name)
    {
        long[] dims = Shape;
        return Type switch
        {
            ElementType.Float => Tensor.Create(name, Reals!.Select(v => (float)v).ToArray(), dims),
            ElementType.Double => Tensor.Create(name, Reals!.ToArray(), dims),
            ElementType.Float16 => Tensor.Create(name, Reals!.Select(v => (Half)v).ToArray(), dims),
            ElementType.Int64 => Tensor.Create(name, Ints!.ToArray(), dims),
            ElementType.Int32 => Tensor.Create(name, Ints!.Select(v => (int)v).ToArray(), dims),
            ElementType.Int16 => Tensor.Create(name, Ints!.Select(v => (short)v).ToArray(), dims),
            ElementType.Int8 => Tensor.Create(name, Ints!.Select(v => (sbyte)v).ToArray(), dims),
            ElementType.UInt8 => Tensor.Create(name, Ints!.Select(v => (byte)v).ToArray(), dims),
            ElementType.UInt16 => Tensor.Create(name, Ints!.Select(v => (ushort)v).ToArray(), dims),
            ElementType.UInt32 => Tensor.Create(name, Ints!.Select(v => (uint)v).ToArray(), dims),
            ElementType.UInt64 => Tensor.Create(name, Ints!.Select(v => (ulong)v).ToArray(), dims),
            ElementType.Bool => Tensor.Create(name, Ints!.Select(v => v != 0).ToArray(), dims),
            _ => throw new InvalidOperationException($"cannot write a constant of {Type}"),
        };
    }

    public static long[] Strides(long[] shape)
    {
        var s = new long[shape.Length];
        long acc = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            s[i] = acc;
            acc *= shape[i];
        }
        return s;
    }
}

/// <summary>
/// Evaluates one default-domain node on constant inputs, in C#. Returns null for an op it does not know, a case it
/// does not handle (unsupported dtype, odd attribute), or a result over the size cap: the node is then left alone.
/// Only deterministic ops are listed.
/// </summary>
internal static class ConstantEvaluator
{
    public static readonly IReadOnlySet<string> Supported = new HashSet<string>(StringComparer.Ordinal)
    {
        "Constant", "Identity", "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Reshape",
        "Range", "Equal", "Less", "Greater", "Not", "Where", "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
        "Neg", "Transpose", "Expand", "ReduceProd",
    };

    public static ConstArray? Evaluate(Node n, IReadOnlyList<ConstArray?> inputs, long opset, long maxElements)
    {
        try
        {
            return EvaluateNode(n, inputs, opset, maxElements);
        }
        catch (AxisOutOfRangeException e)
        {
            throw OnnxModelException.ForNode(n, e.Message);
        }
    }

    private static ConstArray? EvaluateNode(Node n, IReadOnlyList<ConstArray?> inputs, long opset, long maxElements)
    {
        ConstArray? In(int i) => i < inputs.Count ? inputs[i] : null;
        var x = In(0);
        ConstArray? result = n.OpType switch
        {
            "Identity" => x,
            "Shape" => x is null ? null : ShapeOf(n, x),
            "Size" => x is null ? null : new ConstArray(ElementType.Int64, [], [x.Count], null),
            "Cast" => x is null ? null : Cast(x, (ElementType)n.GetInt("to", 0)),
            "Neg" => Map(x, v => -v, v => -v),
            "Sqrt" => x is { IsReal: true } ? Map(x, Math.Sqrt, v => v) : null,
            "Not" => x is { Type: ElementType.Bool } ? Map(x, v => v, v => v == 0 ? 1 : 0) : null,
            "Add" => Binary(x, In(1), (a, b) => a + b, (a, b) => a + b),
            "Sub" => Binary(x, In(1), (a, b) => a - b, (a, b) => a - b),
            "Mul" => Binary(x, In(1), (a, b) => a * b, (a, b) => a * b),
            "Div" => In(1) is { IsReal: false } d && d.Ints!.Contains(0) ? null : Binary(x, In(1), (a, b) => a / b, (a, b) => a / b),
            "Pow" => x is { IsReal: true } ? Binary(x, In(1), Math.Pow, (a, b) => a) : null,
            "Equal" => Compare(x, In(1), (a, b) => a == b),
            "Less" => Compare(x, In(1), (a, b) => a < b),
            "Greater" => Compare(x, In(1), (a, b) => a > b),
            "Where" => Where(x, In(1), In(2)),
            "Unsqueeze" => x is null ? null : Unsqueeze(n, x, In(1), opset),
            "Squeeze" => x is null ? null : Squeeze(n, x, In(1), opset),
            "Reshape" => x is null || In(1) is not { } t ? null : Reshape(x, t, n.GetInt("allowzero", 0) != 0),
            "Concat" => inputs.Any(i => i is null) ? null : Concat(inputs!, n.GetInt("axis", 0)),
            "Gather" => x is null || In(1) is not { IsReal: false } idx ? null : Gather(x, idx, n.GetInt("axis", 0)),
            "Slice" => x is null || opset < 10 ? null : Slice(x, In(1), In(2), In(3), In(4)),
            "Range" => Range(x, In(1), In(2), maxElements),
            "ConstantOfShape" => x is null ? null : ConstantOfShape(n, x, maxElements),
            "Transpose" => x is null ? null : Transpose(x, n.GetInts("perm")),
            "Expand" => x is null || In(1) is not { IsReal: false } s ? null : Expand(x, s.Ints!, maxElements),
            "ReduceProd" => x is null ? null : ReduceProd(n, x, In(1), opset),
            // Mask arithmetic (evaluated for mask probing; not folded, see Supported).
            "LessOrEqual" => Compare(x, In(1), (a, b) => a <= b),
            "GreaterOrEqual" => Compare(x, In(1), (a, b) => a >= b),
            "And" => Logical(x, In(1), (a, b) => a && b),
            "Or" => Logical(x, In(1), (a, b) => a || b),
            "Xor" => Logical(x, In(1), (a, b) => a != b),
            "Min" => inputs.Count == 2 ? Binary(x, In(1), Math.Min, Math.Min) : null,
            "Max" => inputs.Count == 2 ? Binary(x, In(1), Math.Max, Math.Max) : null,
            "Trilu" => x is null ? null : Trilu(x, In(1), n.GetInt("upper", 1) != 0),
            _ => null,
        };
        return result is not null && result.Count <= maxElements ? result : null;
    }

    private static ConstArray ShapeOf(Node n, ConstArray x)
    {
        int rank = x.Shape.Length;
        long start = n.GetInt("start", 0), end = n.GetInt("end", rank);
        var (s, e) = ShapeAnalysis.ClampRange(start, end, rank);
        long[] dims = e > s ? x.Shape[(int)s..(int)e] : [];
        return new ConstArray(ElementType.Int64, [dims.Length], dims, null);
    }

    private static ConstArray? Cast(ConstArray x, ElementType to)
    {
        if (!ConstArray.IsSupported(to))
            return null;
        if (to.IsFloatingPoint())
            return new ConstArray(to, x.Shape, null, [.. Enumerable.Range(0, x.Count).Select(x.Real)]);
        if (to == ElementType.Bool)
            return new ConstArray(to, x.Shape, [.. Enumerable.Range(0, x.Count).Select(i => x.Real(i) != 0 ? 1L : 0L)], null);
        if (x.IsReal && x.Reals!.Any(v => double.IsNaN(v) || Math.Abs(v) > 9e18))
            return null;
        return new ConstArray(to, x.Shape, [.. Enumerable.Range(0, x.Count).Select(x.Int)], null);
    }

    private static ConstArray? Map(ConstArray? x, Func<double, double> real, Func<long, long> integer) =>
        x is null ? null : x.IsReal
            ? new ConstArray(x.Type, x.Shape, null, [.. x.Reals!.Select(real)])
            : new ConstArray(x.Type, x.Shape, [.. x.Ints!.Select(integer)], null);

    private static long[]? BroadcastShape(params long[][] shapes)
    {
        int rank = shapes.Max(s => s.Length);
        var result = new long[rank];
        for (int i = 0; i < rank; i++)
        {
            long d = 1;
            foreach (var s in shapes)
            {
                long e = i - (rank - s.Length) >= 0 ? s[i - (rank - s.Length)] : 1;
                if (e == 1)
                    continue;
                if (d != 1 && d != e)
                    return null;
                d = e;
            }
            result[i] = d;
        }
        return result;
    }

    // Index into x of output element flat (broadcasting x to outShape).
    private static int BroadcastIndex(long[] xShape, long[] outShape, long[] outStrides, int flat)
    {
        long idx = 0, stride = 1;
        for (int i = xShape.Length - 1; i >= 0; i--)
        {
            int o = i + outShape.Length - xShape.Length;
            long coord = flat / outStrides[o] % outShape[o];
            if (xShape[i] != 1)
                idx += coord * stride;
            stride *= xShape[i];
        }
        return (int)idx;
    }

    private static ConstArray? Binary(ConstArray? a, ConstArray? b, Func<double, double, double> real, Func<long, long, long> integer)
    {
        if (a is null || b is null || a.Type != b.Type || a.Type == ElementType.Bool)
            return null;
        return Zip(a, b, a.Type, (x, y) => real(a.Real(x), b.Real(y)), (x, y) => integer(a.Int(x), b.Int(y)));
    }

    private static ConstArray? Compare(ConstArray? a, ConstArray? b, Func<double, double, bool> op)
    {
        if (a is null || b is null || a.Type != b.Type)
            return null;
        return Zip(a, b, ElementType.Bool, (_, _) => 0,
            (x, y) => (a.IsReal ? op(a.Real(x), b.Real(y)) : CompareInts(a.Int(x), b.Int(y), op)) ? 1 : 0);
    }

    // Integer compare without going through double (exact for large values).
    private static bool CompareInts(long x, long y, Func<double, double, bool> op) => op(x.CompareTo(y), 0);

    private static ConstArray? Logical(ConstArray? a, ConstArray? b, Func<bool, bool, bool> op)
    {
        if (a is not { Type: ElementType.Bool } || b is not { Type: ElementType.Bool })
            return null;
        return Zip(a, b, ElementType.Bool, (_, _) => 0, (x, y) => op(a.Int(x) != 0, b.Int(y) != 0) ? 1 : 0);
    }

    // An elementwise result over the broadcast shape of a and b; the element functions get the flat indices into a, b.
    private static ConstArray? Zip(ConstArray a, ConstArray b, ElementType type, Func<int, int, double> real, Func<int, int, long> integer)
    {
        var shape = BroadcastShape(a.Shape, b.Shape);
        if (shape is null)
            return null;
        var strides = ConstArray.Strides(shape);
        return ConstArray.Of(type, shape,
            i => real(BroadcastIndex(a.Shape, shape, strides, i), BroadcastIndex(b.Shape, shape, strides, i)),
            i => integer(BroadcastIndex(a.Shape, shape, strides, i), BroadcastIndex(b.Shape, shape, strides, i)));
    }

    // Trilu: keeps x[..., i, j] where j - i >= k (upper) or j - i <= k (lower), zero elsewhere.
    private static ConstArray? Trilu(ConstArray x, ConstArray? k, bool upper)
    {
        if (x.Shape.Length < 2 || k is { Count: not 1 })
            return null;
        long diagonal = k is null ? 0 : k.Int(0);
        long rows = x.Shape[^2], cols = x.Shape[^1];
        bool Keep(int flat)
        {
            long i = flat / cols % rows, j = flat % cols;
            return upper ? j - i >= diagonal : j - i <= diagonal;
        }
        return ConstArray.Of(x.Type, x.Shape, f => Keep(f) ? x.Real(f) : 0, f => Keep(f) ? x.Int(f) : 0);
    }

    private static ConstArray? Where(ConstArray? c, ConstArray? a, ConstArray? b)
    {
        if (c is null || a is null || b is null || c.Type != ElementType.Bool || a.Type != b.Type)
            return null;
        var shape = BroadcastShape(c.Shape, a.Shape, b.Shape);
        if (shape is null)
            return null;
        var strides = ConstArray.Strides(shape);
        bool Pick(int i) => c.Int(BroadcastIndex(c.Shape, shape, strides, i)) != 0;
        return ConstArray.Of(a.Type, shape,
            i => Pick(i) ? a.Real(BroadcastIndex(a.Shape, shape, strides, i)) : b.Real(BroadcastIndex(b.Shape, shape, strides, i)),
            i => Pick(i) ? a.Int(BroadcastIndex(a.Shape, shape, strides, i)) : b.Int(BroadcastIndex(b.Shape, shape, strides, i)));
    }

    private static long[]? AxesOf(Node n, ConstArray? input, long opset, long since)
    {
        if (opset >= since)
            return input?.Ints;
        return n.GetInts("axes")?.ToArray();
    }

    private static ConstArray? Unsqueeze(Node n, ConstArray x, ConstArray? axesInput, long opset)
    {
        var axes = AxesOf(n, axesInput, opset, 13);
        if (axes is null)
            return null;
        int rank = x.Shape.Length + axes.Length;
        var set = axes.Select(a => ShapeAnalysis.NormAxis(a, rank)).ToHashSet();
        var shape = new List<long>();
        int k = 0;
        for (int i = 0; i < rank; i++)
            shape.Add(set.Contains(i) ? 1 : x.Shape[k++]);
        return new ConstArray(x.Type, [.. shape], x.Ints, x.Reals);
    }

    private static ConstArray? Squeeze(Node n, ConstArray x, ConstArray? axesInput, long opset)
    {
        var axes = AxesOf(n, axesInput, opset, 13) ?? [];
        var set = axes.Length == 0
            ? Enumerable.Range(0, x.Shape.Length).Where(i => x.Shape[i] == 1).ToHashSet()
            : axes.Select(a => ShapeAnalysis.NormAxis(a, x.Shape.Length)).ToHashSet();
        if (set.Any(i => i < 0 || i >= x.Shape.Length || x.Shape[i] != 1))
            return null;
        return new ConstArray(x.Type, [.. x.Shape.Where((_, i) => !set.Contains(i))], x.Ints, x.Reals);
    }

    private static ConstArray? Reshape(ConstArray x, ConstArray target, bool allowZero)
    {
        if (target.IsReal)
            return null;
        var shape = (long[])target.Ints!.Clone();
        int minus = -1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == 0 && !allowZero)
            {
                if (i >= x.Shape.Length)
                    return null;
                shape[i] = x.Shape[i];
            }
            else if (shape[i] == -1)
            {
                if (minus >= 0)
                    return null;
                minus = i;
            }
        }
        if (minus >= 0)
        {
            long others = shape.Where((_, i) => i != minus).Aggregate(1L, (p, d) => p * d);
            if (others == 0 || x.Count % others != 0)
                return null;
            shape[minus] = x.Count / others;
        }
        return shape.Aggregate(1L, (p, d) => p * d) == x.Count ? new ConstArray(x.Type, shape, x.Ints, x.Reals) : null;
    }

    private static ConstArray? Concat(IReadOnlyList<ConstArray> parts, long axisAttr)
    {
        var first = parts[0];
        int rank = first.Shape.Length;
        if (rank == 0 || parts.Any(p => p.Type != first.Type || p.Shape.Length != rank))
            return null;
        int axis = ShapeAnalysis.NormAxis(axisAttr, rank);
        for (int d = 0; d < rank; d++)
        {
            if (d != axis && parts.Any(p => p.Shape[d] != first.Shape[d]))
                return null;
        }
        var shape = (long[])first.Shape.Clone();
        shape[axis] = parts.Sum(p => p.Shape[axis]);
        long outer = first.Shape.Take(axis).Aggregate(1L, (p, d) => p * d);
        var reals = new List<double>();
        var ints = new List<long>();
        for (long o = 0; o < outer; o++)
        {
            foreach (var p in parts)
            {
                long chunk = p.Shape.Skip(axis).Aggregate(1L, (a, d) => a * d);
                for (long j = 0; j < chunk; j++)
                {
                    int i = (int)(o * chunk + j);
                    if (first.IsReal)
                        reals.Add(p.Real(i));
                    else
                        ints.Add(p.Int(i));
                }
            }
        }
        return first.IsReal ? new ConstArray(first.Type, shape, null, [.. reals]) : new ConstArray(first.Type, shape, [.. ints], null);
    }

    private static ConstArray? Gather(ConstArray x, ConstArray idx, long axisAttr)
    {
        int rank = x.Shape.Length;
        if (rank == 0)
            return null;
        int axis = ShapeAnalysis.NormAxis(axisAttr, rank);
        long dim = x.Shape[axis];
        var indices = idx.Ints!.Select(i => i < 0 ? i + dim : i).ToArray();
        if (indices.Any(i => i < 0 || i >= dim))
            return null;
        long outer = x.Shape.Take(axis).Aggregate(1L, (p, d) => p * d);
        long inner = x.Shape.Skip(axis + 1).Aggregate(1L, (p, d) => p * d);
        long[] shape = [.. x.Shape.Take(axis), .. idx.Shape, .. x.Shape.Skip(axis + 1)];
        var order = new List<int>();
        for (long o = 0; o < outer; o++)
        {
            foreach (var k in indices)
            {
                for (long j = 0; j < inner; j++)
                    order.Add((int)((o * dim + k) * inner + j));
            }
        }
        return x.IsReal
            ? new ConstArray(x.Type, shape, null, [.. order.Select(i => x.Reals![i])])
            : new ConstArray(x.Type, shape, [.. order.Select(i => x.Ints![i])], null);
    }

    private static ConstArray? Slice(ConstArray x, ConstArray? starts, ConstArray? ends, ConstArray? axesIn, ConstArray? stepsIn)
    {
        if (starts is null || ends is null || starts.IsReal || ends.IsReal)
            return null;
        int rank = x.Shape.Length;
        var axes = axesIn?.Ints ?? [.. Enumerable.Range(0, starts.Count).Select(i => (long)i)];
        var steps = stepsIn?.Ints ?? [.. Enumerable.Repeat(1L, starts.Count)];
        var begin = new long[rank];
        var step = Enumerable.Repeat(1L, rank).ToArray();
        var shape = (long[])x.Shape.Clone();
        for (int i = 0; i < axes.Length; i++)
        {
            int a = ShapeAnalysis.NormAxis(axes[i], rank);
            long dim = x.Shape[a], st = steps[i];
            if (st == 0)
                return null;
            long s = starts.Ints![i], e = ends.Ints![i];
            if (s < 0)
                s += dim;
            if (e < 0)
                e += dim;
            if (st > 0)
            {
                s = Math.Clamp(s, 0, dim);
                e = Math.Clamp(e, 0, dim);
                shape[a] = Math.Max(0, (e - s + st - 1) / st);
            }
            else
            {
                s = Math.Clamp(s, 0, dim - 1);
                e = Math.Clamp(e, -1, dim - 1);
                shape[a] = Math.Max(0, (s - e + (-st) - 1) / (-st));
            }
            begin[a] = s;
            step[a] = st;
        }
        var inStrides = ConstArray.Strides(x.Shape);
        var outStrides = ConstArray.Strides(shape);
        int Source(int flat)
        {
            long idx = 0;
            for (int d = 0; d < rank; d++)
                idx += (begin[d] + flat / outStrides[d] % shape[d] * step[d]) * inStrides[d];
            return (int)idx;
        }
        return ConstArray.Of(x.Type, shape, i => x.Real(Source(i)), i => x.Int(Source(i)));
    }

    private static ConstArray? Range(ConstArray? start, ConstArray? limit, ConstArray? delta, long maxElements)
    {
        if (start is null || limit is null || delta is null || start.Type != limit.Type || start.Type != delta.Type)
            return null;
        double s = start.Real(0), l = limit.Real(0), d = delta.Real(0);
        if (d == 0)
            return null;
        long n = Math.Max(0, (long)Math.Ceiling((l - s) / d));
        if (n > maxElements)
            return null;
        return ConstArray.Of(start.Type, [n], i => s + i * d, i => start.Int(0) + i * delta.Int(0));
    }

    private static ConstArray? ConstantOfShape(Node n, ConstArray shape, long maxElements)
    {
        if (shape.IsReal || shape.Ints!.Any(d => d < 0))
            return null;
        long count = shape.Ints!.Aggregate(1L, (p, d) => p * d);
        if (count > maxElements)
            return null;
        var fill = n.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? ConstArray.From(a.AsTensor()) : null;
        var type = fill?.Type ?? ElementType.Float;
        if (!ConstArray.IsSupported(type))
            return null;
        return ConstArray.Of(type, shape.Ints!, _ => fill?.Real(0) ?? 0.0, _ => fill?.Int(0) ?? 0);
    }

    private static ConstArray? Transpose(ConstArray x, IReadOnlyList<long>? permAttr)
    {
        int rank = x.Shape.Length;
        var perm = permAttr?.Select(p => (int)p).ToArray() ?? [.. Enumerable.Range(0, rank).Reverse()];
        if (perm.Length != rank)
            return null;
        long[] shape = [.. perm.Select(p => x.Shape[p])];
        var inStrides = ConstArray.Strides(x.Shape);
        var outStrides = ConstArray.Strides(shape);
        int Source(int flat)
        {
            long idx = 0;
            for (int d = 0; d < rank; d++)
                idx += flat / outStrides[d] % shape[d] * inStrides[perm[d]];
            return (int)idx;
        }
        return ConstArray.Of(x.Type, shape, i => x.Real(Source(i)), i => x.Int(Source(i)));
    }

    private static ConstArray? Expand(ConstArray x, long[] target, long maxElements)
    {
        var shape = BroadcastShape(x.Shape, target);
        if (shape is null || shape.Aggregate(1L, (p, d) => p * d) > maxElements)
            return null;
        var strides = ConstArray.Strides(shape);
        return ConstArray.Of(x.Type, shape, i => x.Real(BroadcastIndex(x.Shape, shape, strides, i)), i => x.Int(BroadcastIndex(x.Shape, shape, strides, i)));
    }

    private static ConstArray? ReduceProd(Node n, ConstArray x, ConstArray? axesInput, long opset)
    {
        var axes = AxesOf(n, axesInput, opset, 18) ?? [];
        int rank = x.Shape.Length;
        var set = (axes.Length == 0 ? Enumerable.Range(0, rank) : axes.Select(a => ShapeAnalysis.NormAxis(a, rank))).ToHashSet();
        if (axes.Length == 0 && n.GetInt("noop_with_empty_axes", 0) != 0)
            return x;
        bool keep = n.GetInt("keepdims", 1) != 0;
        var outShapeKeep = x.Shape.Select((d, i) => set.Contains(i) ? 1L : d).ToArray();
        var strides = ConstArray.Strides(outShapeKeep);
        var inStrides = ConstArray.Strides(x.Shape);
        int outCount = (int)outShapeKeep.Aggregate(1L, (p, d) => p * d);
        var reals = Enumerable.Repeat(1.0, outCount).ToArray();
        var ints = Enumerable.Repeat(1L, outCount).ToArray();
        for (int i = 0; i < x.Count; i++)
        {
            long o = 0;
            for (int d = 0; d < rank; d++)
            {
                long coord = i / inStrides[d] % x.Shape[d];
                if (!set.Contains(d))
                    o += coord * strides[d];
            }
            if (x.IsReal)
                reals[o] *= x.Reals![i];
            else
                ints[o] *= x.Ints![i];
        }
        long[] shape = keep ? outShapeKeep : [.. x.Shape.Where((_, i) => !set.Contains(i))];
        return x.IsReal ? new ConstArray(x.Type, shape, null, reals) : new ConstArray(x.Type, shape, ints, null);
    }
}
