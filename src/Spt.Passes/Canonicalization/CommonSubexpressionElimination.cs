using System.Text;
using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Merges nodes that compute the same thing: same domain, op type, inputs (the same values, in order), attributes
/// and output count; the later node's users read the earlier node's outputs. Nondeterministic ops (Dropout,
/// random generators) and nodes with subgraphs are never merged. Identical small constants are merged too:
/// Constant nodes, and integer initializers of at most 64 elements (shape-like data). Float initializers are
/// left apart even when equal, since each may be a parameter trained separately.
/// </summary>
public sealed class CommonSubexpressionElimination : IPass
{
    private static readonly HashSet<string> Nondeterministic = new(StringComparer.Ordinal)
    {
        "Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    };

    /// <inheritdoc />
    public string Name => "common-subexpression-elimination";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        var editor = g.Edit();
        bool changed = false;

        var constants = new Dictionary<string, Value>(StringComparer.Ordinal);
        foreach (var init in g.Initializers.ToList())
        {
            var t = init.Initializer!;
            if (init.IsGraphInput || init.IsGraphOutput || t.ElementCount > 64 || t.IsExternal || !Canonicalization.ShapeAnalysis.IsInteger(t.ElementType))
                continue;
            string key = ConstantKey(t);
            if (constants.TryGetValue(key, out var first))
            {
                editor.ReplaceAllUsesWith(init, first);
                changed = true;
            }
            else
            {
                constants[key] = init;
            }
        }

        var seen = new Dictionary<string, Node>(StringComparer.Ordinal);
        foreach (var node in g.Nodes.ToList())
        {
            if (Nondeterministic.Contains(node.OpType) || node.Subgraphs.Any() || node.Outputs.Any(o => o.IsGraphOutput))
                continue;
            string? key = node.OpType == "Constant" ? ConstantNodeKey(node) : NodeKey(node);
            if (key is null)
                continue;
            if (!seen.TryGetValue(key, out var first))
            {
                seen[key] = node;
                continue;
            }
            for (int i = 0; i < node.Outputs.Count; i++)
                editor.ReplaceAllUsesWith(node.Outputs[i], first.Outputs[i]);
            editor.Remove(node);
            changed = true;
        }
        return changed;
    }

    private static string ConstantKey(Tensor t) =>
        $"{(int)t.ElementType}[{string.Join(",", t.Dims)}]{Convert.ToHexString(t.GetRawData().Span)}";

    private static string? ConstantNodeKey(Node node)
    {
        if (node.Attributes.Count != 1 || node.GetAttribute("value") is not { Kind: AttributeKind.Tensor } a)
            return null;
        var t = a.AsTensor();
        return t.ElementCount > 4096 || t.ElementType == ElementType.String || t.IsExternal ? null : "Constant:" + ConstantKey(t);
    }

    private static string NodeKey(Node node)
    {
        var sb = new StringBuilder();
        sb.Append(node.Domain).Append("::").Append(node.OpType).Append('/').Append(node.Outputs.Count).Append('(');
        foreach (var input in node.Inputs)
        {
            // Identity of the value, not its name: names are unique in a graph, so the name is the identity.
            sb.Append(input is null ? "<none>" : input.Name).Append('\u0001');
        }
        sb.Append(')');
        foreach (var a in node.Attributes.OrderBy(a => a.Name, StringComparer.Ordinal))
            sb.Append(a.Name).Append('=').Append(a.Kind).Append(':').Append(a.ValueText()).Append('\u0002');
        return sb.ToString();
    }
}
