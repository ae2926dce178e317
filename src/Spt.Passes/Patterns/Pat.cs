using Spt.Ir;

namespace Spt.Passes.Patterns;

/// <summary>
/// Factory for patterns. A pattern reads like the expression it matches:
/// <code>
/// // MatMul(q, Transpose(k, perm = [0, 1, 3, 2])) / scale, with scale ≈ sqrt(16)
/// var scores = Pat.Op("Div",
///     Pat.Op("MatMul", Pat.Any("q"), Pat.Op("Transpose", Pat.Any("k")).AttrInts("perm", 0, 1, 3, 2)),
///     Pat.Const("scale", Pat.Scalar(4.0)));
/// MatchResult m = scores.Match(node.Outputs[0]);
/// if (!m.Success) context.Info(Name, m.Reason!, m.FailedAt);
/// </code>
/// </summary>
public static class Pat
{
    /// <summary>Any value; captured under <paramref name="capture"/> when given.</summary>
    public static AnyPattern Any(string? capture = null) => new(capture);

    /// <summary>A node of <paramref name="opType"/> (default domain) whose inputs match <paramref name="inputs"/> in order.</summary>
    public static OpPattern Op(string opType, params Pattern[] inputs) => new(opType, inputs, commutative: false);

    /// <summary>A binary node whose two operands may appear in either order (Add, Mul, ...).</summary>
    public static OpPattern Commutative(string opType, Pattern a, Pattern b) => new(opType, [a, b], commutative: true);

    /// <summary>The first alternative that matches.</summary>
    public static OneOfPattern OneOf(params Pattern[] alternatives) => new(alternatives);

    /// <summary>
    /// <c>opType(inner)</c> or just <c>inner</c>. The optional node must satisfy <paramref name="guard"/> when given
    /// (e.g. a Dropout that is a no-op); its extra inputs (Dropout's ratio and training_mode) are not matched.
    /// </summary>
    public static OptionalPattern Optional(string opType, Pattern inner, Func<Node, bool>? guard = null, string guardDescription = "guard")
    {
        var wrapped = Op(opType, inner).WithTrailingInputs();
        if (guard is not null)
            wrapped.Where(guard, guardDescription);
        return new OptionalPattern(wrapped, inner);
    }

    /// <summary>A constant (initializer or Constant node) satisfying <paramref name="predicate"/> when given.</summary>
    public static ConstPattern Const(string? capture = null, Func<Tensor, bool>? predicate = null, string description = "a constant") =>
        new(capture, predicate, description);

    /// <summary>A constant whose every element is within <paramref name="tolerance"/> (relative to max(1, |expected|)) of <paramref name="expected"/>.</summary>
    public static ConstPattern Const(string? capture, double expected, double tolerance = 1e-5) =>
        new(capture, Scalar(expected, tolerance), $"a constant = {expected:G6}");

    /// <summary>
    /// Predicate: the tensor has one element (any rank) or all its elements are equal, and that value is within
    /// <paramref name="tolerance"/> · max(1, |<paramref name="expected"/>|) of <paramref name="expected"/>.
    /// </summary>
    public static Func<Tensor, bool> Scalar(double expected, double tolerance = 1e-5) => t =>
    {
        if (t.ElementCount == 0 || t.ElementCount > 4096 || t.ElementType == ElementType.String)
            return false;
        double bound = tolerance * Math.Max(1.0, Math.Abs(expected));
        return t.ToDoubleArray().All(v => Math.Abs(v - expected) <= bound || (double.IsInfinity(expected) && v == expected));
    };

    /// <summary>Predicate: the tensor has exactly one element.</summary>
    public static bool IsSingleElement(Tensor t) => t.ElementCount == 1;

    /// <summary>The single element of a one-element numeric tensor as a double, or null.</summary>
    public static double? ScalarValue(Tensor t) =>
        t.ElementCount == 1 && t.ElementType != ElementType.String ? t.ToDoubleArray()[0] : null;
}
