using Spt.Ir;

namespace Spt.Passes.Analysis;

/// <summary>
/// The constant behind a value, for every pass: an initializer that is not also a graph input (a graph input may be
/// fed a different value), or the tensor of a default-domain Constant node, looking through Identity.
/// </summary>
public static class ConstantValue
{
    /// <summary>The constant tensor behind <paramref name="value"/>, or null when it is not a constant.</summary>
    public static Tensor? Of(Value? value)
    {
        for (int depth = 0; value is not null && depth < 64; depth++)
        {
            if (value.Initializer is { } t)
                return value.IsGraphInput ? null : t;
            if (value.Producer is not { IsDefaultDomain: true } p)
                return null;
            if (p.OpType == "Constant")
                return p.GetAttribute("value") is { Kind: AttributeKind.Tensor } a ? a.AsTensor() : null;
            if (p.OpType != "Identity")
                return null;
            value = p.Inputs.Count > 0 ? p.Inputs[0] : null;
        }
        return null;
    }

    /// <summary>The contents of an int64 or int32 constant, or null.</summary>
    public static long[]? Ints(Value? value) =>
        Of(value) is { ElementType: ElementType.Int64 or ElementType.Int32 } t ? t.ToInt64Array() : null;

    /// <summary>The contents of a float32 constant, or null.</summary>
    public static float[]? Floats(Value? value) => Of(value) is { ElementType: ElementType.Float } t ? t.ToFloatArray() : null;

    /// <summary>The value of a one-element numeric constant, or null.</summary>
    public static double? Scalar(Value? value) =>
        Of(value) is { ElementCount: 1 } t && t.ElementType != ElementType.String ? t.ToDoubleArray()[0] : null;
}
