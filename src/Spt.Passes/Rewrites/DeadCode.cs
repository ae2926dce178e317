using Spt.Ir;

namespace Spt.Passes;

/// <summary>Local dead-code removal after a rewrite: the replaced nodes and whatever only they kept alive.</summary>
internal static class DeadCode
{
    /// <summary>
    /// Removes each of <paramref name="nodes"/> whose outputs are unused, then, transitively, the producers of their
    /// inputs that became unused. Graph outputs and initializers are never removed. Cost is proportional to the
    /// nodes removed (no scan of the graph).
    /// </summary>
    public static int RemoveDeadFrom(GraphEditor editor, IEnumerable<Node> nodes)
    {
        var work = new Stack<Node>(nodes);
        int removed = 0;
        while (work.Count > 0)
        {
            var n = work.Pop();
            if (n.Graph is null || !ReferenceEquals(n.Graph, editor.Graph))
                continue;
            if (n.Outputs.Any(o => o.IsGraphOutput || o.Uses.Count > 0))
                continue;
            var producers = n.Inputs.Where(i => i?.Producer is not null).Select(i => i!.Producer!).Distinct().ToList();
            editor.Remove(n);
            removed++;
            foreach (var p in producers)
                work.Push(p);
        }
        return removed;
    }
}
