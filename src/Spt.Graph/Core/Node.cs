using System.Collections.ObjectModel;
using System.Diagnostics;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// An operator application. <see cref="Inputs"/> and <see cref="Outputs"/> are read-only here and
/// change only through <see cref="GraphEditor"/>, which keeps use-def chains right. A missing
/// optional input is a null entry; an omitted optional output is a value with an empty name.
/// </summary>
[DebuggerDisplay("{DebuggerText,nq}")]
public sealed class Node
{
    internal readonly List<Value?> InputList = [];
    internal readonly List<Value> OutputList = [];

    internal Node(string opType, string domain)
    {
        OpType = opType;
        Domain = domain;
        Attributes = new AttributeList(this);
    }

    /// <summary>Operator type, e.g. <c>MatMul</c>.</summary>
    public string OpType { get; set; }

    /// <summary>Operator domain; empty (or "ai.onnx") for the default domain.</summary>
    public string Domain { get; set; }

    /// <summary>Overload selector for model-local functions; empty when unused.</summary>
    public string Overload { get; set; } = "";

    /// <summary>Node name (may be empty).</summary>
    public string Name { get; set; } = "";

    /// <summary>Documentation string, or null.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties in order (duplicates allowed, as in ONNX).</summary>
    public IList<KeyValuePair<string, string>> Metadata { get; } = new List<KeyValuePair<string, string>>();

    /// <summary>Attributes in order; names are unique.</summary>
    public AttributeList Attributes { get; }

    /// <summary>Inputs; null marks an omitted optional input.</summary>
    public IReadOnlyList<Value?> Inputs => InputList;

    /// <summary>Outputs; an omitted optional output has an empty name.</summary>
    public IReadOnlyList<Value> Outputs => OutputList;

    /// <summary>The graph holding the node, or null while it is detached.</summary>
    public Graph? Graph { get; internal set; }

    /// <summary>Graphs held by graph-valued attributes, in attribute order.</summary>
    public IEnumerable<Graph> Subgraphs => Attributes.SelectMany(a => a.Graphs);

    /// <summary>Whether the domain is the default ONNX domain.</summary>
    public bool IsDefaultDomain => Domain.Length == 0 || Domain == "ai.onnx";

    internal Node? Prev { get; set; }
    internal Node? Next { get; set; }
    internal bool Linked { get; set; }

    /// <summary>The message read, without inputs, outputs and attributes (they live in the IR).</summary>
    internal NodeProto? Template { get; set; }

    internal List<StringStringEntryProto> MetadataTemplates { get; set; } = [];

    /// <summary>The attribute named <paramref name="name"/>, or null.</summary>
    public Attribute? GetAttribute(string name) => Attributes.Find(name);

    /// <summary>Integer attribute value, or <paramref name="defaultValue"/> when absent.</summary>
    /// <exception cref="OnnxModelException">The attribute is there with another kind (or without a value).</exception>
    public long GetInt(string name, long defaultValue) => Typed(name, AttributeKind.Int)?.AsInt() ?? defaultValue;

    /// <summary>Float attribute value, or <paramref name="defaultValue"/> when absent.</summary>
    /// <exception cref="OnnxModelException">The attribute is there with another kind (or without a value).</exception>
    public float GetFloat(string name, float defaultValue) => Typed(name, AttributeKind.Float)?.AsFloat() ?? defaultValue;

    /// <summary>String attribute value, or <paramref name="defaultValue"/> when absent.</summary>
    /// <exception cref="OnnxModelException">The attribute is there with another kind (or without a value).</exception>
    public string? GetString(string name, string? defaultValue = null) => Typed(name, AttributeKind.String)?.AsString() ?? defaultValue;

    /// <summary>Integer list attribute value, or null when absent.</summary>
    /// <exception cref="OnnxModelException">The attribute is there with another kind (or without a value).</exception>
    public IReadOnlyList<long>? GetInts(string name) => Typed(name, AttributeKind.Ints)?.AsInts();

    // A model's attribute of the wrong kind is the model's error: name the node, the attribute, expected and got.
    private Attribute? Typed(string name, AttributeKind kind)
    {
        var a = Attributes.Find(name);
        if (a != null && (a.Kind != kind || a.RawValue == null))
            throw OnnxModelException.ForNode(this, a.RawValue == null && a.Kind == kind
                ? $"attribute '{name}' has no value"
                : AttributeKinds.Mismatch(name, kind, a.Kind));
        return a;
    }

    private string DebuggerText =>
        $"{string.Join(", ", OutputList.Select(v => "%" + v.Name))} = {(Domain.Length > 0 ? Domain + "::" : "")}{OpType}({string.Join(", ", InputList.Select(v => v == null ? "\"\"" : "%" + v.Name))}){(Name.Length > 0 ? "  '" + Name + "'" : "")}";

    /// <inheritdoc />
    public override string ToString() => DebuggerText;
}

/// <summary>
/// A node's attributes in order, with lookup by name. Adding a graph-valued attribute makes its
/// graphs subgraphs of the node (a graph can belong to one node only).
/// </summary>
public sealed class AttributeList : Collection<Attribute>
{
    private readonly Node _owner;

    internal AttributeList(Node owner) => _owner = owner;

    /// <summary>The attribute named <paramref name="name"/>, or null.</summary>
    public Attribute? Find(string name)
    {
        foreach (var a in Items)
        {
            if (a.Name == name)
                return a;
        }
        return null;
    }

    /// <summary>Whether an attribute of that name exists.</summary>
    public bool Contains(string name) => Find(name) != null;

    /// <summary>Replaces the attribute of the same name in place, or appends it.</summary>
    public void Set(Attribute attribute)
    {
        for (int i = 0; i < Count; i++)
        {
            if (Items[i].Name == attribute.Name)
            {
                this[i] = attribute;
                return;
            }
        }
        Add(attribute);
    }

    /// <summary>Removes the attribute of that name; returns whether there was one.</summary>
    public bool Remove(string name)
    {
        for (int i = 0; i < Count; i++)
        {
            if (Items[i].Name == name)
            {
                RemoveAt(i);
                return true;
            }
        }
        return false;
    }

    /// <inheritdoc />
    protected override void InsertItem(int index, Attribute item)
    {
        ArgumentNullException.ThrowIfNull(item);
        if (Find(item.Name) != null)
            throw new ArgumentException($"node already has an attribute named '{item.Name}'", nameof(item));
        Attach(item);
        base.InsertItem(index, item);
    }

    /// <inheritdoc />
    protected override void SetItem(int index, Attribute item)
    {
        ArgumentNullException.ThrowIfNull(item);
        var old = Items[index];
        if (old.Name != item.Name && Find(item.Name) != null)
            throw new ArgumentException($"node already has an attribute named '{item.Name}'", nameof(item));
        if (!ReferenceEquals(old, item))
        {
            Detach(old);
            Attach(item);
        }
        base.SetItem(index, item);
    }

    /// <inheritdoc />
    protected override void RemoveItem(int index)
    {
        Detach(Items[index]);
        base.RemoveItem(index);
    }

    /// <inheritdoc />
    protected override void ClearItems()
    {
        foreach (var a in Items)
            Detach(a);
        base.ClearItems();
    }

    private void Attach(Attribute a)
    {
        foreach (var g in a.Graphs)
        {
            if (g.OwningNode != null && !ReferenceEquals(g.OwningNode, _owner))
                throw new InvalidOperationException($"graph '{g.Name}' already belongs to node '{g.OwningNode.Name}' ({g.OwningNode.OpType})");
            if (g.OwnerModel != null)
                throw new InvalidOperationException($"graph '{g.Name}' is a model's main graph and cannot become a subgraph");
            g.OwningNode = _owner;
            g.PendingParent = null;
        }
    }

    private void Detach(Attribute a)
    {
        foreach (var g in a.Graphs)
        {
            if (ReferenceEquals(g.OwningNode, _owner))
                g.OwningNode = null;
        }
    }
}
