using Spt.Ir;
using Spt.Passes.Canonicalization;

namespace Spt.Passes.Analysis;

/// <summary>
/// The statically known sizes of a graph's values, a view of <see cref="ShapeAnalysis"/>: per value its rank and
/// the dims that are fixed numbers (symbolic dims read as null), and the known elements of small integer shape
/// tensors. An instance keeps one analysis per graph, made on the first question; it is meant for one pass over a
/// graph (values a pass creates are analysed when asked for).
/// </summary>
public sealed class StaticShapes
{
    private readonly Dictionary<Graph, ShapeAnalysis> _analyses = [];

    /// <summary>The dims of <paramref name="value"/> (null entries are unknown), or null when even the rank is unknown.</summary>
    public IReadOnlyList<long?>? ShapeOf(Value value) => Analysis(value)?.ShapeOf(value)?.Select(d => d.Value).ToArray();

    /// <summary>The rank of <paramref name="value"/>, or null.</summary>
    public int? RankOf(Value value) => Analysis(value)?.RankOf(value);

    /// <summary>The last dim of <paramref name="value"/> when known.</summary>
    public long? LastDim(Value value) => Analysis(value)?.ShapeOf(value) is { Count: > 0 } s ? s[^1].Value : null;

    /// <summary>The elements of a small integer tensor (shape arithmetic), null entries unknown; null when not an int tensor we can follow.</summary>
    public IReadOnlyList<long?>? IntsOf(Value value) => Analysis(value)?.ElementsOf(value)?.Select(d => d.Value).ToArray();

    // The analysis of the outermost graph that holds the value (subgraph values are analysed from their producers).
    private ShapeAnalysis? Analysis(Value value)
    {
        var graph = value.Graph;
        while (graph?.Parent is { } parent)
            graph = parent;
        if (graph is null)
            return null;
        if (!_analyses.TryGetValue(graph, out var analysis))
        {
            analysis = new ShapeAnalysis(graph);
            _analyses[graph] = analysis;
        }
        return analysis;
    }
}
