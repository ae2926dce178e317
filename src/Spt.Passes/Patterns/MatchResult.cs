using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Patterns;

/// <summary>
/// The outcome of matching a pattern: on success the captured values and nodes and every node the pattern
/// covered; on failure a reason (which sub-pattern or guard failed) and the node it failed at.
/// </summary>
public sealed class MatchResult
{
    private static readonly IReadOnlyDictionary<string, Value> NoValues = new Dictionary<string, Value>();
    private static readonly IReadOnlyDictionary<string, Node> NoNodes = new Dictionary<string, Node>();

    private MatchResult(bool success, string? reason, Node? failedAt, IReadOnlyDictionary<string, Value> values,
        IReadOnlyDictionary<string, Node> nodes, IReadOnlyList<Node> matched)
    {
        Success = success;
        Reason = reason;
        FailedAt = failedAt;
        Values = values;
        Nodes = nodes;
        MatchedNodes = matched;
    }

    /// <summary>Whether the pattern matched.</summary>
    public bool Success { get; }

    /// <summary>Why the match failed (null on success).</summary>
    public string? Reason { get; }

    /// <summary>The node where the match failed, when the failure is about a node.</summary>
    public Node? FailedAt { get; }

    /// <summary>Captured values by name (an op pattern's name captures its output value too).</summary>
    public IReadOnlyDictionary<string, Value> Values { get; }

    /// <summary>Captured nodes by name.</summary>
    public IReadOnlyDictionary<string, Node> Nodes { get; }

    /// <summary>Every op node the pattern covered, root first (Constant nodes feeding const patterns are leaves, not included).</summary>
    public IReadOnlyList<Node> MatchedNodes { get; }

    /// <summary>The value captured as <paramref name="name"/>.</summary>
    public Value this[string name] => Values.TryGetValue(name, out var v)
        ? v
        : throw new KeyNotFoundException($"no value captured as '{name}'" + (Success ? "" : " (the match failed: " + Reason + ")"));

    /// <summary>The node captured as <paramref name="name"/>.</summary>
    public Node Node(string name) => Nodes.TryGetValue(name, out var n)
        ? n
        : throw new KeyNotFoundException($"no node captured as '{name}'");

    /// <summary>The constant tensor behind the value captured as <paramref name="name"/>.</summary>
    public Tensor Constant(string name) => ConstantValue.Of(this[name])
        ?? throw new InvalidOperationException($"capture '{name}' is not a constant");

    /// <summary>A failed result.</summary>
    public static MatchResult Failed(string reason, Node? at = null) => new(false, reason, at, NoValues, NoNodes, []);

    internal static MatchResult Succeeded(MatchState state) =>
        new(true, null, null, new Dictionary<string, Value>(state.Values), new Dictionary<string, Node>(state.Nodes), [.. state.Matched]);

    /// <summary>
    /// This result, or a failure when an intermediate value of the matched region is seen from outside it
    /// (see <see cref="Region.FindOutsideUse"/>). Values captured in <paramref name="exits"/> may be used outside;
    /// the root node's outputs always may.
    /// </summary>
    public MatchResult RequireNoOutsideUses(params string[] exits)
    {
        if (!Success)
            return this;
        var allowed = new HashSet<Value>(exits.Select(e => this[e]));
        if (MatchedNodes.Count > 0)
        {
            foreach (var o in MatchedNodes[0].Outputs)
                allowed.Add(o);
        }
        var problem = Region.FindOutsideUse(MatchedNodes, allowed);
        return problem is null ? this : Failed(problem.Value.Reason, problem.Value.Node);
    }

    /// <summary>This result, or a failure with <paramref name="reason"/> when <paramref name="condition"/> is false.</summary>
    public MatchResult Require(bool condition, string reason, Node? at = null) =>
        !Success || condition ? this : Failed(reason, at);

    /// <inheritdoc />
    public override string ToString() => Success
        ? $"match ({MatchedNodes.Count} nodes; {string.Join(", ", Values.Keys)})"
        : $"no match: {Reason}";
}

/// <summary>Checks on a set of nodes that a rewrite is about to replace.</summary>
public static class Region
{
    /// <summary>
    /// Finds an output of a region node that something outside the region sees: a use by a node not in the region,
    /// or a graph output. Values in <paramref name="exits"/> (what the rewrite keeps or replaces) are exempt.
    /// Rewriting a region with such a value would change what the outside consumer sees. Returns null when there is
    /// none.
    /// </summary>
    public static (string Reason, Node Node)? FindOutsideUse(IEnumerable<Node> region, IReadOnlySet<Value> exits)
    {
        var nodes = region as IReadOnlySet<Node> ?? new HashSet<Node>(region);
        foreach (var node in nodes)
        {
            foreach (var output in node.Outputs)
            {
                if (output.IsOmitted || exits.Contains(output))
                    continue;
                if (output.IsGraphOutput)
                    return ($"{Pattern.Name(output)} of {Pattern.Name(node)} is a graph output", node);
                foreach (var use in output.Uses)
                {
                    if (!nodes.Contains(use.Node))
                        return ($"{Pattern.Name(output)} of {Pattern.Name(node)} is also used by {Pattern.Name(use.Node)} outside the match", node);
                }
            }
        }
        return null;
    }
}
