using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir.Tests;

/// <summary>Element types, storage forms and conversions of tensors.</summary>
public sealed class TensorTests
{
    private static Tensor Raw(ElementType type, params byte[] bytes) =>
        Tensor.FromProto(new TensorProto { DataType = (int)type, Dims = { type.IsPacked4Bit() ? bytes.Length * 2 : bytes.Length / (type.BitWidth() / 8) }, RawData = ByteString.CopyFrom(bytes) });

    [Fact]
    public void DecodesSmallFloatAndIntegerKinds()
    {
        Assert.Equal([1.0, -2.0, 65504.0], Raw(ElementType.Float16, 0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B).ToDoubleArray());
        Assert.Equal([1.0, -0.5], Raw(ElementType.BFloat16, 0x80, 0x3F, 0x00, 0xBF).ToDoubleArray());
        // E4M3FN: 0x38 = 1.0, 0x7E = 448 (largest), 0x7F = NaN, 0x01 = 2^-9 (smallest subnormal).
        var e4m3 = Raw(ElementType.Float8E4M3FN, 0x38, 0x7E, 0x7F, 0x01).ToDoubleArray();
        Assert.Equal(1.0, e4m3[0]);
        Assert.Equal(448.0, e4m3[1]);
        Assert.True(double.IsNaN(e4m3[2]));
        Assert.Equal(Math.Pow(2, -9), e4m3[3]);
        // E5M2: 0x3C = 1.0, 0x7C = +inf, 0x7B = 57344.
        Assert.Equal([1.0, double.PositiveInfinity, 57344.0], Raw(ElementType.Float8E5M2, 0x3C, 0x7C, 0x7B).ToDoubleArray());
        // FNUZ: 0x80 is NaN; E4M3FNUZ 0x40 = 1.0, E5M2FNUZ 0x40 = 1.0.
        Assert.True(double.IsNaN(Raw(ElementType.Float8E4M3FNUZ, 0x80).ToDoubleArray()[0]));
        Assert.Equal(1.0, Raw(ElementType.Float8E4M3FNUZ, 0x40).ToDoubleArray()[0]);
        Assert.Equal(1.0, Raw(ElementType.Float8E5M2FNUZ, 0x40).ToDoubleArray()[0]);
        // 4-bit kinds: first element in the low nibble.
        Assert.Equal([7L, -8L, -1L, 1L], Raw(ElementType.Int4, 0x87, 0x1F).ToInt64Array());
        Assert.Equal([15L, 0L], Raw(ElementType.UInt4, 0x0F).ToInt64Array());
        Assert.Equal([6.0, -0.5], Raw(ElementType.Float4E2M1, 0x97).ToDoubleArray());
    }

    [Fact]
    public void TypedFieldsAndRawDataAgree()
    {
        var typed = Tensor.FromProto(new TensorProto { DataType = (int)ElementType.Int16, Dims = { 3 }, Int32Data = { -1, 2, 300 } });
        Assert.Equal([-1L, 2L, 300L], typed.ToInt64Array());
        Assert.Equal(new byte[] { 0xFF, 0xFF, 2, 0, 44, 1 }, typed.ToRawBytes());
        Assert.False(typed.HasRawData);
        // Typed storage is written back as typed storage, bit for bit.
        Assert.Equal([-1, 2, 300], typed.ToProto().Int32Data);

        var f = Tensor.Create("f", [1.5f, float.NaN, -0f], 3);
        Assert.True(f.HasRawData);
        var bits = f.ToArray<int>();
        Assert.Equal(BitConverter.SingleToInt32Bits(-0f), bits[2]);
        Assert.Equal(ElementType.Float, f.ElementType);

        var s = Tensor.FromStrings("s", ["a", "héllo"]);
        Assert.Equal(["a", "héllo"], s.ToStringArray());
        Assert.Equal(-1, s.ByteLength);

        var u64 = Tensor.FromProto(new TensorProto { DataType = (int)ElementType.UInt32, Dims = { 2 }, Uint64Data = { 1, 4000000000 } });
        Assert.Equal([1L, 4000000000L], u64.ToInt64Array());
        var d = Tensor.FromProto(new TensorProto { DataType = (int)ElementType.Double, Dims = { 1 }, DoubleData = { 0.1 } });
        Assert.Equal([0.1], d.ToDoubleArray());
    }

    [Fact]
    public void ScalarsAndShapes()
    {
        var s = Tensor.Scalar("s", 2L);
        Assert.Empty(s.Dims);
        Assert.Equal(1, s.ElementCount);
        Assert.Equal(8, s.ByteLength);
        Assert.Throws<ArgumentException>(() => Tensor.Create("bad", [1f, 2f, 3f], 2, 2));
        Assert.Throws<ArgumentException>(() => Tensor.FromRawData("bad", ElementType.Float, [2], new byte[7]));
        Assert.Equal(3, ElementType.Int4.ByteCount(5));
    }
}
