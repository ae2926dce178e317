namespace Spt.Ir;

/// <summary>One problem found by <see cref="GraphVerifier"/>.</summary>
/// <param name="Node">The offending node, when there is one.</param>
/// <param name="Graph">The graph in which the problem was found.</param>
/// <param name="Message">One-line description naming the node (name, op type, opset).</param>
public sealed record VerifierError(Node? Node, Graph Graph, string Message)
{
    /// <inheritdoc />
    public override string ToString() => Message;
}

/// <summary>
/// Checks the structural rules of a graph and its subgraphs: every input names a value defined in
/// the graph or an enclosing one (inputs, initializers, node outputs); no value name is defined
/// twice in a graph; there are no cycles; graph outputs are defined; use-def chains agree.
/// </summary>
public static class GraphVerifier
{
    /// <summary>All problems found (empty when the graph is well formed).</summary>
    public static IReadOnlyList<VerifierError> Verify(Graph graph)
    {
        var errors = new List<VerifierError>();
        VerifyGraph(graph, errors);
        return errors;
    }

    /// <summary>Throws <see cref="OnnxModelException"/> with the first problem (and a count of the others).</summary>
    public static void VerifyOrThrow(Graph graph)
    {
        var errors = Verify(graph);
        if (errors.Count == 0)
            return;
        string more = errors.Count > 1 ? $" (and {errors.Count - 1} more problems)" : "";
        throw new OnnxModelException(errors[0].Message + more);
    }

    private static void VerifyGraph(Graph graph, List<VerifierError> errors)
    {
        string where = graph.Parent != null ? $" in subgraph '{graph.Name}'" : "";

        // Value names defined more than once in this graph.
        var defined = new Dictionary<string, string>(StringComparer.Ordinal);
        void Define(string name, string what, Node? node)
        {
            if (name.Length == 0)
                return;
            if (!defined.TryAdd(name, what))
            {
                string msg = node != null
                    ? $"{OnnxModelException.Describe(node)}{where}: output '{name}' is already defined as {defined[name]}"
                    : $"graph '{graph.Name}'{where}: {what} '{name}' is already defined as {defined[name]}";
                errors.Add(new VerifierError(node, graph, msg));
            }
        }
        var initializers = new HashSet<Value>(graph.Initializers.Concat(graph.SparseInitializers), ReferenceEqualityComparer.Instance);
        foreach (var v in graph.Inputs)
        {
            if (!initializers.Contains(v))
                Define(v.Name, "graph input", null);
        }
        foreach (var v in graph.Initializers.Concat(graph.SparseInitializers))
            Define(v.Name, v.IsGraphInput ? "graph input with initializer" : "initializer", null);
        foreach (var n in graph.Nodes)
        {
            foreach (var o in n.Outputs)
                Define(o.Name, $"an output of {OnnxModelException.Describe(n)}", n);
        }

        // Inputs that name nothing visible, and chains out of sync.
        foreach (var n in graph.Nodes)
        {
            for (int i = 0; i < n.Inputs.Count; i++)
            {
                var v = n.Inputs[i];
                if (v == null)
                    continue;
                if (!IsVisible(v, graph))
                {
                    errors.Add(new VerifierError(n, graph,
                        $"{OnnxModelException.Describe(n)}{where}: input {i} '{v.Name}' names no value (not a graph input, initializer or node output in scope)"));
                }
                if (!v.Uses.Contains(new Use(n, i)))
                    errors.Add(new VerifierError(n, graph, $"{OnnxModelException.Describe(n)}{where}: input {i} '{v.Name}' is missing from the value's uses (internal)"));
            }
            for (int i = 0; i < n.Outputs.Count; i++)
            {
                if (!ReferenceEquals(n.Outputs[i].Producer, n) || n.Outputs[i].ProducerOutputIndex != i)
                    errors.Add(new VerifierError(n, graph, $"{OnnxModelException.Describe(n)}{where}: output {i} has the wrong producer (internal)"));
            }
        }
        foreach (var v in graph.Outputs)
        {
            if (!IsVisible(v, graph))
                errors.Add(new VerifierError(null, graph, $"graph '{graph.Name}'{where}: output '{v.Name}' names no value"));
        }

        if (TopologicalOrder.Compute(graph, out var cycle) == null)
        {
            errors.Add(new VerifierError(cycle![0], graph,
                $"{OnnxModelException.Describe(cycle[0])}{where}: graph has a cycle: {string.Join(" -> ", cycle.Select(OnnxModelException.Describe))}"));
        }

        foreach (var n in graph.Nodes)
        {
            foreach (var sub in n.Subgraphs)
                VerifyGraph(sub, errors);
        }
    }

    // Defined by something live, in this graph or an enclosing one.
    private static bool IsVisible(Value v, Graph graph)
    {
        if (v.Graph == null || !graph.IsWithin(v.Graph))
            return false;
        if (v.Producer != null)
            return v.Producer.Graph != null && ReferenceEquals(v.Producer.Graph, v.Graph);
        return v.IsGraphInput || v.IsInitializer;
    }
}
