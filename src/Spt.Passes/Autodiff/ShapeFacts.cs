using Spt.Ir;
using Spt.Passes.Canonicalization;

namespace Spt.Passes.Autodiff;

/// <summary>
/// What the gradient rules need to know statically, a view of <see cref="ShapeAnalysis"/>: ranks (exporters rarely
/// write value_info, but rules such as MatMul's need ranks), full static shapes, and element types. Unknown stays
/// null; nothing here guesses.
/// </summary>
public sealed class ShapeFacts
{
    private readonly ShapeAnalysis _analysis;
    private readonly Dictionary<Value, int> _ranks = [];

    /// <summary>The facts of the values of <paramref name="graph"/> (computed when first asked).</summary>
    public ShapeFacts(Graph graph) => _analysis = new ShapeAnalysis(graph);

    /// <summary>The element type of <paramref name="v"/>, or null when unknown.</summary>
    public ElementType? ElementTypeOf(Value? v) => v is null ? null : ShapeAnalysis.ElementTypeOf(v);

    /// <summary>The rank of <paramref name="v"/>, or null when unknown.</summary>
    public int? Rank(Value? v)
    {
        if (v is null)
            return null;
        if (_ranks.TryGetValue(v, out int r))
            return r;
        return _analysis.RankOf(v) ?? v.Shape?.Count;
    }

    /// <summary>The full static shape of <paramref name="v"/>, or null when any dimension is unknown.</summary>
    public long[]? StaticShape(Value? v)
    {
        if (v is null)
            return null;
        if (_analysis.ShapeOf(v) is { } dims && ShapeAnalysis.IsStatic(dims))
            return [.. dims.Select(d => d.Value!.Value)];
        if (v.Shape is { } declared && declared.All(d => d.Value.HasValue))
            return [.. declared.Select(d => d.Value!.Value)];
        return null;
    }

    /// <summary>The dims of <paramref name="v"/> (each a size, a symbol or unknown), or null when even the rank is unknown.</summary>
    public IReadOnlyList<Dim>? Dims(Value? v) => v is null ? null : _analysis.ShapeOf(v) ?? v.Shape;

    /// <summary>Records that <paramref name="v"/> has rank <paramref name="rank"/> (for values created later).</summary>
    public void SetRank(Value v, int? rank)
    {
        if (rank is { } r)
            _ranks[v] = r;
    }
}
