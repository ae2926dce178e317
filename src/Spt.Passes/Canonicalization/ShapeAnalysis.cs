using Spt.CustomOps;
using Spt.Ir;
using AttributeKind = Spt.Ir.AttributeKind;
using Spt.Passes.Analysis;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// The shape inference of the IR, for every pass: per value its shape (rank and dims, each a known size or a symbol)
/// and, for small integer "shape-like" tensors, the symbolic content (what <c>Shape(x)</c>, <c>Gather(Shape(x), 1)</c>
/// or a <c>Concat</c> of such hold). Symbols come from the model (<c>batch</c>, <c>sequence</c>) or are made fresh
/// (<c>?3</c>) for sizes nothing names; two dims are the same size when they are equal. Fresh symbols of dims are
/// sizes (never negative); results of integer arithmetic that are not known are marked apart (<c>?v3</c>).
/// <para>
/// A value is analysed when first asked for, with what its producers need (an explicit work list, not recursion, so
/// deep graphs are fine), and remembered: a pass that edits the graph while it asks sees the edits upstream of the
/// values it has not asked for yet. <see cref="Run"/> analyses a whole graph at once. <see cref="StaticShapes"/>
/// (known sizes only) and <see cref="Autodiff.ShapeFacts"/> (ranks, static shapes, element types) are views of it,
/// and <see cref="ConstantValue"/> is the one constant helper it uses.
/// </para>
/// Covers what exporters emit: elementwise and broadcasting ops, MatMul/Gemm, Conv/ConvTranspose and pooling, Reshape
/// with -1 and 0, Expand (with the <c>Where(Equal(shape, -1), 1, shape)</c> arithmetic torch writes for -1), Gather,
/// Slice, Concat, Shape and Range arithmetic on shapes, If with a constant condition (torch's Squeeze export), and the
/// spt ops through their schemas' shape rules.
/// </summary>
public sealed class ShapeAnalysis
{
    private const int MaxElements = 64;
    private readonly Graph _graph;
    private readonly Dictionary<Value, Dim[]?> _shapes = [];
    private readonly Dictionary<Value, Dim[]> _elements = [];
    private readonly HashSet<Node> _visited = [];
    // Fresh dims that are min(end, size) of a Slice from 0 to a symbolic end: where such a dim meets that end in a
    // broadcast, the result is the end (the slice is either the end's size or, clamped, must be 1 for the broadcast
    // to hold, as in torch's causal-mask buffer sliced to the sequence length).
    private readonly Dictionary<string, Dim> _sliceEnds = new(StringComparer.Ordinal);
    private int _fresh;

    /// <summary>An analysis of <paramref name="graph"/>, computed value by value as asked.</summary>
    public ShapeAnalysis(Graph graph) => _graph = graph;

    /// <summary>Analyses the main graph of <paramref name="model"/> now.</summary>
    /// <exception cref="OnnxModelException">An axis is out of range for its input (the node is named).</exception>
    public static ShapeAnalysis Run(Model model)
    {
        var a = new ShapeAnalysis(model.Graph);
        foreach (var v in a._graph.Inputs)
            a.Seed(v);
        foreach (var v in a._graph.Initializers)
            a.Seed(v);
        foreach (var node in a._graph.Nodes.ToList())
            a.VisitChecked(node);
        return a;
    }

    /// <summary>The shape of <paramref name="value"/>, or null when its rank is unknown.</summary>
    public IReadOnlyList<Dim>? ShapeOf(Value value) => S(value);

    /// <summary>The rank of <paramref name="value"/>, or null.</summary>
    public int? RankOf(Value value) => S(value)?.Length;

    /// <summary>
    /// The elements of a small integer tensor of rank 0 or 1, each a known number or a symbol (a dimension of some
    /// tensor), or null when they are not tracked.
    /// </summary>
    public IReadOnlyList<Dim>? ElementsOf(Value value)
    {
        S(value);
        return _elements.GetValueOrDefault(value);
    }

    /// <summary>Records the shape of a value (one a pass made, whose producer the analysis cannot see through).</summary>
    public void SetShape(Value value, IReadOnlyList<Dim>? shape) => _shapes[value] = shape is null ? null : [.. shape];

    /// <summary>Records the rank of a value whose dims are not known.</summary>
    public void SetRank(Value value, int rank) => _shapes[value] = [.. Enumerable.Range(0, rank).Select(_ => Fresh())];

    /// <summary>Whether every dimension is a known size.</summary>
    public static bool IsStatic(IReadOnlyList<Dim> dims) => dims.All(d => d.IsKnown);

    /// <summary>Whether <paramref name="dim"/> is a symbol the analysis made up (not a known size, not a model name).</summary>
    public static bool IsFresh(Dim dim) => dim.Param is { } p && p.StartsWith('?');

    private Dim Fresh() => new("?" + (++_fresh));

    private Dim FreshValue() => new("?v" + (++_fresh));

    private void VisitChecked(Node node)
    {
        try
        {
            Visit(node);
        }
        catch (AxisOutOfRangeException e)
        {
            throw OnnxModelException.ForNode(node, e.Message);
        }
    }

    private void Seed(Value v)
    {
        if (_shapes.ContainsKey(v))
            return;
        if (v.Initializer is { } t)
        {
            _shapes[v] = [.. t.Dims.Select(d => new Dim(d))];
            if (!v.IsGraphInput)
                SeedElements(v, t);
            return;
        }
        _shapes[v] = Declared(v);
    }

    private Dim[]? Declared(Value v) =>
        v.Shape is { } s ? [.. s.Select(d => d.IsKnown || d.Param is { Length: > 0 } ? d with { Denotation = null } : Fresh())] : null;

    private void SeedElements(Value v, Tensor t)
    {
        if (t.Dims.Count <= 1 && t.ElementCount <= MaxElements && (IsInteger(t.ElementType) || t.ElementType == ElementType.Bool))
            _elements[v] = [.. t.ToInt64Array().Select(x => new Dim(x))];
    }

    // The shape of a value, analysed now if it was not yet: its producers first, through a work list.
    private Dim[]? S(Value? v)
    {
        if (v is null || v.IsOmitted)
            return null;
        if (_shapes.TryGetValue(v, out var s))
            return s;
        if (v.Producer is null)
        {
            Seed(v);
            return _shapes.GetValueOrDefault(v);
        }
        if (!_visited.Contains(v.Producer))
            Evaluate(v.Producer);
        return _shapes.GetValueOrDefault(v);
    }

    // Visits `root` after every producer it depends on that was not visited yet (post-order, no recursion).
    private void Evaluate(Node root)
    {
        var stack = new Stack<(Node Node, bool Expanded)>();
        var queued = new HashSet<Node> { root };
        stack.Push((root, false));
        while (stack.Count > 0)
        {
            var (node, expanded) = stack.Pop();
            if (_visited.Contains(node))
                continue;
            if (expanded)
            {
                VisitChecked(node);
                continue;
            }
            stack.Push((node, true));
            foreach (var input in node.Inputs)
            {
                if (input is { IsOmitted: false, Producer: { } p } && !_shapes.ContainsKey(input) && !_visited.Contains(p) && queued.Add(p))
                    stack.Push((p, false));
            }
        }
    }

    private Dim[]? E(Value? v)
    {
        if (v is null)
            return null;
        S(v);
        return _elements.GetValueOrDefault(v);
    }

    private long[]? ConstInts(Value? v)
    {
        if (v is null)
            return null;
        if (ConstantValue.Ints(v) is { } c)
            return c;
        var e = E(v);
        return e is not null && IsStatic(e) ? [.. e.Select(d => d.Value!.Value)] : null;
    }

    private void Visit(Node node)
    {
        if (!_visited.Add(node) || node.Outputs.Count == 0)
            return;
        var outV = node.Outputs[0];
        Dim[]? inferred;
        if (node.IsDefaultDomain)
        {
            inferred = Infer(node);
            if (node.OpType == "Split")
                InferSplit(node);
            if (node.OpType is "Dropout" && node.Outputs.Count > 1 && S(node.Inputs[0]) is { } x)
                Set(node.Outputs[1], x);
            if (node.OpType is "TopK" && node.Outputs.Count > 1)
                Set(node.Outputs[1], inferred);
            if (node.OpType is "If" && node.Outputs.Count > 1)
                InferIf(node, all: true);
            if (node.OpType is "LayerNormalization" or "BatchNormalization" or "SimplifiedLayerNormalization" && node.Outputs.Count > 1)
            {
                for (int i = 1; i < node.Outputs.Count; i++)
                    SetIfAbsent(node.Outputs[i], Declared(node.Outputs[i]));
            }
        }
        else
        {
            inferred = InferCustom(node);
        }
        // Multi-output rules (Split) set output 0 themselves.
        if (inferred is not null || !_shapes.ContainsKey(outV))
            Set(outV, Merge(inferred, Declared(outV)));
        for (int i = 1; i < node.Outputs.Count; i++)
            SetIfAbsent(node.Outputs[i], Declared(node.Outputs[i]));
        if (node.IsDefaultDomain && InferElements(node) is { } elements)
            _elements[outV] = elements;
    }

    private void Set(Value v, Dim[]? shape)
    {
        if (!v.IsOmitted)
            _shapes[v] = shape;
    }

    private void SetIfAbsent(Value v, Dim[]? shape)
    {
        if (!v.IsOmitted && !_shapes.ContainsKey(v))
            _shapes[v] = shape;
    }

    // The inferred shape, with dims it could not tell taken from a declared value_info of the same rank.
    private static Dim[]? Merge(Dim[]? inferred, Dim[]? declared)
    {
        if (inferred is null)
            return declared;
        if (declared is null || declared.Length != inferred.Length)
            return inferred;
        var merged = (Dim[])inferred.Clone();
        for (int i = 0; i < merged.Length; i++)
        {
            if (IsFresh(merged[i]) && !IsFresh(declared[i]))
                merged[i] = declared[i];
        }
        return merged;
    }

    private Dim[] Unknown(int rank) => [.. Enumerable.Range(0, rank).Select(_ => Fresh())];

    private Dim[]? Infer(Node n)
    {
        var x = S(n.Inputs.Count > 0 ? n.Inputs[0] : null);
        switch (n.OpType)
        {
            case "Constant":
                return n.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? [.. a.AsTensor().Dims.Select(d => new Dim(d))]
                    : n.GetAttribute("value_ints") is { } ints ? [new Dim(ints.AsInts().Count)]
                    : n.GetAttribute("value_int") is not null || n.GetAttribute("value_float") is not null ? [] : null;
            case "Identity" or "Relu" or "Gelu" or "Erf" or "Sqrt" or "Neg" or "Exp" or "Log" or "Tanh" or "Sigmoid" or "Cast"
                or "Softmax" or "LogSoftmax" or "LayerNormalization" or "Dropout" or "Not" or "Abs" or "Reciprocal" or "Softplus"
                or "Clip" or "LeakyRelu" or "Elu" or "HardSigmoid" or "Sin" or "Cos" or "IsNaN" or "IsInf" or "CastLike" or "Trilu"
                or "Ceil" or "Floor" or "Round" or "Sign" or "BatchNormalization" or "SimplifiedLayerNormalization" or "CumSum"
                or "Selu" or "Celu" or "Mish" or "HardSwish" or "Softsign" or "Tan" or "Asin" or "Acos" or "Atan" or "Sinh"
                or "Cosh" or "InstanceNormalization" or "GroupNormalization" or "LpNormalization" or "ScatterND"
                or "ScatterElements" or "Scatter" or "EyeLike" or "RandomNormalLike" or "RandomUniformLike" or "Bernoulli"
                or "Shrink" or "ThresholdedRelu" or "Hardmax" or "RMSNormalization":
                return x;
            case "Add" or "Sub" or "Mul" or "Div" or "Pow" or "Equal" or "Less" or "Greater" or "LessOrEqual" or "GreaterOrEqual"
                or "And" or "Or" or "Xor" or "Max" or "Min" or "Mod" or "Where" or "Sum" or "Mean" or "PRelu" or "BitShift":
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
                        return Unknown(2);
                    return [n.GetInt("transA", 0) != 0 ? x[1] : x[0], n.GetInt("transB", 0) != 0 ? b[0] : b[1]];
                }
            case "Transpose":
                {
                    if (x is null)
                        return null;
                    var perm = n.GetInts("perm") ?? [.. Enumerable.Range(0, x.Length).Reverse().Select(i => (long)i)];
                    return perm.Count == x.Length ? [.. perm.Select(p => x[NormAxis(p, x.Length)])] : null;
                }
            case "Reshape":
                return ReshapeShape(n, x);
            case "Flatten":
                {
                    if (x is null)
                        return Unknown(2);
                    int axis = NormAxis(n.GetInt("axis", 1), x.Length + 1);
                    return [Product(x[..axis]), Product(x[axis..])];
                }
            case "Shape":
                return x is null ? [Fresh()] : [new Dim(ShapeRange(n, x.Length) is var (s0, e0) ? e0 - s0 : 0)];
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
            case "GatherElements":
                return S(n.Inputs[1]);
            case "GatherND":
                {
                    var idx = S(n.Inputs[1]);
                    if (x is null || idx is not { Length: > 0 } || idx[^1].Value is not { } k)
                        return null;
                    long batch = n.GetInt("batch_dims", 0);
                    return [.. idx[..^1], .. x.Skip((int)(batch + k))];
                }
            case "Unsqueeze":
                {
                    var axes = n.GetInts("axes")?.ToArray() ?? ConstInts(n.Inputs.Count > 1 ? n.Inputs[1] : null);
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
                    var axes = n.GetInts("axes")?.ToArray() ?? (n.Inputs.Count > 1 && n.Inputs[1] is { } ax ? ConstInts(ax) : []);
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
                    if (parts.Count == 0)
                        return null;
                    if (parts.Any(p => p is null))
                        return parts.FirstOrDefault(p => p is not null) is { } known ? Unknown(known.Length) : null;
                    int rank = parts[0]!.Length;
                    if (parts.Any(p => p!.Length != rank))
                        throw OnnxModelException.ForNode(n, $"inputs of ranks {string.Join(", ", parts.Select(p => p!.Length))} cannot be concatenated");
                    int axis = NormAxis(n.GetInt("axis", 0), rank);
                    var result = (Dim[])parts[0]!.Clone();
                    for (int i = 0; i < rank; i++)
                    {
                        if (i != axis && result[i].Value is null && parts.Skip(1).FirstOrDefault(p => p![i].IsKnown) is { } known)
                            result[i] = known[i];
                    }
                    var along = parts.Select(p => p![axis]).ToList();
                    result[axis] = along.All(d => d.IsKnown) ? new Dim(along.Sum(d => d.Value!.Value)) : Fresh();
                    return result;
                }
            case "Slice":
                return SliceShape(n, x);
            case "ReduceMean" or "ReduceSum" or "ReduceMax" or "ReduceMin" or "ReduceProd" or "ReduceL1" or "ReduceL2"
                or "ReduceSumSquare" or "ReduceLogSum" or "ReduceLogSumExp":
                {
                    if (x is null)
                        return null;
                    long[]? axes = n.GetInts("axes")?.ToArray() ?? (n.Inputs.Count > 1 && n.Inputs[1] is { } ax ? ConstInts(ax) : []);
                    bool keep = n.GetInt("keepdims", 1) != 0;
                    if (axes is null)
                        return keep ? Unknown(x.Length) : null;
                    if (axes.Length == 0 && n.GetInt("noop_with_empty_axes", 0) != 0)
                        return x;
                    var set = (axes.Length == 0 ? Enumerable.Range(0, x.Length) : axes.Select(a => NormAxis(a, x.Length))).ToHashSet();
                    return keep ? [.. x.Select((d, i) => set.Contains(i) ? new Dim(1) : d)] : [.. x.Where((_, i) => !set.Contains(i))];
                }
            case "ArgMax" or "ArgMin":
                {
                    if (x is null)
                        return null;
                    int axis = NormAxis(n.GetInt("axis", 0), x.Length);
                    return n.GetInt("keepdims", 1) != 0 ? [.. x.Select((d, i) => i == axis ? new Dim(1) : d)] : [.. x.Where((_, i) => i != axis)];
                }
            case "TopK":
                {
                    if (x is null)
                        return null;
                    int axis = NormAxis(n.GetInt("axis", -1), x.Length);
                    var k = n.Inputs.Count > 1 ? E(n.Inputs[1]) : null;
                    var r = (Dim[])x.Clone();
                    r[axis] = k is { Length: 1 } ? k[0] : Fresh();
                    return r;
                }
            case "Expand":
                {
                    var target = E(n.Inputs[1]);
                    if (x is not null && target is not null)
                        return Broadcast(x, [.. target.Select(d => d.Value == 1 ? new Dim(1) : d)], expand: true);
                    var len = S(n.Inputs[1]) is [{ Value: { } l }] ? (int?)l : null;
                    return len is { } rank ? Unknown(Math.Max(rank, x?.Length ?? 0)) : null;
                }
            case "Tile":
                {
                    if (x is null)
                        return null;
                    var repeats = E(n.Inputs[1]);
                    if (repeats is null || repeats.Length != x.Length)
                        return Unknown(x.Length);
                    return [.. x.Select((d, i) => Arith("Mul", d, repeats[i]))];
                }
            case "ConstantOfShape":
                {
                    if (E(n.Inputs[0]) is { } e)
                        return [.. e];
                    return S(n.Inputs[0]) is [{ Value: { } l }] ? Unknown((int)l) : null;
                }
            case "Range":
                return [RangeLength(n)];
            case "NonZero":
                return x is null ? [Fresh(), Fresh()] : [new Dim(x.Length), Fresh()];
            case "OneHot":
                {
                    var idx = x;
                    if (idx is null)
                        return null;
                    var depth = E(n.Inputs[1]) is { Length: 1 } dd ? dd[0] : Fresh();
                    int rank = idx.Length + 1;
                    int axis = NormAxis(n.GetInt("axis", -1), rank);
                    var r = idx.ToList();
                    r.Insert(axis, depth);
                    return [.. r];
                }
            case "Conv" or "ConvInteger":
                return ConvShape(n, x, S(n.Inputs[1]), transpose: false);
            case "ConvTranspose":
                return ConvShape(n, x, S(n.Inputs[1]), transpose: true);
            case "MaxPool" or "AveragePool" or "LpPool":
                return PoolShape(n, x);
            case "GlobalAveragePool" or "GlobalMaxPool" or "GlobalLpPool":
                return x is { Length: > 2 } ? [x[0], x[1], .. Enumerable.Repeat(new Dim(1), x.Length - 2)] : null;
            case "Pad":
                {
                    if (x is null)
                        return null;
                    var pads = n.GetInts("pads")?.ToArray() ?? ConstInts(n.Inputs.Count > 1 ? n.Inputs[1] : null);
                    var axes = n.Inputs.Count > 3 && n.Inputs[3] is { } ax ? ConstInts(ax) : [.. Enumerable.Range(0, x.Length).Select(i => (long)i)];
                    if (pads is null || axes is null || pads.Length != 2 * axes.Length)
                        return Unknown(x.Length);
                    var r = (Dim[])x.Clone();
                    for (int i = 0; i < axes.Length; i++)
                    {
                        int axis = NormAxis(axes[i], x.Length);
                        r[axis] = Arith("Add", x[axis], new Dim(pads[i] + pads[axes.Length + i]));
                    }
                    return r;
                }
            case "If":
                return InferIf(n, all: false);
            default:
                return null;
        }
    }

    // If: with a constant condition, the chosen branch's outputs; else a shape both branches agree on (or their rank).
    private Dim[]? InferIf(Node n, bool all)
    {
        var cond = E(n.Inputs[0]) is [{ Value: { } c }] ? (bool?)(c != 0) : ConstantValue.Of(n.Inputs[0]) is { ElementCount: 1 } t ? t.ToInt64Array()[0] != 0 : null;
        Graph? Branch(string name) => n.GetAttribute(name) is { Kind: AttributeKind.Graph } a ? a.AsGraph() : null;
        var thenG = Branch("then_branch");
        var elseG = Branch("else_branch");
        if (thenG is null || elseG is null)
            return null;
        Dim[]? Output(Graph g, int i)
        {
            foreach (var inner in g.Nodes)
                VisitChecked(inner);
            return i < g.Outputs.Count ? S(g.Outputs[i]) : null;
        }
        Dim[]? For(int i)
        {
            if (cond is { } chosen)
                return Output(chosen ? thenG : elseG, i);
            var a = Output(thenG, i);
            var b = Output(elseG, i);
            if (a is null || b is null || a.Length != b.Length)
                return null;
            return [.. a.Select((d, k) => d == b[k] ? d : Fresh())];
        }
        if (all)
        {
            for (int i = 1; i < n.Outputs.Count; i++)
                Set(n.Outputs[i], Merge(For(i), Declared(n.Outputs[i])));
        }
        return For(0);
    }

    // Our ops through their schemas' shape rules, the compiler's attention core, and contrib activations.
    private Dim[]? InferCustom(Node node)
    {
        if (node.Domain == "com.microsoft" && node.OpType is "FastGelu" or "Gelu" or "BiasGelu" or "QuickGelu" or "SkipLayerNormalization")
            return S(node.Inputs[0]);
        if (Recognition.AttentionCoreOp.Is(node))
        {
            // [.., Sq, E] with V's last dim
            var q = S(node.Inputs[Recognition.AttentionCoreOp.Q]);
            var v = S(node.Inputs[Recognition.AttentionCoreOp.V]);
            return q is null ? null : [.. q[..^1], v is { Length: > 0 } ? v[^1] : Fresh()];
        }
        if (node.Domain != CustomOpLibrary.Domain || SptSchemas.Find(node.OpType) is not { } schema)
            return null;
        var inputs = new TensorType?[node.Inputs.Count];
        for (int i = 0; i < inputs.Length; i++)
        {
            if (node.Inputs[i] is { IsOmitted: false } v)
            {
                var type = ElementTypeOf(v) ?? (i < schema.Inputs.Count ? schema.Inputs[i].ElementTypes[0] : ElementType.Float);
                inputs[i] = new TensorType(type, S(v));
            }
        }
        IReadOnlyList<TensorType?> outputs;
        try
        {
            var attributes = node.Attributes.Where(a => schema.FindAttribute(a.Name) is not null)
                .ToDictionary(a => a.Name, a => a.Kind switch
                {
                    AttributeKind.Int => (object)a.AsInt(),
                    AttributeKind.Float => a.AsFloat(),
                    _ => a.AsString(),
                });
            outputs = schema.InferTypes(inputs, attributes);
        }
        catch (OpContractException)
        {
            return null;
        }
        for (int i = 1; i < node.Outputs.Count && i < outputs.Count; i++)
            Set(node.Outputs[i], outputs[i]?.Shape is { } s ? Fill(s) : null);
        return outputs.Count > 0 && outputs[0]?.Shape is { } shape ? Fill(shape) : null;
    }

    private Dim[] Fill(IReadOnlyList<Dim> dims) => [.. dims.Select(d => d.IsKnown || d.Param is { Length: > 0 } ? d : Fresh())];

    private void InferSplit(Node n)
    {
        var x = S(n.Inputs[0]);
        if (x is null)
            return;
        int axis = NormAxis(n.GetInt("axis", 0), x.Length);
        long[]? sizes = n.GetInts("split")?.ToArray() ?? (n.Inputs.Count > 1 && n.Inputs[1] is { } s ? ConstInts(s) : null);
        for (int i = 0; i < n.Outputs.Count; i++)
        {
            var shape = (Dim[])x.Clone();
            if (sizes is not null && sizes.Length == n.Outputs.Count)
                shape[axis] = new Dim(sizes[i]);
            else if (x[axis].Value is { } total && total % n.Outputs.Count == 0)
                shape[axis] = new Dim(total / n.Outputs.Count);
            else
                shape[axis] = Fresh();
            Set(n.Outputs[i], Merge(shape, Declared(n.Outputs[i])));
        }
    }

    private Dim[]? InferElements(Node n)
    {
        var input = n.Inputs.Count > 0 ? n.Inputs[0] : null;
        switch (n.OpType)
        {
            case "Constant":
                {
                    if (ConstantValue.Of(n.Outputs[0]) is { } t && t.Dims.Count <= 1 && t.ElementCount <= MaxElements
                        && (IsInteger(t.ElementType) || t.ElementType == ElementType.Bool))
                        return [.. t.ToInt64Array().Select(x => new Dim(x))];
                    if (n.GetAttribute("value_ints") is { } ints)
                        return [.. ints.AsInts().Select(x => new Dim(x))];
                    if (n.GetAttribute("value_int") is { } single)
                        return [new Dim(single.AsInt())];
                    return null;
                }
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
                return IsInteger((ElementType)n.GetInt("to", 0)) || (ElementType)n.GetInt("to", 0) == ElementType.Bool ? E(input) : null;
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
            case "Unsqueeze" or "Squeeze" or "Reshape" or "Flatten":
                return E(input) is { Length: 1 } one ? one : null;
            case "Concat":
                {
                    var parts = n.Inputs.Select(E).ToList();
                    return parts.All(p => p is not null) && parts.Sum(p => p!.Length) <= MaxElements ? [.. parts.SelectMany(p => p!)] : null;
                }
            case "Slice":
                {
                    var e = E(input);
                    if (e is null || n.Inputs.Count < 3)
                        return null;
                    var starts = ConstInts(n.Inputs[1]);
                    var ends = ConstInts(n.Inputs[2]);
                    var axes = n.Inputs.Count > 3 && n.Inputs[3] is { } ax ? ConstInts(ax) : [0];
                    var steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? ConstInts(st) : [1];
                    if (starts is not { Length: 1 } || ends is not { Length: 1 } || axes is not { Length: 1 } || axes[0] is not (0 or -1) || steps is not [1])
                        return null;
                    var (s0, e0) = ClampRange(starts[0], ends[0], e.Length);
                    return e0 > s0 ? e[(int)s0..(int)e0] : [];
                }
            case "ConstantOfShape":
                {
                    var len = E(input) is [{ Value: { } l }] ? l : S(input) is [{ Value: 0 }] ? 0 : -1;
                    var value = n.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? a.AsTensor() : null;
                    if (len < 0 || len > MaxElements || (value is not null && !IsInteger(value.ElementType) && value.ElementType != ElementType.Bool))
                        return null;
                    long fill = value is null ? 0 : value.ToInt64Array()[0];
                    return [.. Enumerable.Repeat(new Dim(fill), (int)len)];
                }
            case "Range":
                {
                    var (start, limit, delta) = (ConstInts(n.Inputs[0]), ConstInts(n.Inputs[1]), ConstInts(n.Inputs[2]));
                    if (start is not [var s] || limit is not [var l] || delta is not [var d and not 0])
                        return null;
                    long count = Math.Max(0, (l - s + d - Math.Sign(d)) / d);
                    return count <= MaxElements ? [.. Enumerable.Range(0, (int)count).Select(i => new Dim(s + i * d))] : null;
                }
            case "Add" or "Sub" or "Mul" or "Div" or "Equal" or "Max" or "Min" or "Mod" or "Less" or "Greater":
                return Elementwise(n.OpType, E(input), E(n.Inputs[1]));
            case "Neg":
                return E(input) is { } ne ? [.. ne.Select(d => d.Value is { } v ? new Dim(-v) : FreshValue())] : null;
            case "Where":
                {
                    var c = E(input);
                    var a = E(n.Inputs[1]);
                    var b = E(n.Inputs[2]);
                    if (c is null || a is null || b is null)
                        return null;
                    int len = Math.Max(c.Length, Math.Max(a.Length, b.Length));
                    if ((c.Length != len && c.Length != 1) || (a.Length != len && a.Length != 1) || (b.Length != len && b.Length != 1))
                        return null;
                    var r = new Dim[len];
                    for (int i = 0; i < len; i++)
                    {
                        var ci = c[c.Length == 1 ? 0 : i];
                        var ai = a[a.Length == 1 ? 0 : i];
                        var bi = b[b.Length == 1 ? 0 : i];
                        r[i] = ci.Value is { } cv ? (cv != 0 ? ai : bi) : ai == bi ? ai : FreshValue();
                    }
                    return r;
                }
            case "Not":
                return E(input) is { } ne2 ? [.. ne2.Select(d => d.Value is { } v ? new Dim(v == 0 ? 1 : 0) : FreshValue())] : null;
            default:
                return null;
        }
    }

    private Dim[]? Elementwise(string op, Dim[]? a, Dim[]? b)
    {
        if (a is null || b is null || (a.Length != b.Length && a.Length != 1 && b.Length != 1))
            return null;
        int len = Math.Max(a.Length, b.Length);
        var result = new Dim[len];
        for (int i = 0; i < len; i++)
            result[i] = Arith(op, a[a.Length == 1 ? 0 : i], b[b.Length == 1 ? 0 : i]);
        return result;
    }

    // One step of integer shape arithmetic; comparisons give 1 or 0. Dims of tensors are never negative.
    private Dim Arith(string op, Dim x, Dim y)
    {
        if (x.Value is { } a && y.Value is { } b)
        {
            return op switch
            {
                "Add" => new Dim(a + b),
                "Sub" => new Dim(a - b),
                "Mul" => new Dim(a * b),
                "Max" => new Dim(Math.Max(a, b)),
                "Min" => new Dim(Math.Min(a, b)),
                "Equal" => new Dim(a == b ? 1 : 0),
                "Less" => new Dim(a < b ? 1 : 0),
                "Greater" => new Dim(a > b ? 1 : 0),
                "Mod" => b == 0 ? FreshValue() : new Dim(((a % b) + b) % b),
                _ => b == 0 ? FreshValue() : new Dim((long)Math.Floor((double)a / b)),
            };
        }
        switch (op)
        {
            case "Equal" when x == y:
                return new Dim(1);
            case "Equal" when (IsSize(x) && y.Value < 0) || (IsSize(y) && x.Value < 0):
                return new Dim(0);
            case "Less" when IsSize(x) && y.Value <= 0:
            case "Greater" when IsSize(y) && x.Value <= 0:
                return new Dim(0);
            case "Max" when x == y:
            case "Min" when x == y:
                return x;
        }
        if ((op is "Mul" or "Div" && y.Value == 1) || (op is "Add" or "Sub" && y.Value == 0))
            return x;
        if ((op == "Mul" && x.Value == 1) || (op == "Add" && x.Value == 0))
            return y;
        return FreshValue();
    }

    // A symbol that stands for a tensor dim (a model name, or a fresh dim), not an unknown arithmetic result.
    private static bool IsSize(Dim d) => d.Param is { Length: > 0 } p && !p.StartsWith("?v", StringComparison.Ordinal);

    private Dim RangeLength(Node n)
    {
        var start = E(n.Inputs[0]);
        var limit = E(n.Inputs[1]);
        var delta = E(n.Inputs[2]);
        if (start is [var s] && limit is [var l] && delta is [{ Value: { } d }] && d != 0)
        {
            if (s.Value is { } sv && l.Value is { } lv)
                return new Dim(Math.Max(0, (lv - sv + d - Math.Sign(d)) / d));
            // arange(S): 0 up to a dim, step 1.
            if (s.Value == 0 && d == 1 && IsSize(l))
                return l;
        }
        return Fresh();
    }

    private Dim[]? ConvShape(Node n, Dim[]? x, Dim[]? w, bool transpose)
    {
        int? rank = x?.Length ?? w?.Length;
        if (rank is not { } r || r < 3)
            return null;
        int spatial = r - 2;
        long group = n.GetInt("group", 1);
        var batch = x is not null ? x[0] : Fresh();
        var channels = w is null ? Fresh() : transpose ? Arith("Mul", w[1], new Dim(group)) : w[0];
        var kernel = n.GetInts("kernel_shape")?.ToArray() ?? (w is not null && w.Skip(2).All(d => d.IsKnown) ? [.. w.Skip(2).Select(d => d.Value!.Value)] : null);
        var result = new Dim[r];
        result[0] = batch;
        result[1] = channels;
        var strides = n.GetInts("strides")?.ToArray() ?? [.. Enumerable.Repeat(1L, spatial)];
        var dilations = n.GetInts("dilations")?.ToArray() ?? [.. Enumerable.Repeat(1L, spatial)];
        var pads = n.GetInts("pads")?.ToArray() ?? new long[2 * spatial];
        var autoPad = n.GetString("auto_pad", "NOTSET");
        var outputShape = transpose ? n.GetInts("output_shape")?.ToArray() : null;
        var outputPadding = n.GetInts("output_padding")?.ToArray() ?? new long[spatial];
        for (int i = 0; i < spatial; i++)
        {
            var input = x is not null ? x[2 + i] : Fresh();
            if (outputShape is { } os && os.Length == spatial)
            {
                result[2 + i] = new Dim(os[i]);
                continue;
            }
            if (kernel is null || kernel.Length != spatial)
            {
                result[2 + i] = Fresh();
                continue;
            }
            long effective = dilations[i] * (kernel[i] - 1) + 1;
            long padTotal = autoPad is "VALID" ? 0 : pads[i] + pads[spatial + i];
            if (transpose)
            {
                // out = stride (in - 1) + output_padding + effective kernel - pads; SAME: in * stride.
                result[2 + i] = autoPad is "SAME_UPPER" or "SAME_LOWER" ? Arith("Mul", input, new Dim(strides[i]))
                    : input.Value is { } iv ? new Dim(strides[i] * (iv - 1) + outputPadding[i] + effective - padTotal)
                    : strides[i] == 1 && outputPadding[i] + effective - 1 - padTotal == 0 ? input : Fresh();
                continue;
            }
            if (autoPad is "SAME_UPPER" or "SAME_LOWER")
            {
                result[2 + i] = input.Value is { } sv ? new Dim((sv + strides[i] - 1) / strides[i]) : strides[i] == 1 ? input : Fresh();
                continue;
            }
            result[2 + i] = input.Value is { } v ? new Dim((v + padTotal - effective) / strides[i] + 1)
                : strides[i] == 1 && padTotal == effective - 1 ? input : Fresh();
        }
        return result;
    }

    private Dim[]? PoolShape(Node n, Dim[]? x)
    {
        if (x is not { Length: > 2 } || n.GetInts("kernel_shape")?.ToArray() is not { } kernel)
            return x is null ? null : Unknown(x.Length);
        int spatial = x.Length - 2;
        var strides = n.GetInts("strides")?.ToArray() ?? [.. Enumerable.Repeat(1L, spatial)];
        var dilations = n.GetInts("dilations")?.ToArray() ?? [.. Enumerable.Repeat(1L, spatial)];
        var pads = n.GetInts("pads")?.ToArray() ?? new long[2 * spatial];
        bool ceil = n.GetInt("ceil_mode", 0) != 0;
        var autoPad = n.GetString("auto_pad", "NOTSET");
        var result = (Dim[])x.Clone();
        for (int i = 0; i < spatial; i++)
        {
            if (x[2 + i].Value is not { } v)
            {
                result[2 + i] = Fresh();
                continue;
            }
            if (autoPad is "SAME_UPPER" or "SAME_LOWER")
            {
                result[2 + i] = new Dim((v + strides[i] - 1) / strides[i]);
                continue;
            }
            long effective = dilations[i] * (kernel[i] - 1) + 1;
            double size = (double)(v + (autoPad == "VALID" ? 0 : pads[i] + pads[spatial + i]) - effective) / strides[i] + 1;
            result[2 + i] = new Dim((long)(ceil ? Math.Ceiling(size) : Math.Floor(size)));
        }
        return result;
    }

    // The product of dims: a size when all are known, the one unknown dim when the others are all 1, else fresh.
    private Dim Product(IReadOnlyList<Dim> dims)
    {
        var unknown = dims.Where(d => !d.IsKnown).ToList();
        long known = dims.Where(d => d.IsKnown).Aggregate(1L, (p, d) => p * d.Value!.Value);
        return unknown.Count == 0 ? new Dim(known) : unknown.Count == 1 && known == 1 ? unknown[0] : Fresh();
    }

    /// <summary>
    /// The element type of <paramref name="value"/> when it can be told: from a constant, a declared type, or the
    /// producing op (Shape gives int64, Cast its target, comparisons bool, the spt ops their schema's, shape-preserving
    /// ops their data input).
    /// </summary>
    public static ElementType? ElementTypeOf(Value value)
    {
        var v = value;
        for (int depth = 0; depth < 256; depth++)
        {
            if (ConstantValue.Of(v) is { } t)
                return t.ElementType;
            if (v.ElementType is { } declared && declared != ElementType.Undefined)
                return declared;
            if (v.Producer is not { } p)
                return null;
            int index = v.ProducerOutputIndex;
            Value? Input(int i) => i < p.Inputs.Count ? p.Inputs[i] : null;
            if (!p.IsDefaultDomain)
            {
                if (p.Domain == CustomOpLibrary.Domain && SptSchemas.Find(p.OpType) is { } schema)
                    return index < schema.Outputs.Count ? schema.Outputs[index].ElementTypes[0] : null;
                if (Input(0) is not { } first || index != 0)
                    return null;
                v = first;
                continue;
            }
            switch (p.OpType)
            {
                case "Shape" or "Size" or "ArgMax" or "ArgMin" or "NonZero":
                    return ElementType.Int64;
                case "Cast":
                    return (ElementType)p.GetInt("to", 0);
                case "Equal" or "Less" or "Greater" or "LessOrEqual" or "GreaterOrEqual" or "Not" or "And" or "Or" or "Xor"
                    or "IsNaN" or "IsInf":
                    return ElementType.Bool;
                case "ConstantOfShape":
                    return p.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? a.AsTensor().ElementType : ElementType.Float;
                case "Dropout" when index == 1:
                    return ElementType.Bool;
                case "TopK" when index == 1:
                    return ElementType.Int64;
                case "CastLike":
                    if (Input(1) is not { } like)
                        return null;
                    v = like;
                    break;
                case "Where":
                    if (Input(1) is not { } w)
                        return null;
                    v = w;
                    break;
                case "OneHot":
                    if (Input(2) is not { } values)
                        return null;
                    v = values;
                    break;
                case "RandomNormal" or "RandomUniform" or "EyeLike" or "RandomNormalLike" or "RandomUniformLike" or "Bernoulli":
                    if (p.GetAttribute("dtype") is { } dt)
                        return (ElementType)dt.AsInt();
                    if (p.OpType is "RandomNormal" or "RandomUniform" || Input(0) is not { } like2)
                        return ElementType.Float;
                    v = like2;
                    break;
                case "Constant" or "If" or "Loop" or "Scan":
                    return null;
                default:
                    if (Input(0) is not { } next || index != 0)
                        return null;
                    v = next;
                    break;
            }
        }
        return null;
    }

    internal static bool IsInteger(ElementType t) => t is ElementType.Int64 or ElementType.Int32 or ElementType.Int16
        or ElementType.Int8 or ElementType.UInt8 or ElementType.UInt16 or ElementType.UInt32 or ElementType.UInt64;

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
            result[i] = x == y ? x : x.Value == 1 ? y : y.Value == 1 ? x : x.IsKnown ? x : y.IsKnown ? y : expand ? x
                : IsSliceTo(y, x) ? x : IsSliceTo(x, y) ? y : Fresh();
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
            return S(n.Inputs[1]) is [{ Value: { } len }] ? Unknown((int)len) : null;
        bool allowZero = n.GetInt("allowzero", 0) != 0;
        var result = new Dim[target.Length];
        int minus = -1;
        for (int i = 0; i < target.Length; i++)
        {
            var d = target[i];
            if (d.Value == 0 && !allowZero)
            {
                result[i] = x is not null && i < x.Length ? x[i] : Fresh();
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
                // Same symbols on both sides cancel: [B, S, 32] -> [B, S, -1, 8] gives 4; [B, S, 4, 8] -> [B, S, -1] gives 32.
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
                else if (rest.Count(d => !d.IsKnown) == 1 && known.All(d => d.IsKnown)
                    && rest.Where(d => d.IsKnown).Aggregate(1L, (p, d) => p * d.Value!.Value) == known.Aggregate(1L, (p, d) => p * d.Value!.Value))
                {
                    // [B, S*?] style: the one symbol left over is the -1 dim.
                    result[minus] = rest.Single(d => !d.IsKnown);
                }
            }
        }
        return result;
    }

    // Whether d is a Slice's min(end, size) dim for this end.
    private bool IsSliceTo(Dim d, Dim end) =>
        d.Param is { } p && _sliceEnds.TryGetValue(p, out var e) && e == end && !string.IsNullOrEmpty(end.Param);

    private Dim[]? SliceShape(Node n, Dim[]? x)
    {
        if (x is null)
            return null;
        long[]? starts, ends, axes, steps;
        if (n.GetInts("starts") is { } startsAttr)
        {
            starts = [.. startsAttr];
            ends = n.GetInts("ends")?.ToArray();
            axes = n.GetInts("axes")?.ToArray();
            steps = null;
        }
        else
        {
            starts = ConstInts(n.Inputs.Count > 1 ? n.Inputs[1] : null);
            ends = ConstInts(n.Inputs.Count > 2 ? n.Inputs[2] : null);
            axes = n.Inputs.Count > 3 && n.Inputs[3] is { } ax ? ConstInts(ax) : null;
            steps = n.Inputs.Count > 4 && n.Inputs[4] is { } st ? ConstInts(st) : null;
            if ((n.Inputs.Count > 3 && n.Inputs[3] is not null && axes is null) || (n.Inputs.Count > 4 && n.Inputs[4] is not null && steps is null))
            {
                // Unknown axes or steps: only the rank is known.
                return Unknown(x.Length);
            }
        }
        axes ??= [.. Enumerable.Range(0, starts?.Length ?? ends?.Length ?? 0).Select(i => (long)i)];
        var result = (Dim[])x.Clone();
        if (starts is null || ends is null)
        {
            // Ends known only symbolically (a size read from a shape): from 0 with step 1, the dim is min(end, size),
            // which is the end itself when the size is that same symbol.
            var symbolicEnds = ends is null && n.GetInts("starts") is null && n.Inputs.Count > 2 ? E(n.Inputs[2]) : null;
            for (int i = 0; i < axes.Length; i++)
            {
                int axis = NormAxis(axes[i], x.Length);
                var fresh = Fresh();
                if (starts is { } st && symbolicEnds is { } se && i < st.Length && i < se.Length && st[i] == 0 &&
                    (steps is null || steps[i] == 1) && se[i] is { IsKnown: false, Param: { Length: > 0 } } end && !end.Param.StartsWith("?v", StringComparison.Ordinal))
                {
                    if (x[axis] == end)
                    {
                        result[axis] = end;
                        continue;
                    }
                    _sliceEnds[fresh.Param!] = end;
                }
                result[axis] = fresh;
            }
            return axes.Length == 0 ? Unknown(x.Length) : result;
        }
        for (int i = 0; i < axes.Length; i++)
        {
            int axis = NormAxis(axes[i], x.Length);
            long step = steps?[i] ?? 1;
            if (x[axis].Value is { } dim)
            {
                if (step == 1)
                {
                    var (s, e) = ClampRange(starts[i], ends[i], dim);
                    result[axis] = new Dim(Math.Max(0, e - s));
                }
                else if (step > 1)
                {
                    var (s, e) = ClampRange(starts[i], ends[i], dim);
                    result[axis] = new Dim(Math.Max(0, (e - s + step - 1) / step));
                }
                else
                {
                    long s = starts[i] < 0 ? starts[i] + dim : starts[i];
                    long e = ends[i] < 0 ? ends[i] + dim : ends[i];
                    s = Math.Clamp(s, -1, dim - 1);
                    e = Math.Clamp(e, -1, dim - 1);
                    result[axis] = new Dim(Math.Max(0, (s - e + (-step) - 1) / -step));
                }
            }
            else
            {
                result[axis] = step == 1 && starts[i] == 0 && ends[i] >= int.MaxValue ? x[axis] : Fresh();
            }
        }
        return result;
    }
}

/// <summary>The spt op schemas by op type.</summary>
internal static class SptSchemas
{
    private static readonly Dictionary<string, OpSchema> ByName =
        AttentionOps.All.Concat([RoutedFfnOps.RoutedFfn, RoutedFfnOps.RoutedFfnGrad]).ToDictionary(s => s.Name, StringComparer.Ordinal);

    public static OpSchema? Find(string opType) => ByName.GetValueOrDefault(opType);
}

/// <summary>An axis attribute or input outside [-rank, rank); turned into a model error naming the node.</summary>
internal sealed class AxisOutOfRangeException(long axis, int rank)
    : ArgumentOutOfRangeException(nameof(axis), $"axis {axis} is out of range for a rank-{rank} input");
