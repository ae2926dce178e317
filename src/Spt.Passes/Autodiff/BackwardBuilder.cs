using System.Globalization;
using Spt.CustomOps;
using Spt.Ir;

namespace Spt.Passes.Autodiff;

/// <summary>The result of <see cref="BackwardBuilder.Build"/>.</summary>
public sealed class BackwardResult
{
    internal BackwardResult(IReadOnlyDictionary<Value, Value?> gradients, int nodeCount, int differentiatedNodes)
    {
        Gradients = gradients;
        NodeCount = nodeCount;
        DifferentiatedNodes = differentiatedNodes;
    }

    /// <summary>d loss / d parameter for every requested parameter; null when the loss does not depend on it.</summary>
    public IReadOnlyDictionary<Value, Value?> Gradients { get; }

    /// <summary>How many nodes the backward graph added.</summary>
    public int NodeCount { get; }

    /// <summary>How many forward nodes were differentiated (those on a path from a parameter to the loss).</summary>
    public int DifferentiatedNodes { get; }
}

/// <summary>
/// Appends the backward graph of a scalar loss w.r.t. a set of parameter values. Walks the forward nodes in reverse
/// topological order, visiting only nodes on a path from a parameter to the loss (paths from frozen values only get
/// no gradient work); a value used several times gets the sum of its gradient contributions. Backward nodes are
/// named <c>grad/&lt;forward node name&gt;/&lt;op&gt;_&lt;k&gt;</c>, deterministically.
/// </summary>
public sealed class BackwardBuilder
{
    private readonly GradientRegistry _registry;

    /// <summary>Creates a builder over <paramref name="registry"/> (default: <see cref="GradientRegistry.CreateDefault"/>).</summary>
    public BackwardBuilder(GradientRegistry? registry = null)
    {
        _registry = registry ?? GradientRegistry.CreateDefault();
    }

    /// <summary>
    /// Appends d <paramref name="loss"/> / d p for each p in <paramref name="parameters"/> to <paramref name="graph"/>.
    /// Throws <see cref="OnnxModelException"/> naming the node, op type and opset when a node on a differentiable
    /// path has no gradient rule (before anything is added).
    /// </summary>
    public BackwardResult Build(Graph graph, Value loss, IReadOnlyList<Value> parameters, string prefix = "grad")
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(loss);
        long opset = graph.Model?.GetOpsetVersion("") ?? throw new InvalidOperationException("the graph belongs to no model");
        var nodes = graph.Nodes.ToList();
        var facts = new ShapeFacts(graph);

        // Forward: values that depend on a parameter through differentiable ops.
        var varied = new HashSet<Value>(parameters);
        foreach (var n in nodes)
        {
            if (!n.Inputs.Any(v => v != null && varied.Contains(v)))
                continue;
            var entry = _registry.Find(n.Domain, n.OpType);
            if (entry is { IsNoGradient: true })
                continue;
            foreach (var o in n.Outputs)
            {
                if (!o.IsOmitted && CanCarryGradient(n, o, facts))
                    varied.Add(o);
            }
        }

        // Backward: values the loss depends on.
        var useful = new HashSet<Value> { loss };
        for (int i = nodes.Count - 1; i >= 0; i--)
        {
            if (nodes[i].Outputs.Any(useful.Contains))
            {
                foreach (var v in nodes[i].Inputs)
                {
                    if (v != null)
                        useful.Add(v);
                }
            }
        }

        var active = nodes.Where(n => n.Outputs.Any(o => varied.Contains(o) && useful.Contains(o))).ToList();
        foreach (var n in active)
        {
            if (_registry.Find(n.Domain, n.OpType) == null)
            {
                throw OnnxModelException.ForNode(n,
                    "no gradient rule for this op, and it lies on a path from a trainable parameter to the loss " +
                    "(freeze the parameters that feed it, or register a rule)");
            }
        }

        int before = graph.Nodes.Count;
        var emitter = new OpEmitter(graph, opset, prefix);
        var contributions = new Dictionary<Value, List<Value>>();
        void Add(Value v, Value g)
        {
            if (!contributions.TryGetValue(v, out var list))
                contributions[v] = list = [];
            list.Add(g);
        }
        Value? Total(Value v)
        {
            if (!contributions.TryGetValue(v, out var list))
                return null;
            if (list.Count > 1)
            {
                var sum = emitter.Sum(list);
                list.Clear();
                list.Add(sum);
            }
            return list[0];
        }

        var replaced = new Dictionary<Node, Node>();
        emitter.Prefix = prefix + "/seed";
        Add(loss, facts.Rank(loss) == 0
            ? emitter.Op("Identity", emitter.Scalar(1f))
            : emitter.Op("ConstantOfShape", [emitter.Shape(loss)], ("value", Tensor.Create("value", [1f], 1))));

        for (int k = active.Count - 1; k >= 0; k--)
        {
            var n = active[k];
            var outputGrads = n.Outputs.Select(o => useful.Contains(o) ? Total(o) : null).ToList();
            if (outputGrads.All(g => g == null))
                continue;
            var needs = n.Inputs.Select(v => v != null && varied.Contains(v)).ToList();
            string label = n.Name.Length > 0 ? n.Name : n.OpType + "_" + nodes.IndexOf(n).ToString(CultureInfo.InvariantCulture);
            emitter.Prefix = $"{prefix}/{label}";
            var ctx = new GradientContext(n, outputGrads, needs, emitter, facts, (i, g) => Add(n.Inputs[i]!, g), (node, i) => Materialize(node, i, replaced));
            _registry.Find(n.Domain, n.OpType)!.Rule!(ctx);
        }

        emitter.Prefix = prefix + "/params";
        var result = new Dictionary<Value, Value?>();
        foreach (var p in parameters)
            result[p] = Total(p);
        return new BackwardResult(result, graph.Nodes.Count - before, active.Count);
    }

    // A float output can carry a gradient; integer and bool outputs (Cast to int, comparisons) cannot.
    private static bool CanCarryGradient(Node n, Value o, ShapeFacts facts)
    {
        if (n.IsDefaultDomain && n.OpType == "Cast")
        {
            var to = (ElementType)n.GetInt("to", (long)ElementType.Float);
            return IsFloat(to);
        }
        if (n.IsDefaultDomain && n.OpType == "Dropout" && o.ProducerOutputIndex == 1)
            return false;
        return facts.ElementTypeOf(o) is not { } t || IsFloat(t);
    }

    private static bool IsFloat(ElementType t) =>
        t is ElementType.Float or ElementType.Double or ElementType.Float16 or ElementType.BFloat16;

    // Gives forward output i of n a name (re-creating the node with more outputs when it declared fewer; later
    // requests for the same forward node go to the re-created one).
    private static Value Materialize(Node n, int outputIndex, Dictionary<Node, Node> replaced)
    {
        while (replaced.TryGetValue(n, out var newer))
            n = newer;
        var graph = n.Graph ?? throw new InvalidOperationException("node is not in a graph");
        var editor = graph.Edit();
        string baseName = (n.Name.Length > 0 ? n.Name : n.OpType) + "/saved";
        if (outputIndex < n.Outputs.Count)
        {
            var o = n.Outputs[outputIndex];
            if (o.IsOmitted)
                editor.Rename(o, graph.UniqueName(baseName + outputIndex.ToString(CultureInfo.InvariantCulture)));
            return o;
        }
        // All declared outputs at once (omitted but the requested one), so that later requests only rename.
        int count = Math.Max(outputIndex + 1, DeclaredOutputCount(n));
        var names = new string[count];
        for (int i = 0; i < count; i++)
            names[i] = "";
        var replacement = editor.CreateNode(n.OpType, n.Inputs, count, n.Attributes.ToList(), n.Domain, n.Name, names);
        editor.InsertAfter(n, replacement);
        var oldNames = n.Outputs.Select(o => o.Name).ToList();
        for (int i = 0; i < n.Outputs.Count; i++)
            editor.ReplaceAllUsesWith(n.Outputs[i], replacement.Outputs[i], replaceGraphOutputs: true);
        editor.Remove(n);
        replaced[n] = replacement;
        for (int i = 0; i < oldNames.Count; i++)
        {
            if (oldNames[i].Length > 0)
                editor.Rename(replacement.Outputs[i], oldNames[i]);
        }
        var saved = replacement.Outputs[outputIndex];
        editor.Rename(saved, graph.UniqueName(baseName + outputIndex.ToString(CultureInfo.InvariantCulture)));
        return saved;
    }

    // Outputs an op declares (spt ops from their schemas; Dropout's mask), 0 when unknown.
    private static int DeclaredOutputCount(Node n)
    {
        if (n.Domain == CustomOpLibrary.Domain)
        {
            var schema = AttentionOps.All.Append(RoutedFfnOps.RoutedFfn).Append(RoutedFfnOps.RoutedFfnGrad).FirstOrDefault(s => s.Name == n.OpType);
            return schema?.Outputs.Count ?? 0;
        }
        return n.IsDefaultDomain && n.OpType == "Dropout" ? 2 : 0;
    }
}
