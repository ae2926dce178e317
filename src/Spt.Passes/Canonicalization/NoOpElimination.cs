using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Patterns;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Removes nodes that pass their input through unchanged:
/// <c>Identity(x)</c>; <c>Cast(x, to = type of x)</c>; <c>Reshape</c>, <c>Expand</c> and <c>Transpose</c> whose
/// output shape is provably the input's (same static sizes or same symbols, identity perm);
/// <c>Dropout</c> in inference (no <c>training_mode</c> input, or a constant false one) or with a constant ratio
/// of 0, when its mask output is unused; <c>x * 1</c>, <c>1 * x</c>, <c>x / 1</c>, <c>x + 0</c>, <c>0 + x</c>,
/// <c>x - 0</c> when the constant does not broadcast x to a larger shape or change its type.
/// A Dropout of a training export (constant <c>training_mode</c> true, ratio not 0) is kept: training uses it.
/// Nodes whose output is a graph output are kept (the output name is the model's interface).
/// </summary>
public sealed class NoOpElimination : IPass
{
    /// <inheritdoc />
    public string Name => "noop-elimination";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        var editor = g.Edit();
        var shapes = ShapeAnalysis.Run(model);
        bool changed = false;
        foreach (var node in g.Nodes.ToList())
        {
            if (node.Graph is null || !node.IsDefaultDomain || node.Inputs.Count == 0 || node.Inputs[0] is not { } x)
                continue;
            var passThrough = PassThrough(node, x, shapes);
            if (passThrough is not null && Rewriting.Bypass(editor, node, passThrough))
                changed = true;
        }
        return changed;
    }

    private static Value? PassThrough(Node node, Value x, ShapeAnalysis shapes)
    {
        var y = node.Outputs[0];
        switch (node.OpType)
        {
            case "Identity":
                return x;
            case "Cast":
                return ShapeAnalysis.ElementTypeOf(x) is { } t && t == (ElementType)node.GetInt("to", 0) ? x : null;
            case "Reshape" or "Expand":
                return SameShape(shapes.ShapeOf(x), shapes.ShapeOf(y)) ? x : null;
            case "Transpose":
                {
                    var perm = node.GetInts("perm");
                    bool identity = perm is not null ? perm.Select((p, i) => p == i).All(b => b) : shapes.ShapeOf(x)?.Count <= 1;
                    return identity ? x : null;
                }
            case "Dropout":
                return IsInferenceDropout(node) ? x : null;
            case "Mul" or "Div" or "Add" or "Sub":
                return NeutralOperand(node, shapes);
            default:
                return null;
        }
    }

    /// <summary>Whether a Dropout node is the identity: inference mode, or a ratio of 0.</summary>
    public static bool IsInferenceDropout(Node node)
    {
        if (node.Outputs.Count > 1 && (node.Outputs[1].Uses.Count > 0 || node.Outputs[1].IsGraphOutput))
            return false;
        long opset = node.Graph?.Model?.GetOpsetVersion("") ?? 17;
        if (opset < 12)
            return opset >= 7 || node.GetInt("is_test", 0) != 0; // opsets 7 to 11 have no training flag in the graph
        var ratio = node.Inputs.Count > 1 && node.Inputs[1] is { } r ? ConstantValue.Of(r) : null;
        if (ratio is not null && Pat.ScalarValue(ratio) == 0.0)
            return true;
        if (node.Inputs.Count < 3 || node.Inputs[2] is null)
            return true;
        var training = ConstantValue.Of(node.Inputs[2]!);
        return training is not null && Pat.ScalarValue(training) == 0.0;
    }

    // Equal sizes or equal symbols at every position (a fresh symbol only equals itself).
    private static bool SameShape(IReadOnlyList<Dim>? a, IReadOnlyList<Dim>? b) =>
        a is not null && b is not null && a.SequenceEqual(b);

    // x * 1, x / 1, x + 0, x - 0 (and 1 * x, 0 + x) where the result is x itself.
    private static Value? NeutralOperand(Node node, ShapeAnalysis shapes)
    {
        if (node.Inputs.Count != 2 || node.Inputs[1] is not { } b || node.Inputs[0] is not { } a)
            return null;
        double neutral = node.OpType is "Mul" or "Div" ? 1.0 : 0.0;
        bool commutes = node.OpType is "Mul" or "Add";
        foreach (var (value, constant) in commutes ? [(a, b), (b, a)] : new[] { (a, b) })
        {
            var t = ConstantValue.Of(constant);
            if (t is null || t.ElementCount > 4096 || !Pat.Scalar(neutral, 0)(t))
                continue;
            // The constant must not make the result larger than x, nor change its type.
            var xs = shapes.ShapeOf(value);
            var ys = shapes.ShapeOf(node.Outputs[0]);
            if (xs is null || ys is null || !xs.SequenceEqual(ys) || ShapeAnalysis.ElementTypeOf(value) != t.ElementType)
                continue;
            return value;
        }
        return null;
    }
}
