using System.Text;

namespace Spt.Ir;

/// <summary>
/// A stable textual dump of a graph, for golden tests and <c>sptc inspect --dump</c>. One line per
/// node, <c>%y:f32[B,S,768] = MatMul(%x, %w)  {attrs}</c>; subgraphs follow their node, indented.
/// The output depends only on the graph's content and order.
/// </summary>
public static class GraphPrinter
{
    /// <summary>Dumps a model: a header line with IR version and opsets, then the main graph.</summary>
    public static string Print(Model model)
    {
        var sb = new StringBuilder();
        sb.Append("model ir").Append(model.IrVersion).Append(" opsets(")
          .AppendJoin(", ", model.OpsetImports.Select(o => $"{(o.Domain.Length == 0 ? "ai.onnx" : o.Domain)}:{o.Version}"))
          .Append(')').Append('\n');
        Append(sb, model.Graph, "");
        return sb.ToString();
    }

    /// <summary>Dumps a graph (and its subgraphs).</summary>
    public static string Print(Graph graph)
    {
        var sb = new StringBuilder();
        Append(sb, graph, "");
        return sb.ToString();
    }

    private static void Append(StringBuilder sb, Graph g, string indent)
    {
        sb.Append(indent).Append("graph ").Append(g.Name.Length == 0 ? "\"\"" : g.Name).Append(" (")
          .AppendJoin(", ", g.Inputs.Where(v => !v.IsInitializer).Select(Typed))
          .Append(") -> (").AppendJoin(", ", g.Outputs.Select(Typed)).Append(")\n");
        string inner = indent + "  ";
        foreach (var v in g.Initializers)
        {
            var t = v.Initializer!;
            sb.Append(inner).Append("init ").Append('%').Append(v.Name).Append(':').Append(t.ElementType.ShortName())
              .Append('[').AppendJoin(",", t.Dims).Append(']');
            if (t.IsExternal)
                sb.Append(" external");
            sb.Append('\n');
        }
        foreach (var v in g.SparseInitializers)
        {
            var s = v.SparseInitializer!;
            sb.Append(inner).Append("init %").Append(v.Name).Append(":sparse<").Append(s.Values.ElementType.ShortName())
              .Append('[').AppendJoin(",", s.Dims).Append("]>\n");
        }
        foreach (var n in g.Nodes)
        {
            sb.Append(inner).Append(NodeLine(n)).Append('\n');
            foreach (var a in n.Attributes)
            {
                foreach (var sub in a.Graphs)
                {
                    sb.Append(inner).Append("  ").Append(a.Name).Append(":\n");
                    Append(sb, sub, inner + "    ");
                }
            }
        }
    }

    /// <summary>The one-line form of a node: <c>%y:f32[B,4] = Relu(%x)  {alpha=0.5}</c>.</summary>
    public static string NodeLine(Node n)
    {
        var sb = new StringBuilder();
        sb.AppendJoin(", ", n.Outputs.Select(v => v.IsOmitted ? "\"\"" : Typed(v)));
        sb.Append(n.Outputs.Count > 0 ? " = " : "");
        if (n.Domain.Length > 0)
            sb.Append(n.Domain).Append("::");
        sb.Append(n.OpType).Append('(');
        sb.AppendJoin(", ", n.Inputs.Select(v => v == null ? "\"\"" : "%" + v.Name));
        sb.Append(')');
        if (n.Attributes.Count > 0)
            sb.Append("  {").AppendJoin(", ", n.Attributes.Select(a => a.Name + "=" + a.ValueText())).Append('}');
        return sb.ToString();
    }

    private static string Typed(Value v) => v.Type == null ? "%" + v.Name : $"%{v.Name}:{v.Type}";
}
