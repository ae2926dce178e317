using System.Diagnostics;
using System.Globalization;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// A computation graph: ordered nodes, inputs, outputs, initializers and value annotations. A graph
/// is either a model's main graph or a subgraph held by a node attribute (If branches, Loop and Scan
/// bodies); nodes of a subgraph may use values of enclosing graphs. All structural changes go
/// through <see cref="Edit"/>.
/// </summary>
[DebuggerDisplay("graph {Name} ({Nodes.Count} nodes)")]
public sealed class Graph
{
    private readonly Dictionary<string, Value> _values = new(StringComparer.Ordinal);
    internal readonly List<Value> InputList = [];
    internal readonly List<Value> OutputList = [];
    internal readonly List<Value> InitializerList = [];
    internal readonly List<Value> SparseInitializerList = [];
    internal readonly List<Value> ValueInfoList = [];
    // Per-slot value_info messages read for inputs and outputs (doc strings, metadata, own types).
    internal readonly List<ValueInfoProto?> InputTemplates = [];
    internal readonly List<ValueInfoProto?> OutputTemplates = [];
    internal readonly List<ValueInfoProto?> ValueInfoTemplates = [];
    private int _nameCounter;

    /// <summary>Creates an empty graph.</summary>
    public Graph(string name = "")
    {
        Name = name;
    }

    /// <summary>Graph name.</summary>
    public string Name { get; set; }

    /// <summary>Documentation string, or null.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties in order.</summary>
    public IList<KeyValuePair<string, string>> Metadata { get; } = new List<KeyValuePair<string, string>>();

    /// <summary>Quantization annotations, kept as read.</summary>
    public IList<TensorAnnotation> QuantizationAnnotations { get; } = new List<TensorAnnotation>();

    /// <summary>Nodes in order.</summary>
    public NodeList Nodes { get; } = new();

    /// <summary>Graph inputs in order (in older models, initializers may be listed here too).</summary>
    public IReadOnlyList<Value> Inputs => InputList;

    /// <summary>Graph outputs in order (a value may appear more than once).</summary>
    public IReadOnlyList<Value> Outputs => OutputList;

    /// <summary>Values defined by dense initializers, in order.</summary>
    public IReadOnlyList<Value> Initializers => InitializerList;

    /// <summary>Values defined by sparse initializers, in order.</summary>
    public IReadOnlyList<Value> SparseInitializers => SparseInitializerList;

    /// <summary>Values that carry an explicit value_info annotation, in order.</summary>
    public IReadOnlyList<Value> ValueInfos => ValueInfoList;

    /// <summary>Inputs that are not also initializers: what a caller must feed.</summary>
    public IEnumerable<Value> RequiredInputs => InputList.Where(v => !v.IsInitializer);

    /// <summary>The node whose attribute holds this graph, or null for a main or detached graph.</summary>
    public Node? OwningNode { get; internal set; }

    /// <summary>The graph enclosing this subgraph (or, for a subgraph still being built, the graph it is built for), or null.</summary>
    public Graph? Parent => OwningNode?.Graph ?? PendingParent;

    /// <summary>Set by <see cref="GraphBuilder.Subgraph"/> until the graph is attached to a node.</summary>
    internal Graph? PendingParent { get; set; }

    /// <summary>The model this graph (or its outermost enclosing graph) belongs to, or null.</summary>
    public Model? Model
    {
        get
        {
            var g = this;
            while (g.Parent != null)
                g = g.Parent;
            return g.OwnerModel;
        }
    }

    internal Model? OwnerModel { get; set; }

    /// <summary>The message read, without nodes, values and initializers.</summary>
    internal GraphProto? Template { get; set; }

    internal List<StringStringEntryProto> MetadataTemplates { get; set; } = [];

    /// <summary>Values that nodes named but nothing defines (kept so the model round-trips; the verifier reports them).</summary>
    internal Dictionary<string, Value> UndefinedValues { get; } = new(StringComparer.Ordinal);

    /// <summary>The editor through which this graph is changed.</summary>
    public GraphEditor Edit() => new(this);

    /// <summary>The value defined in this graph under <paramref name="name"/>, or null.</summary>
    public Value? FindValue(string name) => _values.GetValueOrDefault(name);

    /// <summary>The value visible under <paramref name="name"/>: from this graph or, failing that, from enclosing graphs.</summary>
    public Value? Lookup(string name)
    {
        for (var g = this; g != null; g = g.Parent)
        {
            if (g._values.TryGetValue(name, out var v))
                return v;
        }
        return null;
    }

    /// <summary>Values defined in this graph (inputs, initializers, node outputs), in no particular order.</summary>
    public IEnumerable<Value> DefinedValues => _values.Values;

    /// <summary>A name not used in this graph or enclosing graphs: <paramref name="prefix"/>, else prefix_1, prefix_2, ...</summary>
    public string UniqueName(string prefix)
    {
        if (prefix.Length > 0 && !IsNameTaken(prefix))
            return prefix;
        string baseName = prefix.Length == 0 ? "v" : prefix;
        while (true)
        {
            string candidate = baseName + "_" + (++_nameCounter).ToString(CultureInfo.InvariantCulture);
            if (!IsNameTaken(candidate))
                return candidate;
        }
    }

    internal bool IsNameTaken(string name) => Lookup(name) != null || UndefinedValues.ContainsKey(name);

    /// <summary>All nodes of this graph and, depth first, of its subgraphs.</summary>
    public IEnumerable<Node> AllNodes()
    {
        foreach (var n in Nodes)
        {
            yield return n;
            foreach (var sub in n.Subgraphs)
            {
                foreach (var inner in sub.AllNodes())
                    yield return inner;
            }
        }
    }

    /// <summary>This graph's subgraphs at any depth.</summary>
    public IEnumerable<Graph> AllSubgraphs()
    {
        foreach (var n in Nodes)
        {
            foreach (var sub in n.Subgraphs)
            {
                yield return sub;
                foreach (var inner in sub.AllSubgraphs())
                    yield return inner;
            }
        }
    }

    /// <summary>Whether <paramref name="other"/> is this graph or encloses it.</summary>
    public bool IsWithin(Graph other)
    {
        for (var g = this; g != null; g = g.Parent)
        {
            if (ReferenceEquals(g, other))
                return true;
        }
        return false;
    }

    // ---------------------------------------------------------------- raw operations (reader, editor)

    /// <summary>Registers a defining value under its name; the first definition wins the name.</summary>
    internal void Register(Value v)
    {
        v.Graph = this;
        if (v.Name.Length > 0)
            _values.TryAdd(v.Name, v);
    }

    internal void Unregister(Value v)
    {
        if (v.Name.Length > 0 && _values.TryGetValue(v.Name, out var cur) && ReferenceEquals(cur, v))
            _values.Remove(v.Name);
    }

    internal void Rename(Value v, string newName)
    {
        Unregister(v);
        v.Name = newName;
        if (v.Initializer != null)
            v.Initializer.Name = newName;
        Register(v);
    }

    /// <summary>Records a new node's uses and makes it the producer of its outputs.</summary>
    internal void Attach(Node node)
    {
        node.Graph = this;
        for (int i = 0; i < node.InputList.Count; i++)
            node.InputList[i]?.UseList.Add(new Use(node, i));
        for (int i = 0; i < node.OutputList.Count; i++)
        {
            var o = node.OutputList[i];
            o.Producer = node;
            o.ProducerOutputIndex = i;
            Register(o);
        }
    }

    internal static void RemoveUse(Value v, Node node, int index)
    {
        int k = v.UseList.FindIndex(u => ReferenceEquals(u.Node, node) && u.InputIndex == index);
        Debug.Assert(k >= 0, "use-def chain out of sync");
        if (k >= 0)
            v.UseList.RemoveAt(k);
    }
}
