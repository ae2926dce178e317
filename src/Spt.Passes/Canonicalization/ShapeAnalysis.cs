using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Symbolic shapes of a graph's values, and the symbolic content of small integer "shape-like" tensors (what
/// <c>Shape(x)</c>, <c>Gather(Shape(x), 1)</c> or a <c>Concat</c> of such hold). Dimensions are IR <see cref="Dim"/>s:
/// a known size, or a symbol. Symbols come from the model (<c>batch</c>, <c>sequence</c>) or are made fresh
/// (<c>?3</c>) for sizes nothing names; two dims are the same size when they are equal. Computed once for a graph
/// (a forward walk in node order); passes that change the graph compute it again.
/// </summary>
public sealed class ShapeAnalysis
{
    private readonly Dictionary<Value, Dim[]> _shapes = [];
    private readonly Dictionary<Value, Dim[]> _elements = [];
    private readonly long _opset;
    private int _fresh;

    private ShapeAnalysis(long opset) => _opset = opset;

    /// <summary>Analyses the main graph of <paramref name="model"/>.</summary>
    public static ShapeAnalysis Run(Model model)
    {
        var a = new ShapeAnalysis(model.GetOpsetVersion("") ?? 17);
        var g = model.Graph;
        foreach (var v in g.Inputs)
            a.Seed(v);
        foreach (var v in g.Initializers)
            a.Seed(v);
        foreach (var node in g.Nodes)
        {
            try
            {
                a.Visit(node);
            }
            catch (AxisOutOfRangeException e)
            {
                throw OnnxModelException.ForNode(node, e.Message);
            }
        }
        return a;
    }

    /// <summary>The shape of <paramref name="value"/>, or null when its rank is unknown.</summary>
    public IReadOnlyList<Dim>? ShapeOf(Value value) => _shapes.GetValueOrDefault(value);

    /// <summary>
    /// The elements of a small integer tensor of rank 0 or 1, each a known number or a symbol (a dimension of some
    /// tensor), or null when they are not tracked.
    /// </summary>
    public IReadOnlyList<Dim>? ElementsOf(Value value) => _elements.GetValueOrDefault(value);

    /// <summary>Whether every dimension is a known size.</summary>
    public static bool IsStatic(IReadOnlyList<Dim> dims) => dims.All(d => d.IsKnown);

    private Dim Fresh() => new("?" + (++_fresh));

    private void Seed(Value v)
    {
        if (v.Initializer is { } t)
        {
            _shapes[v] = [.. t.Dims.Select(d => new Dim(d))];
            if (!v.IsGraphInput)
                SeedElements(v, t);
            return;
        }
        if (v.Shape is { } s)
            _shapes[v] = [.. s.Select(d => d.IsKnown || d.Param is { Length: > 0 } ? d with { Denotation = null } : Fresh())];
    }

    private void SeedElements(Value v, Tensor t)
    {
        if (t.Dims.Count <= 1 && t.ElementCount <= 64 && IsInteger(t.ElementType))
            _elements[v] = [.. t.ToInt64Array().Select(x => new Dim(x))];
    }

    /// <summary>
    /// The element type of <paramref name="value"/> when it can be told: from a constant, a declared type, or the
    /// producing op (Shape gives int64, Cast its target, comparisons bool, shape-preserving ops their data input).
    /// </summary>
    public static ElementType? ElementTypeOf(Value value)
    {
        var v = value;
        for (int depth = 0; depth < 256; depth++)
        {
            if (Patterns.ConstPattern.TensorOf(v) is { } t)
                return t.ElementType;
            if (v.ElementType is { } declared && declared != ElementType.Undefined)
                return declared;
            if (v.Producer is not { } p || !p.IsDefaultDomain)
                return null;
            switch (p.OpType)
            {
                case "Shape" or "Size" or "ArgMax" or "ArgMin" or "NonZero":
                    return ElementType.Int64;
                case "Cast":
                    return (ElementType)p.GetInt("to", 0);
                case "Equal" or "Less" or "Greater" or "LessOrEqual" or "GreaterOrEqual" or "Not" or "And" or "Or" or "Xor" or "IsNaN":
                    return ElementType.Bool;
                case "ConstantOfShape":
                    return p.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? a.AsTensor().ElementType : ElementType.Float;
                case "Where":
                    if (p.Inputs.Count < 2 || p.Inputs[1] is not { } w)
                        return null;
                    v = w;
                    break;
                case "Constant" or "Range" or "If" or "Loop" or "Scan" or "RandomNormal" or "RandomUniform" or "EyeLike" or "CastLike":
                    return null;
                default:
                    if (p.Inputs.Count == 0 || p.Inputs[0] is not { } next || v.ProducerOutputIndex != 0)
                        return null;
                    v = next;
                    break;
            }
        }
        return null;
    }

    internal static bool IsInteger(ElementType t) => t is ElementType.Int64 or ElementType.Int32 or ElementType.Int16
        or ElementType.Int8 or ElementType.UInt8 or ElementType.UInt16 or ElementType.UInt32 or ElementType.UInt64;

    private Dim[]? S(Value? v) => v is null ? null : _shapes.GetValueOrDefault(v);

    private Dim[]? E(Value? v) => v is null ? null : _elements.GetValueOrDefault(v);

    private long[]? ConstInts(Value? v)
    {
        var e = E(v);
        return e is not null && IsStatic(e) ? [.. e.Select(d => d.Value!.Value)] : null;
    }

    private void Visit(Node node)
    {
        if (node.Outputs.Count == 0)
            return;
        if (!node.IsDefaultDomain)
        {
            // Contrib activations keep their input's shape (FastGelu's bias broadcasts along the last axis).
            if (node.Domain == "com.microsoft" && node.OpType is "FastGelu" or "Gelu" or "BiasGelu" or "QuickGelu" && S(node.Inputs[0]) is { } same)
                _shapes[node.Outputs[0]] = same;
            return;
        }
        var outV = node.Outputs[0];
        // Declared shapes win where present (value_info); otherwise infer.
        var inferred = Infer(node);
        if (inferred is not null)
            _shapes[outV] = inferred;
        else if (outV.Shape is { } declared)
            _shapes[outV] = [.. declared.Select(d => d.IsKnown || d.Param is { Length: > 0 } ? d with { Denotation = null } : Fresh())];
        if (node.OpType == "Split")
            InferSplit(node);
        if (node.OpType == "Dropout" && node.Outputs.Count > 1 && S(node.Inputs[0]) is { } x)
            _shapes[node.Outputs[1]] = x;
        var elements = InferElements(node);
        if (elements is not null)
            _elements[outV] = elements;
    }

    private Dim[]? Infer(Node n)
    {
        var x = S(n.Inputs.Count > 0 ? n.Inputs[0] : null);
        switch (n.OpType)
        {
            case "Constant":
                return n.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? [.. a.AsTensor().Dims.Select(d => new Dim(d))] : null;
            case "Identity" or "Relu" or "Gelu" or "Erf" or "Sqrt" or "Neg" or "Exp" or "Log" or "Tanh" or "Sigmoid" or "Cast"
                or "Softmax" or "LogSoftmax" or "LayerNormalization" or "Dropout" or "Not" or "Abs" or "Reciprocal" or "Softplus"
                or "Clip" or "LeakyRelu" or "Elu" or "HardSigmoid" or "Sin" or "Cos" or "IsNaN" or "CastLike" or "Trilu"
                or "Ceil" or "Floor" or "Round" or "Sign" or "BatchNormalization":
                return x;
            case "Add" or "Sub" or "Mul" or "Div" or "Pow" or "Equal" or "Less" or "Greater" or "LessOrEqual" or "GreaterOrEqual"
                or "And" or "Or" or "Xor" or "Max" or "Min" or "Mod" or "Where" or "Sum" or "Mean" or "PRelu":
                {
                    Dim[]? acc = x;
                    for (int i = 1; i < n.Inputs.Count && acc is not null; i++)
                        acc = Broadcast(acc, S(n.Inputs[i]));
                    return acc;
                }
            case "MatMul":
                return MatMulShape(x, S(n.Inputs[1]));
            case "Gemm":
                {
                    var b = S(n.Inputs[1]);
                    if (x is not { Length: 2 } || b is not { Length: 2 })
                        return null;
                    return [n.GetInt("transA", 0) != 0 ? x[1] : x[0], n.GetInt("transB", 0) != 0 ? b[0] : b[1]];
                }
            case "Transpose":
                {
                    if (x is null)
                        return null;
                    var perm = n.GetInts("perm") ?? [.. Enumerable.Range(0, x.Length).Reverse().Select(i => (long)i)];
                    return perm.Count == x.Length ? [.. perm.Select(p => x[(int)p])] : null;
                }
            case "Reshape":
                return ReshapeShape(n, x);
            case "Shape":
                return x is null ? null : [new Dim(ShapeRange(n, x.Length) is var (s0, e0) ? e0 - s0 : 0)];
            case "Size":
                return [];
            case "Gather":
                {
                    var idx = S(n.Inputs[1]);
                    if (x is null || idx is null)
                        return null;
                    int axis = NormAxis(n.GetInt("axis", 0), x.Length);
                    return [.. x.Take(axis), .. idx, .. x.Skip(axis + 1)];
                }
            case "Unsqueeze":
                {
                    var axes = _opset >= 13 ? ConstInts(n.Inputs.Count > 1 ? n.Inputs[1] : null) : n.GetInts("axes")?.ToArray();
                    if (x is null || axes is null)
                        return null;
                    int rank = x.Length + axes.Length;
                    var set = axes.Select(a => NormAxis(a, rank)).ToHashSet();
                    var result = new List<Dim>();
                    int k = 0;
                    for (int i = 0; i < rank; i++)
                        result.Add(set.Contains(i) ? new Dim(1) : x[k++]);
                    return [.. result];
                }
            case "Squeeze":
                {
                    if (x is null)
                        return null;
                    var axes = _opset >= 13 ? (n.Inputs.Count > 1 && n.Inputs[1] is { } ax ? ConstInts(ax) : []) : n.GetInts("axes")?.ToArray() ?? [];
                    if (axes is null)
                        return null;
                    if (axes.Length == 0)
                        return IsStatic(x) ? [.. x.Where(d => d.Value != 1)] : null;
                    var set = axes.Select(a => NormAxis(a, x.Length)).ToHashSet();
                    return [.. x.Where((_, i) => !set.Contains(i))];
                }
            case "Concat":
                {
                    var parts = n.Inputs.Select(S).ToList();
                    if (parts.Any(p => p is null) || parts.Count == 0)
                        return null;
                    int rank = parts[0]!.Length;
                    if (parts.Any(p => p!.Length != rank))
                        throw OnnxModelException.ForNode(n, $"inputs of ranks {string.Join(", ", parts.Select(p => p!.Length))} cannot be concatenated");
                    int axis = NormAxis(n.GetInt("axis", 0), rank);
                    var result = (Dim[])parts[0]!.Clone();
                    var along = parts.Select(p => p![axis]).ToList();
                    result[axis] = along.All(d => d.IsKnown) ? new Dim(along.Sum(d => d.Value!.Value)) : Fresh();
                    return result;
                }
            case "Slice":
                return SliceShape(n, x);
            case "ReduceMean" or "ReduceSum" or "ReduceMax" or "ReduceMin" or "ReduceProd" or "ReduceL2" or "ReduceSumSquare":
                {
                    if (x is null)
                        return null;
                    bool axesAsInput = n.OpType == "ReduceSum" ? _opset >= 13 : _opset >= 18;
                    long[]? axes = axesAsInput ? (n.Inputs.Count > 1 && n.Inputs[1] is { } ax ? ConstInts(ax) : []) : n.GetInts("axes")?.ToArray() ?? [];
                    if (axes is null)
                        return null;
                    var set = (axes.Length == 0 ? Enumerable.Range(0, x.Length) : axes.Select(a => NormAxis(a, x.Length))).ToHashSet();
                    bool keep = n.GetInt("keepdims", 1) != 0;
                    return keep ? [.. x.Select((d, i) => set.Contains(i) ? new Dim(1) : d)] : [.. x.Where((_, i) => !set.Contains(i))];
                }
            case "Expand":
                {
                    var target = E(n.Inputs[1]);
                    return x is null || target is null ? null : Broadcast(x, [.. target.Select(d => d.Value == 1 ? new Dim(1) : d)], expand: true);
                }
            case "ConstantOfShape":
                return E(n.Inputs[0]) is { } e ? [.. e] : null;
            case "Range":
                return [Fresh()];
            default:
                return null;
        }
    }

    private void InferSplit(Node n)
    {
        var x = S(n.Inputs[0]);
        if (x is null)
            return;
        int axis = NormAxis(n.GetInt("axis", 0), x.Length);
        long[]? sizes = _opset >= 13 ? (n.Inputs.Count > 1 && n.Inputs[1] is { } s ? ConstInts(s) : null) : n.GetInts("split")?.ToArray();
        for (int i = 0; i < n.Outputs.Count; i++)
        {
            var shape = (Dim[])x.Clone();
            if (sizes is not null && sizes.Length == n.Outputs.Count)
                shape[axis] = new Dim(sizes[i]);
            else if (x[axis].Value is { } total && total % n.Outputs.Count == 0)
                shape[axis] = new Dim(total / n.Outputs.Count);
            else
                shape[axis] = Fresh();
            _shapes[n.Outputs[i]] = shape;
        }
    }

    private Dim[]? InferElements(Node n)
    {
        var input = n.Inputs.Count > 0 ? n.Inputs[0] : null;
        switch (n.OpType)
        {
            case "Constant":
                if (n.GetAttribute("value") is { Kind: AttributeKind.Tensor } valueAttr)
                {
                    var t = valueAttr.AsTensor();
                    if (t.Dims.Count <= 1 && t.ElementCount <= 64 && IsInteger(t.ElementType))
                        return [.. t.ToInt64Array().Select(x => new Dim(x))];
                }
                return null;
            case "Shape":
                {
                    var x = S(input);
                    if (x is null)
                        return null;
                    var (start, end) = ShapeRange(n, x.Length);
                    return x[start..end];
                }
            case "Size":
                {
                    var x = S(input);
                    return x is not null && IsStatic(x) ? [new Dim(x.Aggregate(1L, (p, d) => p * d.Value!.Value))] : null;
                }
            case "Identity":
                return E(input);
            case "Cast":
                return IsInteger((ElementType)n.GetInt("to", 0)) ? E(input) : null;
            case "Gather":
                {
                    var e = E(input);
                    var idx = ConstInts(n.Inputs[1]);
                    if (e is null || idx is null || n.GetInt("axis", 0) != 0)
                        return null;
                    var picked = new Dim[idx.Length];
                    for (int i = 0; i < idx.Length; i++)
                    {
                        long k = idx[i] < 0 ? idx[i] + e.Length : idx[i];
                        if (k < 0 || k >= e.Length)
                            return null;
                        picked[i] = e[k];
                    }
                    return picked;
                }
            case "Unsqueeze" or "Squeeze":
                return E(input) is { Length: 1 } one ? one : null;
            case "Concat":
                {
                    var parts = n.Inputs.Select(E).ToList();
                    return parts.All(p => p is not null) ? [.. parts.SelectMany(p => p!)] : null;
                }
            case "Slice":
                {
                    var e = E(input);
                    if (e is null || _opset < 10)
                        return null;
                    var starts = ConstInts(n.Inputs[1]);
                    var ends = ConstInts(n.Inputs[2]);
                    var axes = n.Inputs.Count > 3 && n.Inputs[3] is { } ax ? ConstInts(ax) : [0];
                    var steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? ConstInts(st) : [1];
                    if (starts is not { Length: 1 } || ends is not { Length: 1 } || axes is not { Length: 1 } || axes[0] != 0 || steps is not [1])
                        return null;
                    var (s0, e0) = ClampRange(starts[0], ends[0], e.Length);
                    return e0 > s0 ? e[(int)s0..(int)e0] : [];
                }
            case "Add" or "Sub" or "Mul" or "Div":
                {
                    var a = E(input);
                    var b = E(n.Inputs[1]);
                    if (a is null || b is null || (a.Length != b.Length && a.Length != 1 && b.Length != 1))
                        return null;
                    int len = Math.Max(a.Length, b.Length);
                    var result = new Dim[len];
                    for (int i = 0; i < len; i++)
                    {
                        var x = a[a.Length == 1 ? 0 : i];
                        var y = b[b.Length == 1 ? 0 : i];
                        result[i] = Arith(n.OpType, x, y);
                    }
                    return result;
                }
            default:
                return null;
        }
    }

    private Dim Arith(string op, Dim x, Dim y)
    {
        if (x.Value is { } a && y.Value is { } b)
        {
            return op switch
            {
                "Add" => new Dim(a + b),
                "Sub" => new Dim(a - b),
                "Mul" => new Dim(a * b),
                _ => b == 0 ? Fresh() : new Dim(a / b),
            };
        }
        if ((op is "Mul" or "Div" && y.Value == 1) || (op is "Add" or "Sub" && y.Value == 0))
            return x;
        if ((op == "Mul" && x.Value == 1) || (op == "Add" && x.Value == 0))
            return y;
        return Fresh();
    }

    private (int Start, int End) ShapeRange(Node n, int rank)
    {
        long start = n.GetInt("start", 0);
        long end = n.GetInt("end", rank);
        if (start < 0)
            start += rank;
        if (end < 0)
            end += rank;
        start = Math.Clamp(start, 0, rank);
        end = Math.Clamp(end, start, rank);
        return ((int)start, (int)end);
    }

    internal static (long Start, long End) ClampRange(long start, long end, long dim)
    {
        if (start < 0)
            start += dim;
        if (end < 0)
            end += dim;
        return (Math.Clamp(start, 0, dim), Math.Clamp(end, 0, dim));
    }

    /// <summary>A negative axis counted from the end; an axis outside [-rank, rank) is the model's error.</summary>
    internal static int NormAxis(long axis, int rank) => axis >= -rank && axis < Math.Max(rank, 1)
        ? (int)(axis < 0 ? axis + rank : axis)
        : throw new AxisOutOfRangeException(axis, rank);

    private Dim[]? Broadcast(Dim[]? a, Dim[]? b, bool expand = false)
    {
        if (a is null || b is null)
            return null;
        int rank = Math.Max(a.Length, b.Length);
        var result = new Dim[rank];
        for (int i = 0; i < rank; i++)
        {
            var x = i - (rank - a.Length) >= 0 ? a[i - (rank - a.Length)] : new Dim(1);
            var y = i - (rank - b.Length) >= 0 ? b[i - (rank - b.Length)] : new Dim(1);
            result[i] = x == y ? x : x.Value == 1 ? y : y.Value == 1 ? x : x.IsKnown ? x : y.IsKnown ? y : expand ? x : Fresh();
        }
        return result;
    }

    private Dim[]? MatMulShape(Dim[]? a, Dim[]? b)
    {
        if (a is null || b is null || a.Length == 0 || b.Length == 0)
            return null;
        if (a.Length == 1 && b.Length == 1)
            return [];
        if (b.Length == 1)
            return a[..^1];
        if (a.Length == 1)
            return [.. b[..^2], b[^1]];
        var batch = Broadcast(a[..^2], b[..^2]);
        return batch is null ? null : [.. batch, a[^2], b[^1]];
    }

    private Dim[]? ReshapeShape(Node n, Dim[]? x)
    {
        var target = E(n.Inputs[1]);
        if (target is null)
            return null;
        bool allowZero = n.GetInt("allowzero", 0) != 0;
        var result = new Dim[target.Length];
        int minus = -1;
        for (int i = 0; i < target.Length; i++)
        {
            var d = target[i];
            if (d.Value == 0 && !allowZero)
            {
                if (x is null || i >= x.Length)
                    return null;
                result[i] = x[i];
            }
            else if (d.Value == -1)
            {
                minus = i;
            }
            else
            {
                result[i] = d;
            }
        }
        if (minus >= 0)
        {
            result[minus] = Fresh();
            if (x is not null && IsStatic(x) && result.Where((_, i) => i != minus).All(d => d.IsKnown))
            {
                long total = x.Aggregate(1L, (p, d) => p * d.Value!.Value);
                long others = result.Where((_, i) => i != minus).Aggregate(1L, (p, d) => p * d.Value!.Value);
                if (others != 0)
                    result[minus] = new Dim(total / others);
            }
            else if (x is not null)
            {
                // Same symbols on both sides cancel: [B, S, 32] -> [B, S, -1, 8] gives 4.
                var rest = x.ToList();
                var known = new List<Dim>();
                foreach (var d in result.Where((_, i) => i != minus))
                {
                    int k = rest.IndexOf(d);
                    if (k >= 0 && !d.IsKnown)
                        rest.RemoveAt(k);
                    else
                        known.Add(d);
                }
                if (rest.All(d => d.IsKnown) && known.All(d => d.IsKnown))
                {
                    long num = rest.Aggregate(1L, (p, d) => p * d.Value!.Value);
                    long den = known.Aggregate(1L, (p, d) => p * d.Value!.Value);
                    if (den != 0 && num % den == 0)
                        result[minus] = new Dim(num / den);
                }
            }
        }
        return result;
    }

    private Dim[]? SliceShape(Node n, Dim[]? x)
    {
        if (x is null)
            return null;
        long[]? starts, ends, axes, steps;
        if (_opset < 10)
        {
            starts = n.GetInts("starts")?.ToArray();
            ends = n.GetInts("ends")?.ToArray();
            axes = n.GetInts("axes")?.ToArray();
            steps = null;
        }
        else
        {
            starts = ConstInts(n.Inputs[1]);
            ends = ConstInts(n.Inputs[2]);
            axes = n.Inputs.Count > 3 && n.Inputs[3] is { } ax ? ConstInts(ax) : null;
            steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? ConstInts(st) : null;
            if ((n.Inputs.Count > 3 && n.Inputs[3] is not null && axes is null) || (n.Inputs.Count > 4 && n.Inputs[4] is not null && steps is null))
            {
                // Unknown axes or steps: only the rank is known.
                return [.. x.Select(_ => Fresh())];
            }
        }
        axes ??= [.. Enumerable.Range(0, starts?.Length ?? ends?.Length ?? 0).Select(i => (long)i)];
        var result = (Dim[])x.Clone();
        for (int i = 0; i < axes.Length; i++)
        {
            int axis = NormAxis(axes[i], x.Length);
            if (axis < 0 || axis >= x.Length)
                return null;
            long step = steps?[i] ?? 1;
            if (starts is null || ends is null || step != 1)
            {
                result[axis] = Fresh();
                continue;
            }
            if (x[axis].Value is { } dim)
            {
                var (s, e) = ClampRange(starts[i], ends[i], dim);
                result[axis] = new Dim(Math.Max(0, e - s));
            }
            else
            {
                result[axis] = starts[i] == 0 && ends[i] >= int.MaxValue ? x[axis] : Fresh();
            }
        }
        return result;
    }
}

/// <summary>An axis attribute or input outside [-rank, rank); turned into a model error naming the node.</summary>
internal sealed class AxisOutOfRangeException(long axis, int rank)
    : ArgumentOutOfRangeException(nameof(axis), $"axis {axis} is out of range for a rank-{rank} input");
