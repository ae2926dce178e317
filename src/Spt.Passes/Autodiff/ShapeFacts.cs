using Spt.Ir;

namespace Spt.Passes.Autodiff;

/// <summary>
/// What can be known statically about the values of a graph without running it: ranks (exporters rarely write
/// value_info, but gradient rules such as MatMul's need ranks), full shapes of constants and declared values, and
/// the contents of small int64 constants (axes, perms). Unknown stays null; nothing here guesses.
/// </summary>
public sealed class ShapeFacts
{
    private readonly Dictionary<Value, int> _ranks = [];
    private readonly Dictionary<Value, long[]> _shapes = [];
    private readonly Dictionary<Value, long> _lengths = [];
    private readonly Dictionary<Value, ElementType> _types = [];

    /// <summary>Computes the facts for every node of <paramref name="graph"/> (which must be in topological order).</summary>
    public ShapeFacts(Graph graph)
    {
        foreach (var v in graph.Inputs.Concat(graph.Initializers))
            Declare(v);
        foreach (var n in graph.Nodes)
        {
            Infer(n);
            InferTypes(n);
        }
    }

    /// <summary>The element type of <paramref name="v"/>, or null when unknown.</summary>
    public ElementType? ElementTypeOf(Value? v)
    {
        if (v == null)
            return null;
        return v.ElementType ?? (_types.TryGetValue(v, out var t) ? t : null);
    }

    // Element types: declared, or by op (Cast's target, integer shape ops, bool predicates), else the first input's.
    private void InferTypes(Node n)
    {
        ElementType? first = n.Inputs.Where(v => v != null).Select(ElementTypeOf).FirstOrDefault();
        for (int i = 0; i < n.Outputs.Count; i++)
        {
            var o = n.Outputs[i];
            if (o.IsOmitted || o.ElementType != null)
                continue;
            ElementType? t = (n.IsDefaultDomain, n.OpType) switch
            {
                (true, "Cast") => (ElementType)n.GetInt("to", (long)ElementType.Float),
                (true, "CastLike") => ElementTypeOf(n.Inputs[1]),
                (true, "Shape" or "Size" or "NonZero" or "ArgMax" or "ArgMin") => ElementType.Int64,
                (true, "Equal" or "Less" or "Greater" or "LessOrEqual" or "GreaterOrEqual" or "Not" or "And" or "Or" or "Xor"
                    or "IsNaN" or "IsInf") => ElementType.Bool,
                (true, "Dropout") => i == 1 ? ElementType.Bool : first,
                (true, "Constant") => ConstantTensor(o)?.ElementType,
                (true, "ConstantOfShape") => n.GetAttribute("value")?.AsTensor().ElementType ?? ElementType.Float,
                (true, "Where") => n.Inputs.Count > 1 ? ElementTypeOf(n.Inputs[1]) : null,
                (true, "OneHot") => n.Inputs.Count > 2 ? ElementTypeOf(n.Inputs[2]) : null,
                (false, "PQEncode" or "PQTopK") => ElementType.Int32,
                (false, "RoutedFFN") => i == 2 ? ElementType.Int32 : ElementType.Float,
                (false, _) => ElementType.Float,
                _ => first,
            };
            if (t is { } known)
                _types[o] = known;
        }
    }

    /// <summary>The rank of <paramref name="v"/>, or null when unknown.</summary>
    public int? Rank(Value? v)
    {
        if (v == null)
            return null;
        if (_ranks.TryGetValue(v, out int r))
            return r;
        return v.Shape?.Count;
    }

    /// <summary>The full static shape of <paramref name="v"/>, or null when any dimension is unknown.</summary>
    public long[]? StaticShape(Value? v)
    {
        if (v == null)
            return null;
        if (_shapes.TryGetValue(v, out var s))
            return s;
        if (v.Shape is { } dims && dims.All(d => d.Value.HasValue))
            return [.. dims.Select(d => d.Value!.Value)];
        return null;
    }

    /// <summary>Records that <paramref name="v"/> has rank <paramref name="rank"/> (for values created later).</summary>
    public void SetRank(Value v, int? rank)
    {
        if (rank is { } r)
            _ranks[v] = r;
    }

    /// <summary>The int64 contents of a constant (initializer or Constant node), or null.</summary>
    public static long[]? ConstantInts(Value? v)
    {
        if (v == null)
            return null;
        var t = v.Initializer ?? ConstantTensor(v);
        if (t == null || (t.ElementType != ElementType.Int64 && t.ElementType != ElementType.Int32))
            return null;
        return t.ElementType == ElementType.Int64 ? t.ToInt64Array() : [.. t.ToArray<int>().Select(i => (long)i)];
    }

    /// <summary>The float contents of a constant (initializer or Constant node), or null.</summary>
    public static float[]? ConstantFloats(Value? v)
    {
        if (v == null)
            return null;
        var t = v.Initializer ?? ConstantTensor(v);
        return t is { ElementType: ElementType.Float } ? t.ToFloatArray() : null;
    }

    /// <summary>The tensor of a Constant node's <c>value</c> attribute, or null.</summary>
    public static Tensor? ConstantTensor(Value v)
    {
        if (v.Producer is { OpType: "Constant" } c && c.IsDefaultDomain)
        {
            var a = c.GetAttribute("value");
            if (a != null && a.Kind == Ir.AttributeKind.Tensor)
                return a.AsTensor();
        }
        return null;
    }

    private void Declare(Value v)
    {
        if (v.Initializer is { } t)
        {
            _shapes[v] = [.. t.Dims];
            _ranks[v] = t.Dims.Count;
            if (t.Dims.Count == 1)
                _lengths[v] = t.Dims[0];
        }
        else if (v.Shape is { } s)
        {
            _ranks[v] = s.Count;
            if (s.Count == 1 && s[0].Value is { } len)
                _lengths[v] = len;
        }
    }

    // The static length of a 1-D int64 value (a shape vector), or null.
    private long? Length(Value? v)
    {
        if (v == null)
            return null;
        if (_lengths.TryGetValue(v, out long l))
            return l;
        var s = StaticShape(v);
        return s is { Length: 1 } ? s[0] : null;
    }

    private void Set(Value v, int? rank, long[]? shape = null, long? length = null)
    {
        if (v.IsOmitted)
            return;
        if (shape != null)
        {
            _shapes[v] = shape;
            rank = shape.Length;
        }
        if (rank is { } r)
            _ranks[v] = r;
        if (length is { } l)
            _lengths[v] = l;
        else if (shape is { Length: 1 })
            _lengths[v] = shape[0];
    }

    private void Infer(Node n)
    {
        if (n.Outputs.Count == 0)
            return;
        var y = n.Outputs[0];
        int? In(int i) => i < n.Inputs.Count ? Rank(n.Inputs[i]) : null;
        if (!n.IsDefaultDomain)
        {
            InferCustom(n);
            return;
        }
        switch (n.OpType)
        {
            case "Constant":
                if (ConstantTensor(y) is { } t)
                    Set(y, null, [.. t.Dims]);
                break;
            case "Add" or "Sub" or "Mul" or "Div" or "Pow" or "Where" or "Equal" or "Less" or "Greater" or "LessOrEqual"
                or "GreaterOrEqual" or "And" or "Or" or "Xor" or "Max" or "Min" or "Sum" or "Mean" or "PRelu" or "Mod"
                or "BitShift":
                {
                    var ranks = n.Inputs.Where(v => v != null).Select(Rank).ToList();
                    if (ranks.All(r => r.HasValue))
                        Set(y, ranks.Max());
                    break;
                }
            case "Relu" or "Sigmoid" or "Tanh" or "Erf" or "Exp" or "Log" or "Sqrt" or "Neg" or "Abs" or "Reciprocal"
                or "Cast" or "CastLike" or "Softmax" or "LogSoftmax" or "Dropout" or "Identity" or "Not" or "Clip"
                or "Trilu" or "CumSum" or "LayerNormalization" or "Sin" or "Cos" or "Floor" or "Ceil" or "Round"
                or "Gelu" or "Sign" or "IsNaN" or "IsInf" or "Slice" or "Softplus" or "LeakyRelu" or "Elu"
                or "HardSigmoid" or "Tile" or "ScatterND" or "ScatterElements" or "Transpose" or "Concat"
                or "SimplifiedLayerNormalization":
                Set(y, In(0), n.OpType is "Cast" or "Identity" or "Relu" or "Sigmoid" or "Tanh" or "Erf" or "Neg"
                    ? StaticShape(n.Inputs[0]) : null);
                if (n.OpType == "Dropout" && n.Outputs.Count > 1)
                    Set(n.Outputs[1], In(0));
                // A shape tensor built by Concat (a Reshape target) has the summed length of its pieces.
                if (n.OpType == "Concat" && In(0) == 1 && n.Inputs.All(i => i != null && Length(i) is not null))
                    Set(y, 1, length: n.Inputs.Sum(i => Length(i)!.Value));
                break;
            case "Split":
                foreach (var o in n.Outputs)
                    Set(o, In(0));
                break;
            case "GatherElements":
                Set(y, In(1));
                break;
            case "MatMul":
                if (In(0) is { } ra && In(1) is { } rb)
                    Set(y, ra == 1 && rb == 1 ? 0 : ra == 1 ? rb - 1 : rb == 1 ? ra - 1 : Math.Max(ra, rb));
                break;
            case "Gemm" or "Flatten":
                Set(y, 2);
                break;
            case "Reshape":
                Set(y, (int?)Length(n.Inputs[1]));
                break;
            case "Expand":
                if (In(0) is { } re && Length(n.Inputs[1]) is { } le)
                    Set(y, (int)Math.Max(re, le));
                break;
            case "ConstantOfShape":
                Set(y, (int?)Length(n.Inputs[0]));
                break;
            case "Unsqueeze" or "Squeeze":
                {
                    var axes = n.Inputs.Count > 1 ? ConstantInts(n.Inputs[1]) : n.GetInts("axes")?.ToArray();
                    if (In(0) is { } r && axes != null)
                    {
                        int rr = n.OpType == "Unsqueeze" ? r + axes.Length : r - axes.Length;
                        Set(y, rr, length: rr == 1 && r == 0 ? 1 : null);
                    }
                    else if (n.OpType == "Squeeze" && StaticShape(n.Inputs[0]) is { } s && axes == null)
                    {
                        Set(y, s.Count(d => d != 1));
                    }
                    break;
                }
            case "Gather":
                if (In(0) is { } rd && In(1) is { } ri)
                    Set(y, rd - 1 + ri);
                break;
            case "Shape":
                if (In(0) is { } rs)
                {
                    long start = n.GetInt("start", 0), end = n.GetInt("end", rs);
                    start = start < 0 ? start + rs : start;
                    end = end < 0 ? end + rs : Math.Min(end, rs);
                    Set(y, 1, length: Math.Max(0, end - start));
                }
                else
                {
                    Set(y, 1);
                }
                break;
            case "Size":
                Set(y, 0);
                break;
            case "Range":
                Set(y, 1);
                break;
            case "NonZero":
                Set(y, 2);
                break;
            case "ReduceSum" or "ReduceMean" or "ReduceMax" or "ReduceMin" or "ReduceProd" or "ReduceL2" or "ArgMax" or "ArgMin":
                {
                    bool keep = n.GetInt("keepdims", 1) == 1;
                    var axes = n.OpType is "ArgMax" or "ArgMin" ? [n.GetInt("axis", 0)]
                        : n.Inputs.Count > 1 && n.Inputs[1] != null ? ConstantInts(n.Inputs[1]) : n.GetInts("axes")?.ToArray();
                    if (In(0) is { } r)
                    {
                        if (keep)
                            Set(y, r);
                        else if (axes != null)
                            Set(y, r - axes.Distinct().Count());
                        else if (n.Inputs.Count < 2 || n.Inputs[1] == null)
                            Set(y, n.GetInt("noop_with_empty_axes", 0) == 1 ? r : 0);
                    }
                    break;
                }
            case "OneHot":
                if (In(0) is { } ro)
                    Set(y, ro + 1);
                break;
        }
    }

    private void InferCustom(Node n)
    {
        switch (n.OpType)
        {
            case "SparseAttention":
                Set(n.Outputs[0], 4);
                if (n.Outputs.Count > 1)
                    Set(n.Outputs[1], 4);
                break;
            case "RoutedFFN":
                Set(n.Outputs[0], Rank(n.Inputs[0]));
                for (int i = 1; i < n.Outputs.Count; i++)
                    Set(n.Outputs[i], 2);
                break;
            case "PQLoss":
                Set(n.Outputs[0], 0);
                break;
            case "PQEncode":
                Set(n.Outputs[0], Rank(n.Inputs[0]));
                break;
        }
    }
}
