using System.Buffers.Binary;

namespace Spt.Ir;

/// <summary>Decodes single elements of every numeric ONNX element type from raw little-endian bytes.</summary>
public static class ElementCodec
{
    /// <summary>Element <paramref name="index"/> of <paramref name="raw"/> as a double.</summary>
    public static double ReadAsDouble(ElementType type, ReadOnlySpan<byte> raw, long index)
    {
        int i = checked((int)index);
        return type switch
        {
            ElementType.Float => BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]),
            ElementType.Double => BinaryPrimitives.ReadDoubleLittleEndian(raw[(i * 8)..]),
            ElementType.Float16 => (double)BinaryPrimitives.ReadHalfLittleEndian(raw[(i * 2)..]),
            // bfloat16 is the upper half of a binary32.
            ElementType.BFloat16 => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw[(i * 2)..]) << 16),
            ElementType.Float8E4M3FN => Float8E4M3FN(raw[i]),
            ElementType.Float8E4M3FNUZ => Float8Fnuz(raw[i], exponentBits: 4, mantissaBits: 3, bias: 8),
            ElementType.Float8E5M2 => Float8E5M2(raw[i]),
            ElementType.Float8E5M2FNUZ => Float8Fnuz(raw[i], exponentBits: 5, mantissaBits: 2, bias: 16),
            ElementType.Float4E2M1 => Float4E2M1(Nibble(raw, i)),
            _ => ReadAsInt64(type, raw, index),
        };
    }

    /// <summary>Element <paramref name="index"/> of <paramref name="raw"/> as a long (floats truncated).</summary>
    public static long ReadAsInt64(ElementType type, ReadOnlySpan<byte> raw, long index)
    {
        int i = checked((int)index);
        return type switch
        {
            ElementType.Int64 => BinaryPrimitives.ReadInt64LittleEndian(raw[(i * 8)..]),
            ElementType.UInt64 => (long)BinaryPrimitives.ReadUInt64LittleEndian(raw[(i * 8)..]),
            ElementType.Int32 => BinaryPrimitives.ReadInt32LittleEndian(raw[(i * 4)..]),
            ElementType.UInt32 => BinaryPrimitives.ReadUInt32LittleEndian(raw[(i * 4)..]),
            ElementType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(raw[(i * 2)..]),
            ElementType.UInt16 => BinaryPrimitives.ReadUInt16LittleEndian(raw[(i * 2)..]),
            ElementType.Int8 => (sbyte)raw[i],
            ElementType.UInt8 => raw[i],
            ElementType.Bool => raw[i] != 0 ? 1 : 0,
            ElementType.UInt4 => Nibble(raw, i),
            // Sign-extend the 4-bit two's complement value.
            ElementType.Int4 => (Nibble(raw, i) ^ 8) - 8,
            ElementType.Float or ElementType.Double or ElementType.Float16 or ElementType.BFloat16
                or ElementType.Float8E4M3FN or ElementType.Float8E4M3FNUZ or ElementType.Float8E5M2
                or ElementType.Float8E5M2FNUZ or ElementType.Float4E2M1 => (long)ReadAsDouble(type, raw, index),
            _ => throw new InvalidOperationException($"element type {type.ShortName()} has no numeric view"),
        };
    }

    // Element i of a 4-bit type: even indices in the low nibble, odd in the high nibble.
    private static int Nibble(ReadOnlySpan<byte> raw, int i) => (raw[i / 2] >> (4 * (i & 1))) & 0xF;

    // E4M3FN: bias 7, no infinities; S.1111.111 is NaN, everything else finite.
    private static double Float8E4M3FN(byte b)
    {
        double sign = (b & 0x80) != 0 ? -1 : 1;
        int exp = (b >> 3) & 0xF, man = b & 7;
        if (exp == 0xF && man == 7)
            return double.NaN;
        return sign * (exp == 0 ? man / 8.0 * Math.Pow(2, -6) : (1 + man / 8.0) * Math.Pow(2, exp - 7));
    }

    // E5M2: IEEE-like, bias 15, exponent 31 holds infinities and NaNs.
    private static double Float8E5M2(byte b)
    {
        double sign = (b & 0x80) != 0 ? -1 : 1;
        int exp = (b >> 2) & 0x1F, man = b & 3;
        if (exp == 0x1F)
            return man == 0 ? sign * double.PositiveInfinity : double.NaN;
        return sign * (exp == 0 ? man / 4.0 * Math.Pow(2, -14) : (1 + man / 4.0) * Math.Pow(2, exp - 15));
    }

    // FNUZ kinds: no infinities, no negative zero; 0x80 is the only NaN.
    private static double Float8Fnuz(byte b, int exponentBits, int mantissaBits, int bias)
    {
        if (b == 0x80)
            return double.NaN;
        double sign = (b & 0x80) != 0 ? -1 : 1;
        int exp = (b >> mantissaBits) & ((1 << exponentBits) - 1), man = b & ((1 << mantissaBits) - 1);
        double frac = man / (double)(1 << mantissaBits);
        return sign * (exp == 0 ? frac * Math.Pow(2, 1 - bias) : (1 + frac) * Math.Pow(2, exp - bias));
    }

    // E2M1: bias 1, finite only: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
    private static double Float4E2M1(int nibble)
    {
        double sign = (nibble & 8) != 0 ? -1 : 1;
        int exp = (nibble >> 1) & 3, man = nibble & 1;
        return sign * (exp == 0 ? man * 0.5 : (1 + man / 2.0) * Math.Pow(2, exp - 1));
    }
}
