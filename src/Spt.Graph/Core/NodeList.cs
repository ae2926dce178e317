using System.Collections;

namespace Spt.Ir;

/// <summary>
/// The nodes of a graph in order: a doubly linked list, so nodes can be inserted and removed while
/// iterating. An enumerator standing on a removed node continues with the node that followed it;
/// nodes inserted after the current position are visited.
/// </summary>
public sealed class NodeList : IReadOnlyCollection<Node>
{
    private Node? _first;
    private Node? _last;

    internal NodeList()
    {
    }

    /// <summary>Number of nodes.</summary>
    public int Count { get; private set; }

    /// <summary>First node, or null when empty.</summary>
    public Node? First => _first;

    /// <summary>Last node, or null when empty.</summary>
    public Node? Last => _last;

    /// <summary>The node after <paramref name="node"/> in this list, or null.</summary>
    public static Node? NextOf(Node node) => node.Linked ? node.Next : SkipRemoved(node.Next);

    /// <summary>The node before <paramref name="node"/> in this list, or null.</summary>
    public static Node? PreviousOf(Node node) => node.Linked ? node.Prev : SkipRemovedBack(node.Prev);

    internal void AddLast(Node node) => InsertAfterCore(_last, node);

    internal void InsertBefore(Node anchor, Node node) => InsertAfterCore(anchor.Prev, node);

    internal void InsertAfter(Node anchor, Node node) => InsertAfterCore(anchor, node);

    private void InsertAfterCore(Node? after, Node node)
    {
        if (node.Linked)
            throw new InvalidOperationException($"node {node} is already in a list");
        node.Prev = after;
        node.Next = after == null ? _first : after.Next;
        if (node.Next != null)
            node.Next.Prev = node;
        else
            _last = node;
        if (after != null)
            after.Next = node;
        else
            _first = node;
        node.Linked = true;
        Count++;
    }

    /// <summary>Unlinks a node; its links are kept so that enumerators standing on it can go on.</summary>
    internal void Remove(Node node)
    {
        if (!node.Linked)
            throw new InvalidOperationException($"node {node} is not in a list");
        if (node.Prev != null)
            node.Prev.Next = node.Next;
        else
            _first = node.Next;
        if (node.Next != null)
            node.Next.Prev = node.Prev;
        else
            _last = node.Prev;
        node.Linked = false;
        Count--;
    }

    /// <summary>Reorders the list to exactly <paramref name="order"/> (which must hold the same nodes).</summary>
    internal void Reorder(IReadOnlyList<Node> order)
    {
        if (order.Count != Count)
            throw new InvalidOperationException("reorder must keep the node set");
        _first = _last = null;
        Count = 0;
        foreach (var n in order)
        {
            n.Linked = false;
            AddLast(n);
        }
    }

    private static Node? SkipRemovedBack(Node? node)
    {
        while (node != null && !node.Linked)
            node = node.Prev;
        return node;
    }

    private static Node? SkipRemoved(Node? node)
    {
        while (node != null && !node.Linked)
            node = node.Next;
        return node;
    }

    /// <summary>Enumerates in order; tolerant of insertions and removals during the walk.</summary>
    public IEnumerator<Node> GetEnumerator()
    {
        var node = _first;
        while (node != null)
        {
            yield return node;
            node = node.Linked ? node.Next : SkipRemoved(node.Next);
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Enumerates from last to first.</summary>
    public IEnumerable<Node> Reverse()
    {
        var node = _last;
        while (node != null)
        {
            yield return node;
            node = node.Linked ? node.Prev : SkipRemovedBack(node.Prev);
        }
    }
}
