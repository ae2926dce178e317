namespace Spt.Ir;

/// <summary>
/// The one way to change a graph's structure. Every method keeps use-def chains, producers and the
/// name table consistent. Misuse by calling code (removing a node that is still used, a duplicate
/// name, a value from an unrelated graph) throws <see cref="InvalidOperationException"/> or
/// <see cref="ArgumentException"/>: those are bugs in a pass, not problems of the model.
/// </summary>
public sealed class GraphEditor
{
    /// <summary>Creates an editor for <paramref name="graph"/>.</summary>
    public GraphEditor(Graph graph)
    {
        Graph = graph ?? throw new ArgumentNullException(nameof(graph));
    }

    /// <summary>The graph being edited.</summary>
    public Graph Graph { get; }

    // ---------------------------------------------------------------- nodes

    /// <summary>
    /// Creates a detached node (not yet in any graph). Outputs get the given names (an empty name
    /// marks an omitted optional output), or, without <paramref name="outputNames"/>, fresh unique
    /// names when inserted. Put it in place with <see cref="Append"/>, <see cref="InsertBefore"/> or
    /// <see cref="InsertAfter"/>.
    /// </summary>
    public Node CreateNode(
        string opType,
        IEnumerable<Value?> inputs,
        int outputCount = 1,
        IEnumerable<Attribute>? attributes = null,
        string domain = "",
        string? name = null,
        IReadOnlyList<string>? outputNames = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(opType);
        var node = new Node(opType, domain) { Name = name ?? "" };
        node.InputList.AddRange(inputs);
        if (outputNames != null && outputNames.Count != outputCount)
            throw new ArgumentException($"{outputNames.Count} output names for {outputCount} outputs", nameof(outputNames));
        for (int i = 0; i < outputCount; i++)
            node.OutputList.Add(new Value(outputNames?[i] ?? "") { ProducerOutputIndex = i, PendingName = outputNames == null });
        if (attributes != null)
        {
            foreach (var a in attributes)
                node.Attributes.Add(a);
        }
        return node;
    }

    /// <summary>Creates a node and appends it to the graph.</summary>
    public Node AddNode(
        string opType,
        IEnumerable<Value?> inputs,
        int outputCount = 1,
        IEnumerable<Attribute>? attributes = null,
        string domain = "",
        string? name = null,
        IReadOnlyList<string>? outputNames = null) =>
        Append(CreateNode(opType, inputs, outputCount, attributes, domain, name, outputNames));

    /// <summary>Appends a detached node, or moves a node of this graph to the end.</summary>
    public Node Append(Node node)
    {
        Prepare(node);
        Graph.Nodes.AddLast(node);
        return node;
    }

    /// <summary>Inserts a detached node (or moves a node of this graph) right before <paramref name="anchor"/>.</summary>
    public Node InsertBefore(Node anchor, Node node)
    {
        CheckOwned(anchor);
        if (ReferenceEquals(anchor, node))
            return node;
        Prepare(node);
        Graph.Nodes.InsertBefore(anchor, node);
        return node;
    }

    /// <summary>Inserts a detached node (or moves a node of this graph) right after <paramref name="anchor"/>.</summary>
    public Node InsertAfter(Node anchor, Node node)
    {
        CheckOwned(anchor);
        if (ReferenceEquals(anchor, node))
            return node;
        Prepare(node);
        Graph.Nodes.InsertAfter(anchor, node);
        return node;
    }

    // Makes a node ready for linking: unlink it when it is being moved, or attach it when new.
    private void Prepare(Node node)
    {
        if (node.Graph != null)
        {
            CheckOwned(node);
            Graph.Nodes.Remove(node);
            return;
        }
        for (int i = 0; i < node.InputList.Count; i++)
        {
            if (node.InputList[i] is { } v)
                CheckVisible(v, node, i);
        }
        var explicitNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (var o in node.OutputList)
        {
            if (!o.PendingName && o.Name.Length > 0 && (Graph.IsNameTaken(o.Name) || !explicitNames.Add(o.Name)))
                throw new ArgumentException($"cannot add {OnnxModelException.Describe(node)}: value name '{o.Name}' is already defined");
        }
        foreach (var o in node.OutputList)
        {
            if (o.PendingName)
            {
                // Registered at once so that the node's next output gets another name.
                o.Name = Graph.UniqueName(node.OpType.ToLowerInvariant() + "_out");
                o.PendingName = false;
                Graph.Register(o);
            }
        }
        Graph.Attach(node);
    }

    /// <summary>
    /// Removes a node. Its outputs must have no uses and must not be graph outputs. Uses held by the
    /// node (and by nodes of its subgraphs) are dropped.
    /// </summary>
    public void Remove(Node node)
    {
        CheckOwned(node);
        foreach (var o in node.OutputList)
        {
            if (o.UseList.Count > 0)
                throw new InvalidOperationException($"cannot remove {OnnxModelException.Describe(node)}: output '{o.Name}' is still used by {OnnxModelException.Describe(o.UseList[0].Node)}");
            if (o.IsGraphOutput)
                throw new InvalidOperationException($"cannot remove {OnnxModelException.Describe(node)}: output '{o.Name}' is a graph output");
        }
        DropUses(node);
        foreach (var o in node.OutputList)
        {
            Graph.Unregister(o);
            o.Producer = null;
            o.Graph = null;
        }
        Graph.Nodes.Remove(node);
        node.Graph = null;
    }

    // Drops the uses held by a node and by everything nested in its subgraphs.
    private static void DropUses(Node node)
    {
        for (int i = 0; i < node.InputList.Count; i++)
        {
            if (node.InputList[i] is { } v)
                Graph.RemoveUse(v, node, i);
        }
        foreach (var sub in node.Subgraphs)
        {
            foreach (var inner in sub.Nodes)
                DropUses(inner);
        }
    }

    /// <summary>Sets input <paramref name="index"/> of <paramref name="node"/> (null: omitted optional input).</summary>
    public void SetInput(Node node, int index, Value? value)
    {
        CheckAttachedSomewhere(node);
        if ((uint)index >= (uint)node.InputList.Count)
            throw new ArgumentOutOfRangeException(nameof(index), $"{OnnxModelException.Describe(node)} has {node.InputList.Count} inputs");
        if (value != null)
            CheckVisibleFrom(node.Graph!, value, node, index);
        if (node.InputList[index] is { } old)
            Graph.RemoveUse(old, node, index);
        node.InputList[index] = value;
        value?.UseList.Add(new Use(node, index));
    }

    /// <summary>Appends an input to <paramref name="node"/>.</summary>
    public void AddInput(Node node, Value? value)
    {
        CheckAttachedSomewhere(node);
        if (value != null)
            CheckVisibleFrom(node.Graph!, value, node, node.InputList.Count);
        node.InputList.Add(value);
        value?.UseList.Add(new Use(node, node.InputList.Count - 1));
    }

    /// <summary>Removes trailing inputs so that <paramref name="node"/> has <paramref name="count"/> inputs.</summary>
    public void TruncateInputs(Node node, int count)
    {
        CheckAttachedSomewhere(node);
        for (int i = node.InputList.Count - 1; i >= count; i--)
        {
            if (node.InputList[i] is { } v)
                Graph.RemoveUse(v, node, i);
            node.InputList.RemoveAt(i);
        }
    }

    /// <summary>
    /// Makes every use of <paramref name="old"/> a use of <paramref name="replacement"/>, keeping the
    /// order of uses (they are appended after the replacement's existing uses). With
    /// <paramref name="replaceGraphOutputs"/>, graph output slots holding <paramref name="old"/> are
    /// switched too (the output then carries the replacement's name).
    /// </summary>
    public void ReplaceAllUsesWith(Value old, Value replacement, bool replaceGraphOutputs = false)
    {
        ArgumentNullException.ThrowIfNull(old);
        ArgumentNullException.ThrowIfNull(replacement);
        if (ReferenceEquals(old, replacement))
            return;
        foreach (var use in old.UseList)
        {
            CheckVisibleFrom(use.Node.Graph ?? Graph, replacement, use.Node, use.InputIndex);
            use.Node.InputList[use.InputIndex] = replacement;
            replacement.UseList.Add(use);
        }
        old.UseList.Clear();
        if (replaceGraphOutputs && old.IsGraphOutput && old.Graph is { } g)
        {
            for (int i = 0; i < g.OutputList.Count; i++)
            {
                if (ReferenceEquals(g.OutputList[i], old))
                    SetOutputCore(g, i, replacement);
            }
        }
    }

    /// <summary>Renames a value defined in this graph; the name must be free in this graph and enclosing ones.</summary>
    public void Rename(Value value, string newName)
    {
        ArgumentException.ThrowIfNullOrEmpty(newName);
        if (!ReferenceEquals(value.Graph, Graph))
            throw new ArgumentException($"value '{value.Name}' is not defined in graph '{Graph.Name}'", nameof(value));
        if (value.Name == newName)
            return;
        if (Graph.IsNameTaken(newName))
            throw new ArgumentException($"value name '{newName}' is already defined", nameof(newName));
        Graph.Rename(value, newName);
    }

    // ---------------------------------------------------------------- graph inputs, outputs, initializers

    /// <summary>Adds a graph input.</summary>
    public Value AddInput(string name, OnnxType? type)
    {
        var v = NewDefinedValue(name, type);
        v.IsGraphInput = true;
        Graph.InputList.Add(v);
        Graph.InputTemplates.Add(null);
        return v;
    }

    /// <summary>Removes a graph input; it must be unused unless an initializer still defines it.</summary>
    public void RemoveInput(Value value)
    {
        int i = Graph.InputList.IndexOf(value);
        if (i < 0)
            throw new ArgumentException($"'{value.Name}' is not an input of graph '{Graph.Name}'", nameof(value));
        if (!value.IsInitializer && value.UseList.Count > 0)
            throw new InvalidOperationException($"cannot remove input '{value.Name}': it is used by {OnnxModelException.Describe(value.UseList[0].Node)}");
        Graph.InputList.RemoveAt(i);
        Graph.InputTemplates.RemoveAt(i);
        value.IsGraphInput = false;
        if (!value.IsInitializer && !value.IsGraphOutput)
            Graph.Unregister(value);
    }

    /// <summary>Adds an initializer; the tensor's name names the new value.</summary>
    public Value AddInitializer(Tensor tensor)
    {
        var v = NewDefinedValue(tensor.Name, new TensorType(tensor.ElementType, [.. tensor.Dims.Select(d => new Dim(d))]));
        v.Initializer = tensor;
        Graph.InitializerList.Add(v);
        return v;
    }

    /// <summary>Replaces the tensor of an initializer value (the tensor is renamed to the value's name).</summary>
    public void SetInitializer(Value value, Tensor tensor)
    {
        if (value.Initializer == null || !ReferenceEquals(value.Graph, Graph))
            throw new ArgumentException($"'{value.Name}' is not an initializer of graph '{Graph.Name}'", nameof(value));
        tensor.Name = value.Name;
        value.Initializer = tensor;
    }

    /// <summary>Removes an initializer; the value must be unused unless it is also a graph input.</summary>
    public void RemoveInitializer(Value value)
    {
        int i = Graph.InitializerList.IndexOf(value);
        if (i < 0)
            throw new ArgumentException($"'{value.Name}' is not an initializer of graph '{Graph.Name}'", nameof(value));
        if (!value.IsGraphInput && value.UseList.Count > 0)
            throw new InvalidOperationException($"cannot remove initializer '{value.Name}': it is used by {OnnxModelException.Describe(value.UseList[0].Node)}");
        if (!value.IsGraphInput && value.IsGraphOutput)
            throw new InvalidOperationException($"cannot remove initializer '{value.Name}': it is a graph output");
        Graph.InitializerList.RemoveAt(i);
        value.Initializer = null;
        if (!value.IsGraphInput)
            Graph.Unregister(value);
    }

    /// <summary>Appends a graph output.</summary>
    public void AddOutput(Value value)
    {
        CheckVisibleFrom(Graph, value, null, -1);
        Graph.OutputList.Add(value);
        Graph.OutputTemplates.Add(null);
        value.GraphOutputCount++;
    }

    /// <summary>Sets graph output <paramref name="index"/>.</summary>
    public void SetOutput(int index, Value value)
    {
        CheckVisibleFrom(Graph, value, null, -1);
        SetOutputCore(Graph, index, value);
    }

    /// <summary>Removes graph output <paramref name="index"/>.</summary>
    public void RemoveOutput(int index)
    {
        Graph.OutputList[index].GraphOutputCount--;
        Graph.OutputList.RemoveAt(index);
        Graph.OutputTemplates.RemoveAt(index);
    }

    private static void SetOutputCore(Graph g, int index, Value value)
    {
        var old = g.OutputList[index];
        old.GraphOutputCount--;
        g.OutputList[index] = value;
        value.GraphOutputCount++;
        // The slot's old annotation described another value.
        if (g.OutputTemplates[index] is { } t && t.Name != value.Name)
            g.OutputTemplates[index] = null;
    }

    /// <summary>Adds a value_info annotation entry for <paramref name="value"/> (its current type is written).</summary>
    public void AddValueInfo(Value value)
    {
        if (!Graph.ValueInfoList.Contains(value))
        {
            Graph.ValueInfoList.Add(value);
            Graph.ValueInfoTemplates.Add(null);
        }
    }

    /// <summary>Removes value_info entries whose values are no longer defined anywhere.</summary>
    public int PruneValueInfos()
    {
        int removed = 0;
        for (int i = Graph.ValueInfoList.Count - 1; i >= 0; i--)
        {
            var v = Graph.ValueInfoList[i];
            if (v.Graph == null || (!v.IsDefined && v.UseList.Count == 0))
            {
                Graph.ValueInfoList.RemoveAt(i);
                Graph.ValueInfoTemplates.RemoveAt(i);
                removed++;
            }
        }
        return removed;
    }

    private Value NewDefinedValue(string name, OnnxType? type)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (Graph.IsNameTaken(name))
            throw new ArgumentException($"value name '{name}' is already defined", nameof(name));
        var v = new Value(name, type);
        Graph.Register(v);
        return v;
    }

    // ---------------------------------------------------------------- order

    /// <summary>
    /// Reorders nodes topologically, keeping the current order wherever dependencies allow (a graph
    /// already in order is unchanged). Outer-scope values used inside a node's subgraphs count as
    /// that node's inputs. Throws <see cref="OnnxModelException"/> naming a node on a cycle.
    /// </summary>
    public void SortTopologically()
    {
        var order = TopologicalOrder.Compute(Graph, out var cycle);
        if (order == null)
            throw OnnxModelException.ForNode(cycle![0], "graph has a cycle: " + string.Join(" -> ", cycle.Select(OnnxModelException.Describe)));
        Graph.Nodes.Reorder(order);
    }

    // ---------------------------------------------------------------- checks

    private void CheckOwned(Node node)
    {
        if (!ReferenceEquals(node.Graph, Graph) || !node.Linked)
            throw new ArgumentException($"{OnnxModelException.Describe(node)} is not in graph '{Graph.Name}'", nameof(node));
    }

    private static void CheckAttachedSomewhere(Node node)
    {
        if (node.Graph == null)
            throw new ArgumentException($"{OnnxModelException.Describe(node)} is not in a graph", nameof(node));
    }

    private void CheckVisible(Value v, Node node, int index) => CheckVisibleFrom(Graph, v, node, index);

    // A value is usable in graph g when it is defined in g or an enclosing graph.
    private static void CheckVisibleFrom(Graph g, Value v, Node? node, int index)
    {
        if (v.Graph == null || !g.IsWithin(v.Graph))
        {
            string where = node != null ? $"input {index} of {OnnxModelException.Describe(node)}" : $"an output of graph '{g.Name}'";
            throw new ArgumentException($"value '{v.Name}' used as {where} is not defined in graph '{g.Name}' or an enclosing graph");
        }
    }
}
