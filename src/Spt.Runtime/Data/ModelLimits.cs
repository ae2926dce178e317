using Spt.Ir;

namespace Spt.Runtime.Data;

/// <summary>
/// What a model accepts as data, read from its graph: the vocabulary (rows of the embedding table that
/// <c>input_ids</c> index), the positions table, and the number of classes of a classifier.
/// Rules (conservative; a limit that cannot be found is null and not checked):
/// the embedding table is the 2-D data input of a <c>Gather</c> whose indices are the token-id input (directly or
/// through a <c>Cast</c>); the positions table is the largest other 2-D <c>Gather</c> table with the same width and
/// at least 8 rows (so token-type tables are not taken for it); tables are initializers, or graph inputs with a
/// known shape (the training graphs pass parameters as inputs).
/// </summary>
public sealed record ModelLimits(long? Vocabulary, string? EmbeddingTable, long? MaxPositions, string? PositionsTable, long? Classes)
{
    /// <summary>No limits known.</summary>
    public static ModelLimits None { get; } = new(null, null, null, null, null);

    /// <summary>Reads the limits of <paramref name="graph"/>, whose token ids come in through <paramref name="inputIds"/>.</summary>
    public static ModelLimits Of(Graph graph, string inputIds = "input_ids", long? classes = null)
    {
        var ids = graph.FindValue(inputIds);
        if (ids is null)
        {
            return None with { Classes = classes };
        }

        var tokenValues = new HashSet<Value> { ids };
        foreach (var use in ids.Uses)
        {
            if (use.Node.OpType == "Cast" && use.Node.Domain.Length == 0)
            {
                tokenValues.Add(use.Node.Outputs[0]);
            }
        }

        (string Name, long Rows, long Width)? embedding = null;
        var others = new List<(string Name, long Rows, long Width)>();
        foreach (var node in graph.Nodes)
        {
            if (node.OpType != "Gather" || node.Domain.Length != 0 || node.Inputs.Count < 2 || node.Inputs[0] is not { } table)
            {
                continue;
            }

            if (TableShape(table) is not { } shape)
            {
                continue;
            }

            if (node.Inputs[1] is { } index && tokenValues.Contains(index))
            {
                embedding ??= (table.Name, shape.Rows, shape.Width);
            }
            else
            {
                others.Add((table.Name, shape.Rows, shape.Width));
            }
        }

        if (embedding is not { } emb)
        {
            return None with { Classes = classes };
        }

        var positions = others.Where(o => o.Width == emb.Width && o.Rows >= 8 && o.Name != emb.Name)
            .OrderByDescending(o => o.Rows).ThenBy(o => o.Name, StringComparer.Ordinal).FirstOrDefault();
        return new ModelLimits(emb.Rows, emb.Name, positions.Name is null ? null : positions.Rows, positions.Name, classes);
    }

    private static (long Rows, long Width)? TableShape(Value table)
    {
        if (table.Initializer is { } init)
        {
            return init.Dims.Count == 2 && init.ElementType.IsFloatingPoint() ? (init.Dims[0], init.Dims[1]) : null;
        }

        if (table.IsGraphInput && table.Type is TensorType { Shape: { Count: 2 } shape } t && t.ElementType.IsFloatingPoint()
            && shape[0].Value is { } rows && shape[1].Value is { } width)
        {
            return (rows, width);
        }

        return null;
    }
}
