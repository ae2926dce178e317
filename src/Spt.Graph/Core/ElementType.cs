namespace Spt.Ir;

/// <summary>
/// ONNX tensor element types. The numeric values are ONNX's <c>TensorProto.DataType</c> values, so a
/// value read from a newer model that this enum does not name still round-trips as a cast integer.
/// </summary>
public enum ElementType
{
    /// <summary>No element type given.</summary>
    Undefined = 0,
    /// <summary>IEEE 754 binary32.</summary>
    Float = 1,
    /// <summary>Unsigned 8-bit integer.</summary>
    UInt8 = 2,
    /// <summary>Signed 8-bit integer.</summary>
    Int8 = 3,
    /// <summary>Unsigned 16-bit integer.</summary>
    UInt16 = 4,
    /// <summary>Signed 16-bit integer.</summary>
    Int16 = 5,
    /// <summary>Signed 32-bit integer.</summary>
    Int32 = 6,
    /// <summary>Signed 64-bit integer.</summary>
    Int64 = 7,
    /// <summary>Byte string (UTF-8 by convention).</summary>
    String = 8,
    /// <summary>Boolean stored in one byte.</summary>
    Bool = 9,
    /// <summary>IEEE 754 binary16.</summary>
    Float16 = 10,
    /// <summary>IEEE 754 binary64.</summary>
    Double = 11,
    /// <summary>Unsigned 32-bit integer.</summary>
    UInt32 = 12,
    /// <summary>Unsigned 64-bit integer.</summary>
    UInt64 = 13,
    /// <summary>Two binary32 values (real, imaginary).</summary>
    Complex64 = 14,
    /// <summary>Two binary64 values (real, imaginary).</summary>
    Complex128 = 15,
    /// <summary>Brain float: the upper 16 bits of a binary32.</summary>
    BFloat16 = 16,
    /// <summary>8-bit float, 4 exponent and 3 mantissa bits, finite only (NaN = S.1111.111).</summary>
    Float8E4M3FN = 17,
    /// <summary>8-bit float, 4 exponent and 3 mantissa bits, no negative zero (NaN = 0x80).</summary>
    Float8E4M3FNUZ = 18,
    /// <summary>8-bit float, 5 exponent and 2 mantissa bits, with infinities and NaNs.</summary>
    Float8E5M2 = 19,
    /// <summary>8-bit float, 5 exponent and 2 mantissa bits, no negative zero (NaN = 0x80).</summary>
    Float8E5M2FNUZ = 20,
    /// <summary>Unsigned 4-bit integer, two per byte (first element in the low nibble).</summary>
    UInt4 = 21,
    /// <summary>Signed 4-bit integer, two per byte (first element in the low nibble).</summary>
    Int4 = 22,
    /// <summary>4-bit float, 2 exponent and 1 mantissa bit, two per byte.</summary>
    Float4E2M1 = 23,
}

/// <summary>Facts about <see cref="ElementType"/> values: sizes, names, storage fields.</summary>
public static class ElementTypes
{
    /// <summary>
    /// Bits one element occupies in raw (little-endian, packed) storage; 0 for strings and for types
    /// this library does not know.
    /// </summary>
    public static int BitWidth(this ElementType type) => type switch
    {
        ElementType.Float or ElementType.Int32 or ElementType.UInt32 => 32,
        ElementType.UInt8 or ElementType.Int8 or ElementType.Bool => 8,
        ElementType.Float8E4M3FN or ElementType.Float8E4M3FNUZ or ElementType.Float8E5M2 or ElementType.Float8E5M2FNUZ => 8,
        ElementType.UInt16 or ElementType.Int16 or ElementType.Float16 or ElementType.BFloat16 => 16,
        ElementType.Int64 or ElementType.UInt64 or ElementType.Double or ElementType.Complex64 => 64,
        ElementType.Complex128 => 128,
        ElementType.UInt4 or ElementType.Int4 or ElementType.Float4E2M1 => 4,
        _ => 0,
    };

    /// <summary>Whether this library knows the type (it is one of the named enum members other than Undefined).</summary>
    public static bool IsKnown(this ElementType type) => type is > ElementType.Undefined and <= ElementType.Float4E2M1;

    /// <summary>Whether values of this type pack two elements per byte.</summary>
    public static bool IsPacked4Bit(this ElementType type) =>
        type is ElementType.UInt4 or ElementType.Int4 or ElementType.Float4E2M1;

    /// <summary>Whether the type is a real or complex floating-point type (including the 8- and 4-bit floats).</summary>
    public static bool IsFloatingPoint(this ElementType type) => type is ElementType.Float or ElementType.Double
        or ElementType.Float16 or ElementType.BFloat16 or ElementType.Float8E4M3FN or ElementType.Float8E4M3FNUZ
        or ElementType.Float8E5M2 or ElementType.Float8E5M2FNUZ or ElementType.Float4E2M1
        or ElementType.Complex64 or ElementType.Complex128;

    /// <summary>
    /// Bytes that <paramref name="elementCount"/> elements occupy in raw storage (4-bit types round up
    /// to whole bytes); -1 for strings and unknown types.
    /// </summary>
    public static long ByteCount(this ElementType type, long elementCount)
    {
        int bits = type.BitWidth();
        if (bits == 0)
            return -1;
        return bits == 4 ? (elementCount + 1) / 2 : elementCount * (bits / 8);
    }

    /// <summary>Short stable name used by the textual dump: f32, f16, bf16, i64, u8, bool, str, c64, f8e4m3fn, i4, ...</summary>
    public static string ShortName(this ElementType type) => type switch
    {
        ElementType.Undefined => "?",
        ElementType.Float => "f32",
        ElementType.UInt8 => "u8",
        ElementType.Int8 => "i8",
        ElementType.UInt16 => "u16",
        ElementType.Int16 => "i16",
        ElementType.Int32 => "i32",
        ElementType.Int64 => "i64",
        ElementType.String => "str",
        ElementType.Bool => "bool",
        ElementType.Float16 => "f16",
        ElementType.Double => "f64",
        ElementType.UInt32 => "u32",
        ElementType.UInt64 => "u64",
        ElementType.Complex64 => "c64",
        ElementType.Complex128 => "c128",
        ElementType.BFloat16 => "bf16",
        ElementType.Float8E4M3FN => "f8e4m3fn",
        ElementType.Float8E4M3FNUZ => "f8e4m3fnuz",
        ElementType.Float8E5M2 => "f8e5m2",
        ElementType.Float8E5M2FNUZ => "f8e5m2fnuz",
        ElementType.UInt4 => "u4",
        ElementType.Int4 => "i4",
        ElementType.Float4E2M1 => "f4e2m1",
        _ => "dtype" + ((int)type).ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
