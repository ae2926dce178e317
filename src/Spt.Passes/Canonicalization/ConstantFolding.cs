using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Patterns;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Folds what is known at compile time into initializers:
/// <list type="bullet">
/// <item>a node whose inputs are all constants (initializers that are not graph inputs, Constant nodes) and whose
/// op the evaluator knows (shape arithmetic, small elementwise math, Transpose, Expand, ...), when the result has
/// at most <see cref="MaxElements"/> elements;</item>
/// <item>an integer shape value whose elements <see cref="ShapeAnalysis"/> proves static, e.g. <c>Shape(x)</c> or
/// <c>Gather(Shape(x), 2)</c> when dimension 2 of x is known even though x's batch is symbolic;</item>
/// <item>a Reshape whose target is computed from Shape subgraphs: the target becomes a constant, with 0 where a
/// symbolic dimension is copied from the same position of the input (only when <c>allowzero</c> is 0) and -1 for
/// at most one remaining symbolic dimension, e.g. the exporter's head split
/// <c>Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 4, Shape(x)[2] / 4))</c> becomes <c>Reshape(x, [0, 0, 4, 8])</c>.</item>
/// </list>
/// The element type of every folded value is kept. The nodes left without uses are removed by
/// <see cref="DeadCodeElimination"/>.
/// </summary>
public sealed class ConstantFolding : IPass
{
    /// <summary>Creates the pass with a size cap on folded results.</summary>
    public ConstantFolding(long maxElements = 4096) => MaxElements = maxElements;

    /// <summary>Largest number of elements a folded result may have.</summary>
    public long MaxElements { get; }

    /// <inheritdoc />
    public string Name => "constant-folding";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        long opset = model.GetOpsetVersion("") ?? 17;
        var shapes = ShapeAnalysis.Run(model);
        var editor = g.Edit();
        bool changed = false;

        foreach (var node in g.Nodes.ToList())
        {
            if (!node.IsDefaultDomain || node.OpType == "Constant" || node.Subgraphs.Any() || node.Graph is null)
                continue;
            if (node.Outputs.Count == 1 && FoldConstantInputs(node, opset, editor))
            {
                changed = true;
                continue;
            }
            if (node.Outputs.Count == 1 && FoldKnownShapeValue(node, shapes, editor))
            {
                changed = true;
                continue;
            }
            if (node.OpType == "Reshape" && FoldReshapeTarget(node, shapes, editor, context))
                changed = true;
        }
        return changed;
    }

    // Op(c1, c2, ...) with constant inputs -> initializer.
    private bool FoldConstantInputs(Node node, long opset, GraphEditor editor)
    {
        if (!ConstantEvaluator.Supported.Contains(node.OpType) || node.Outputs[0].IsGraphOutput)
            return false;
        var inputs = new List<ConstArray?>();
        foreach (var input in node.Inputs)
        {
            if (input is null)
            {
                inputs.Add(null);
                continue;
            }
            var t = ConstantValue.Of(input);
            if (t is null || !ConstArray.IsSupported(t.ElementType) || t.IsExternal && t.ElementCount > MaxElements)
                return false;
            inputs.Add(ConstArray.From(t));
        }
        if (inputs.Count == 0)
            return false;
        var result = ConstantEvaluator.Evaluate(node, inputs, opset, MaxElements);
        if (result is null)
            return false;
        Replace(node.Outputs[0], result.ToTensor(FoldedName(node, editor.Graph)), editor);
        return true;
    }

    // A transposed 2-D weight keeps its parameter's name (W -> W_T, recorded like TransposedWeightFolding does), so
    // training, checkpoints and LoRA still see the exporter's names; anything else is named after the node output.
    private static string FoldedName(Node node, Graph graph)
    {
        if (node.OpType == "Transpose" && node.Inputs[0] is { Initializer.Dims.Count: 2, IsGraphInput: false } weight)
        {
            var name = graph.UniqueName(weight.Name + "_T");
            if (graph.Model is { } model)
                Rewriting.RecordTransposedWeight(model, name, weight.Name);
            return name;
        }
        return graph.UniqueName(node.Outputs[0].Name + "_folded");
    }

    // Gather(Shape(x), 2) -> [32] when dim 2 of x is static.
    private static bool FoldKnownShapeValue(Node node, ShapeAnalysis shapes, GraphEditor editor)
    {
        var output = node.Outputs[0];
        if (output.IsGraphOutput || shapes.ElementsOf(output) is not { } elements || !ShapeAnalysis.IsStatic(elements))
            return false;
        if (shapes.ShapeOf(output) is not { } shape || shape.Count > 1 || (shape.Count == 1 && shape[0].Value != elements.Count)
            || (shape.Count == 0 && elements.Count != 1))
            return false;
        var type = IntegerTypeOf(output);
        if (type is null)
            return false;
        long[] dims = shape.Count == 0 ? [] : [elements.Count];
        var values = elements.Select(d => d.Value!.Value).ToArray();
        var array = new ConstArray(type.Value, dims, values, null);
        Replace(output, array.ToTensor(editor.Graph.UniqueName(output.Name + "_folded")), editor);
        return true;
    }

    // Reshape(x, Concat(...shape pieces...)) -> Reshape(x, [0, 0, H, E]).
    private static bool FoldReshapeTarget(Node node, ShapeAnalysis shapes, GraphEditor editor, PassContext context)
    {
        if (node.Inputs.Count < 2 || node.Inputs[1] is not { } targetValue || node.Inputs[0] is not { } data)
            return false;
        if (ConstantValue.Of(targetValue) is not null || shapes.ElementsOf(targetValue) is not { } target)
            return false;
        bool allowZero = node.GetInt("allowzero", 0) != 0;
        var input = shapes.ShapeOf(data);
        var result = new long[target.Count];
        var unresolved = new List<int>();
        for (int i = 0; i < target.Count; i++)
        {
            var d = target[i];
            if (d.Value is { } known)
                result[i] = known;
            else if (!allowZero && input is not null && i < input.Count && input[i] == d)
                result[i] = 0; // copy dimension i of the input
            else
                unresolved.Add(i);
        }
        var resolved = result.Where((_, i) => !unresolved.Contains(i)).ToList();
        if (unresolved.Count > 1 || (unresolved.Count == 1 && (resolved.Contains(-1) || (allowZero && resolved.Contains(0)))))
        {
            context.Info("constant-folding", $"reshape target has {unresolved.Count} symbolic dimensions that are not copies of the input", node);
            return false;
        }
        if (unresolved.Count == 1)
            result[unresolved[0]] = -1; // inferred from the element count, which the original target matched
        var tensor = Tensor.Create(editor.Graph.UniqueName(targetValue.Name + "_folded"), result, result.Length);
        editor.SetInput(node, 1, editor.AddInitializer(tensor));
        return true;
    }

    private static ElementType? IntegerTypeOf(Value v) =>
        ShapeAnalysis.ElementTypeOf(v) is { } t && ShapeAnalysis.IsInteger(t) ? t : null;

    private static void Replace(Value output, Tensor tensor, GraphEditor editor)
    {
        var constant = editor.AddInitializer(tensor);
        editor.ReplaceAllUsesWith(output, constant);
        if (output.Producer is { } producer && producer.Outputs.All(o => o.Uses.Count == 0 && !o.IsGraphOutput))
            editor.Remove(producer);
    }
}
