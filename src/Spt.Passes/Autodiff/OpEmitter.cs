using System.Globalization;
using Spt.Ir;

namespace Spt.Passes.Autodiff;

/// <summary>
/// Appends stock ONNX nodes to a graph with deterministic names under a prefix, and knows the opset differences of
/// the ops it emits (ReduceSum axes as input from 13, ReduceMean from 18, Squeeze/Unsqueeze from 13).
/// Constants become initializers.
/// </summary>
public sealed class OpEmitter
{
    private readonly GraphEditor _editor;
    private readonly Dictionary<string, Value> _constants = new(StringComparer.Ordinal);
    private int _counter;

    /// <summary>Creates an emitter that appends to <paramref name="graph"/> for default-domain opset <paramref name="opset"/>.</summary>
    public OpEmitter(Graph graph, long opset, string prefix)
    {
        Graph = graph;
        Opset = opset;
        Prefix = prefix;
        _editor = graph.Edit();
    }

    /// <summary>The graph nodes are appended to.</summary>
    public Graph Graph { get; }

    /// <summary>The default-domain opset the emitted nodes must be valid for.</summary>
    public long Opset { get; }

    /// <summary>Name prefix of the next emitted nodes and values, e.g. <c>grad/MatMul_3</c>.</summary>
    public string Prefix { get; set; }

    /// <summary>Appends a node; <paramref name="wanted"/> false leaves an output omitted.</summary>
    public IReadOnlyList<Value> Node(string opType, IReadOnlyList<Value?> inputs, int outputCount,
        IEnumerable<Ir.Attribute>? attributes = null, string domain = "", IReadOnlyList<bool>? wanted = null)
    {
        string name = $"{Prefix}/{opType}_{(_counter++).ToString(CultureInfo.InvariantCulture)}";
        var names = new string[outputCount];
        for (int i = 0; i < outputCount; i++)
        {
            if (wanted != null && !wanted[i])
                names[i] = "";
            else
                names[i] = Graph.UniqueName(outputCount == 1 ? name : name + ":" + i.ToString(CultureInfo.InvariantCulture));
        }
        var node = _editor.AddNode(opType, inputs, outputCount, attributes, domain, name, names);
        return node.Outputs;
    }

    /// <summary>Appends a one-output node.</summary>
    public Value Op(string opType, params Value?[] inputs) => Node(opType, inputs, 1)[0];

    /// <summary>Appends a one-output node with attributes.</summary>
    public Value Op(string opType, Value?[] inputs, params (string Name, object Value)[] attributes) =>
        Node(opType, inputs, 1, attributes.Select(a => Ir.Attribute.From(a.Name, a.Value)))[0];

    /// <summary>A float32 scalar constant.</summary>
    public Value Scalar(float value) =>
        Constant("f32_" + value.ToString("R", CultureInfo.InvariantCulture), () => Tensor.Scalar("", value));

    /// <summary>A 1-D int64 constant.</summary>
    public Value Ints(params long[] values) =>
        Constant("i64_" + string.Join("_", values.Select(v => v.ToString(CultureInfo.InvariantCulture))), () => Tensor.Create("", values, values.Length));

    /// <summary>An int64 scalar constant.</summary>
    public Value IntScalar(long value) =>
        Constant("i64s_" + value.ToString(CultureInfo.InvariantCulture), () => Tensor.Scalar("", value));

    /// <summary>A constant tensor.</summary>
    public Value Constant(string key, Func<Tensor> make)
    {
        if (_constants.TryGetValue(key, out var v))
            return v;
        var t = make();
        t.Name = Graph.UniqueName($"{RootPrefix}/const/{key}");
        v = _editor.AddInitializer(t);
        _constants[key] = v;
        return v;
    }

    private string RootPrefix => Prefix.Split('/')[0];

    /// <summary>Shape(x).</summary>
    public Value Shape(Value x) => Op("Shape", x);

    /// <summary>ReduceSum over constant axes (null = all), keepdims as given.</summary>
    public Value ReduceSum(Value x, long[]? axes, bool keepDims)
    {
        if (axes is { Length: 0 })
            return x;
        if (axes == null)
            return Op("ReduceSum", [x], ("keepdims", keepDims ? 1L : 0L));
        return Opset >= 13
            ? Op("ReduceSum", [x, Ints(axes)], ("keepdims", keepDims ? 1L : 0L))
            : Op("ReduceSum", [x], ("axes", axes), ("keepdims", keepDims ? 1L : 0L));
    }

    /// <summary>ReduceSum over axes computed at run time (empty = no-op); opset 13 or later.</summary>
    public Value ReduceSumDynamic(Value x, Value axes)
    {
        if (Opset < 13)
            throw new NotSupportedException("dynamic reduction axes need opset 13 or later");
        return Op("ReduceSum", [x, axes], ("keepdims", 1L), ("noop_with_empty_axes", 1L));
    }

    /// <summary>ReduceMean over constant axes (null = all).</summary>
    public Value ReduceMean(Value x, long[]? axes, bool keepDims)
    {
        if (axes == null)
            return Op("ReduceMean", [x], ("keepdims", keepDims ? 1L : 0L));
        return Opset >= 18
            ? Op("ReduceMean", [x, Ints(axes)], ("keepdims", keepDims ? 1L : 0L))
            : Op("ReduceMean", [x], ("axes", axes), ("keepdims", keepDims ? 1L : 0L));
    }

    /// <summary>Unsqueeze at constant axes.</summary>
    public Value Unsqueeze(Value x, params long[] axes) =>
        Opset >= 13 ? Op("Unsqueeze", x, Ints(axes)) : Op("Unsqueeze", [x], ("axes", axes));

    /// <summary>Squeeze at constant axes.</summary>
    public Value Squeeze(Value x, params long[] axes) =>
        Opset >= 13 ? Op("Squeeze", x, Ints(axes)) : Op("Squeeze", [x], ("axes", axes));

    /// <summary>Float32 zeros of a run-time shape.</summary>
    public Value Zeros(Value shape) => Op("ConstantOfShape", [shape], ("value", Tensor.Create("value", [0f], 1)));

    /// <summary>Float32 zeros shaped like <paramref name="x"/>.</summary>
    public Value ZerosLike(Value x) => Zeros(Shape(x));

    /// <summary>Cast to an element type.</summary>
    public Value Cast(Value x, ElementType to) => Op("Cast", [x], ("to", (long)to));

    /// <summary>Sum of several values (one value is returned as is).</summary>
    public Value Sum(IReadOnlyList<Value> values) => values.Count == 1 ? values[0] : Op("Sum", [.. values]);
}
