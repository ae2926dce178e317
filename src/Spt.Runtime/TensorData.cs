using Spt.Ir;

namespace Spt.Runtime;

/// <summary>
/// A tensor passed to or returned by <see cref="OrtModelRunner"/>: its element type, shape, and elements as
/// <c>float</c> (floating-point types) or <c>long</c> (integer and bool types).
/// </summary>
public sealed class TensorData
{
    private TensorData(ElementType type, long[] shape, float[]? floats, long[]? longs)
    {
        long count = shape.Aggregate(1L, (p, d) => p * d);
        if ((floats?.Length ?? longs!.Length) != count)
            throw new ArgumentException($"{floats?.Length ?? longs!.Length} elements do not fill shape [{string.Join(",", shape)}]");
        Type = type;
        Shape = shape;
        Floats = floats;
        Longs = longs;
    }

    /// <summary>The element type the tensor has in the model.</summary>
    public ElementType Type { get; }

    /// <summary>Dimensions.</summary>
    public long[] Shape { get; }

    /// <summary>Elements of a floating-point tensor, else null.</summary>
    public float[]? Floats { get; }

    /// <summary>Elements of an integer or bool tensor (bool as 0/1), else null.</summary>
    public long[]? Longs { get; }

    /// <summary>Number of elements.</summary>
    public int Count => Floats?.Length ?? Longs!.Length;

    /// <summary>Element <paramref name="i"/> as a double.</summary>
    public double this[int i] => Floats is not null ? Floats[i] : Longs![i];

    /// <summary>A floating-point tensor (float, double or float16 in the model).</summary>
    public static TensorData FromFloats(float[] data, long[] shape, ElementType type = ElementType.Float) =>
        type.IsFloatingPoint() ? new(type, shape, data, null) : throw new ArgumentException($"{type} is not a floating-point type");

    /// <summary>An integer or bool tensor.</summary>
    public static TensorData FromLongs(long[] data, long[] shape, ElementType type = ElementType.Int64) =>
        !type.IsFloatingPoint() ? new(type, shape, null, data) : throw new ArgumentException($"{type} is a floating-point type");

    /// <inheritdoc />
    public override string ToString() => $"{Type.ShortName()}[{string.Join(",", Shape)}]";
}
