namespace Spt.Ir;

/// <summary>Stable topological ordering of a graph's nodes.</summary>
public static class TopologicalOrder
{
    /// <summary>
    /// The nodes of <paramref name="graph"/> in a topological order that keeps the current order
    /// wherever dependencies allow (Kahn's algorithm, always taking the earliest ready node), or null
    /// when there is a cycle; then <paramref name="cycle"/> lists the nodes of one cycle in order.
    /// A node depends on the producers of its inputs and of outer-scope values its subgraphs use.
    /// </summary>
    public static List<Node>? Compute(Graph graph, out List<Node>? cycle)
    {
        var nodes = graph.Nodes.ToList();
        var index = new Dictionary<Node, int>(nodes.Count, ReferenceEqualityComparer.Instance);
        for (int i = 0; i < nodes.Count; i++)
            index[nodes[i]] = i;

        var deps = new List<int>[nodes.Count];
        var successors = new List<int>[nodes.Count];
        var indegree = new int[nodes.Count];
        for (int i = 0; i < nodes.Count; i++)
            successors[i] = [];
        for (int i = 0; i < nodes.Count; i++)
        {
            var set = new HashSet<int>();
            foreach (var v in Dependencies(nodes[i]))
            {
                if (v.Producer is { } p && index.TryGetValue(p, out int j))
                    set.Add(j);
            }
            deps[i] = [.. set];
            indegree[i] = set.Count;
            foreach (int j in set)
                successors[j].Add(i);
        }

        var ready = new PriorityQueue<int, int>();
        for (int i = 0; i < nodes.Count; i++)
        {
            if (indegree[i] == 0)
                ready.Enqueue(i, i);
        }
        var order = new List<Node>(nodes.Count);
        while (ready.TryDequeue(out int i, out _))
        {
            order.Add(nodes[i]);
            foreach (int s in successors[i])
            {
                if (--indegree[s] == 0)
                    ready.Enqueue(s, s);
            }
        }
        if (order.Count == nodes.Count)
        {
            cycle = null;
            return order;
        }
        cycle = FindCycle(nodes, deps, indegree);
        return null;
    }

    /// <summary>Values a node needs before it can run: its inputs and the outer-scope values its subgraphs use.</summary>
    public static IEnumerable<Value> Dependencies(Node node)
    {
        foreach (var v in node.Inputs)
        {
            if (v != null)
                yield return v;
        }
        foreach (var sub in node.Subgraphs)
        {
            foreach (var v in OuterScopeValues(sub))
                yield return v;
        }
    }

    /// <summary>Values defined outside <paramref name="subgraph"/> that its nodes (at any depth) use.</summary>
    public static IEnumerable<Value> OuterScopeValues(Graph subgraph)
    {
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (var n in subgraph.AllNodes())
        {
            foreach (var v in n.Inputs)
            {
                if (v != null && (v.Graph == null || !v.Graph.IsWithin(subgraph)) && seen.Add(v))
                    yield return v;
            }
        }
        foreach (var v in subgraph.Outputs)
        {
            if ((v.Graph == null || !v.Graph.IsWithin(subgraph)) && seen.Add(v))
                yield return v;
        }
    }

    // Among nodes left with unmet dependencies, walk dependency edges until a node repeats.
    private static List<Node> FindCycle(List<Node> nodes, List<int>[] deps, int[] indegree)
    {
        int start = Array.FindIndex(indegree, d => d > 0);
        var position = new Dictionary<int, int>();
        var path = new List<int>();
        int cur = start;
        while (!position.ContainsKey(cur))
        {
            position[cur] = path.Count;
            path.Add(cur);
            cur = deps[cur].First(j => indegree[j] > 0);
        }
        // path[position[cur]..] is the cycle, listed consumer -> producer; reverse to data-flow order.
        var loop = path.Skip(position[cur]).Select(i => nodes[i]).ToList();
        loop.Reverse();
        return loop;
    }
}
