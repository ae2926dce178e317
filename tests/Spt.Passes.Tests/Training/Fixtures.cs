using Spt.Ir;
using Spt.Ir.Onnx;

namespace Spt.Passes.Tests.Training;

/// <summary>The committed fixture models and training oracles (tests/fixtures).</summary>
internal static class Fixtures
{
    public static readonly string[] OracleStems =
        ["mha_op17", "encoder_layer_relu_op17", "encoder_layer_gelu_op17", "bert_mask_op17", "gpt2_op17", "opt_op17", "llama_op17"];

    public static string Root => Spt.Passes.Tests.Fixtures.Root;

    public static Model LoadModel(string stem) => Model.Load(Path.Combine(Root, "models", stem + ".onnx"));

    public static string OracleDir(string stem) => Path.Combine(Root, "oracle", stem);

    public static Tensor ReadTensor(string path) => Tensor.FromProto(TensorProto.Parser.ParseFrom(File.ReadAllBytes(path)));

    /// <summary>||a - b|| / max(||b||, normFloor) and max |a - b| / (|b| + elementFloor), over all elements.</summary>
    public static (double Relative, double ElementWise) Compare(float[] actual, float[] expected, double normFloor, double elementFloor)
    {
        Assert.Equal(expected.Length, actual.Length);
        double diff = 0, norm = 0, worst = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = actual[i] - (double)expected[i];
            diff += d * d;
            norm += (double)expected[i] * expected[i];
            worst = Math.Max(worst, Math.Abs(d) / (Math.Abs(expected[i]) + elementFloor));
        }
        return (Math.Sqrt(diff) / Math.Max(Math.Max(Math.Sqrt(norm), normFloor), 1e-30), worst);
    }
}
