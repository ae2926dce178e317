namespace Spt.Ir;

/// <summary>
/// Fluent construction of graphs and models for code and tests:
/// <code>
/// var b = new GraphBuilder(opset: 17);
/// var x = b.Input("x", ElementType.Float, "B", 8);
/// var w = b.Initializer("w", new float[32], 8, 4);
/// var y = b.Op("Relu", b.Op("MatMul", x, w));
/// b.Output(y);
/// Model m = b.Build();
/// </code>
/// Dimensions are given as <c>long</c>/<c>int</c> (known sizes) or <c>string</c> (symbolic names).
/// Attributes are <c>(name, value)</c> pairs, converted by <see cref="Attribute.From"/>.
/// </summary>
public sealed class GraphBuilder
{
    private readonly GraphEditor _editor;
    private readonly Model? _model;

    /// <summary>Starts a main graph importing the default domain at <paramref name="opset"/>.</summary>
    public GraphBuilder(long opset = 17, string graphName = "main")
        : this(new Graph(graphName))
    {
        // The model exists from the start so that messages about nodes can name their opset.
        _model = new Model(Graph) { IrVersion = IrVersionFor(opset) };
        Opset("", opset);
    }

    private GraphBuilder(Graph graph)
    {
        Graph = graph;
        _editor = graph.Edit();
    }

    /// <summary>The graph under construction.</summary>
    public Graph Graph { get; }

    /// <summary>The editor of the graph under construction, for edits the builder does not cover.</summary>
    public GraphEditor Editor => _editor;

    /// <summary>Imports <paramref name="domain"/> at <paramref name="version"/> in the built model.</summary>
    public GraphBuilder Opset(string domain, long version)
    {
        (_model ?? throw new InvalidOperationException("opsets are set on the main graph's builder")).SetOpset(domain, version);
        if (domain.Length == 0)
            _model.IrVersion = IrVersionFor(version);
        return this;
    }

    /// <summary>
    /// A builder for a subgraph (e.g. an If branch or Loop body) whose nodes may use values of this
    /// graph. Pass its <see cref="Graph"/> as a graph attribute.
    /// </summary>
    public GraphBuilder Subgraph(string name)
    {
        var sub = new GraphBuilder(new Graph(name) { PendingParent = Graph });
        sub._outer = this;
        return sub;
    }

    private GraphBuilder? _outer;

    /// <summary>Adds a tensor input of the given element type and dimensions.</summary>
    public Value Input(string name, ElementType type, params object[] dims) =>
        _editor.AddInput(name, new TensorType(type, ToDims(dims)));

    /// <summary>Adds an input of any type.</summary>
    public Value Input(string name, OnnxType? type) => _editor.AddInput(name, type);

    /// <summary>Adds a float initializer with the given dimensions (1-D when none are given).</summary>
    public Value Initializer(string name, float[] data, params long[] dims) =>
        _editor.AddInitializer(Tensor.Create(name, data, dims));

    /// <summary>Adds an int64 initializer with the given dimensions (1-D when none are given).</summary>
    public Value Initializer(string name, long[] data, params long[] dims) =>
        _editor.AddInitializer(Tensor.Create(name, data, dims));

    /// <summary>Adds an initializer from a tensor.</summary>
    public Value Initializer(Tensor tensor) => _editor.AddInitializer(tensor);

    /// <summary>Adds a <c>Constant</c> node holding <paramref name="tensor"/>.</summary>
    public Value Constant(Tensor tensor) => Op("Constant", [], ("value", tensor));

    /// <summary>Adds a node with one output and returns that output.</summary>
    public Value Op(string opType, params Value?[] inputs) => Op(opType, inputs, Array.Empty<(string, object)>());

    /// <summary>Adds a node with one output and attributes.</summary>
    public Value Op(string opType, Value?[] inputs, params (string Name, object Value)[] attributes) =>
        Node(opType, inputs, 1, attributes).Outputs[0];

    /// <summary>Adds a node in <paramref name="domain"/> with one output.</summary>
    public Value DomainOp(string domain, string opType, Value?[] inputs, params (string Name, object Value)[] attributes) =>
        Node(opType, inputs, 1, attributes, domain).Outputs[0];

    /// <summary>Adds a node with <paramref name="outputCount"/> outputs and returns them.</summary>
    public IReadOnlyList<Value> Ops(string opType, Value?[] inputs, int outputCount, params (string Name, object Value)[] attributes) =>
        Node(opType, inputs, outputCount, attributes).Outputs;

    /// <summary>Adds a node and returns it.</summary>
    public Node Node(string opType, Value?[] inputs, int outputCount, (string Name, object Value)[] attributes, string domain = "", string? name = null, IReadOnlyList<string>? outputNames = null) =>
        _editor.AddNode(opType, inputs, outputCount, attributes.Select(a => Attribute.From(a.Name, a.Value)), domain, name, outputNames);

    /// <summary>Marks <paramref name="value"/> as a graph output; optionally renames it first.</summary>
    public GraphBuilder Output(Value value, string? name = null)
    {
        if (name != null && name != value.Name)
        {
            if (ReferenceEquals(value.Graph, Graph))
            {
                _editor.Rename(value, name);
            }
            else
            {
                // An outer-scope value cannot be renamed from here; route it through Identity.
                value = _editor.AddNode("Identity", [value], outputNames: [name]).Outputs[0];
            }
        }
        _editor.AddOutput(value);
        return this;
    }

    /// <summary>Marks <paramref name="value"/> as a graph output and sets its tensor type.</summary>
    public GraphBuilder Output(Value value, ElementType type, params object[] dims)
    {
        value.Type = new TensorType(type, ToDims(dims));
        return Output(value);
    }

    /// <summary>Builds the model (IR version chosen to match the default-domain opset).</summary>
    public Model Build(string producerName = "sptc", long? irVersion = null)
    {
        if (_outer != null || _model == null)
            throw new InvalidOperationException($"'{Graph.Name}' is a subgraph; attach it to a node instead of building a model");
        _model.ProducerName = producerName;
        if (irVersion is { } ir)
            _model.IrVersion = ir;
        return _model;
    }

    /// <summary>The IR version that introduced a default-domain opset (the oldest that can hold it).</summary>
    public static long IrVersionFor(long opset) => opset switch
    {
        <= 8 => 3,
        <= 10 => 5,
        <= 11 => 6,
        <= 14 => 7,
        <= 18 => 8,
        <= 20 => 9,
        _ => 10,
    };

    private static Dim[] ToDims(object[] dims) => [.. dims.Select(d => d switch
    {
        int i => new Dim(i),
        long l => new Dim(l),
        string s => new Dim(s),
        Dim dim => dim,
        null => Dim.Unknown,
        _ => throw new ArgumentException($"dimension {d} is neither a size nor a name"),
    })];
}
