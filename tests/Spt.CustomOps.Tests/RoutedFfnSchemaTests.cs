using Spt.CustomOps;
using Spt.Ir;

namespace Spt.CustomOps.Tests;

public class RoutedFfnSchemaTests
{
    private static TensorType F32(params object[] dims) =>
        new(ElementType.Float, [.. dims.Select(d => d is string s ? new Dim(s) : new Dim(Convert.ToInt64(d)))]);

    // X [B, S, 8], W1 [8, 16], W2 [16, 8], Wr [8, 4], LoRA r = 3 on fc1 and fc2.
    private static TensorType?[] ForwardInputs(bool swiglu = false) =>
    [
        F32("B", "S", 8), F32(8, 16), F32(16), F32(16, 8), null, F32(8, 4), F32(4), swiglu ? F32(8, 16) : null,
        F32(8, 3), F32(3, 16), F32(16, 3), F32(3, 8), null, null,
    ];

    [Fact]
    public void ForwardShapesFollowTheTokenCount()
    {
        var outputs = RoutedFfnOps.RoutedFfn.InferTypes(ForwardInputs());
        Assert.Equal("f32[B,S,8]", outputs[RoutedFfnOps.Y]!.Describe());
        Assert.Equal("f32[B*S,4]", outputs[RoutedFfnOps.P]!.Describe());
        Assert.Equal("i32[B*S,2]", outputs[RoutedFfnOps.Sel]!.Describe());
        Assert.Equal("f32[B*S*2,4]", outputs[RoutedFfnOps.U]!.Describe());
    }

    [Fact]
    public void SwiGluSavesBothPreActivations()
    {
        var outputs = RoutedFfnOps.RoutedFfn.InferTypes(
            ForwardInputs(swiglu: true), new Dictionary<string, object> { ["activation"] = "swiglu", ["blocks_per_token"] = 1L });
        Assert.Equal("f32[B*S,8]", outputs[RoutedFfnOps.U]!.Describe());
    }

    [Fact]
    public void GradOutputsExistOnlyWhereTheyApply()
    {
        TensorType?[] inputs =
            [F32("B", "S", 8), .. ForwardInputs(), F32("B*S", 4), new TensorType(ElementType.Int32, [new Dim("B*S"), new Dim(2)]), F32("B*S*2", 4)];
        var frozen = RoutedFfnOps.RoutedFfnGrad.InferTypes(inputs);
        Assert.Equal("f32[B,S,8]", frozen[RoutedFfnOps.DX]!.Describe());
        Assert.Equal("f32[8,4]", frozen[RoutedFfnOps.DWr]!.Describe());
        Assert.Equal("f32[3,16]", frozen[RoutedFfnOps.DB1Lora]!.Describe());
        Assert.Null(frozen[RoutedFfnOps.DW1]);
        Assert.Null(frozen[RoutedFfnOps.DA3]);
        var full = RoutedFfnOps.RoutedFfnGrad.InferTypes(inputs, new Dictionary<string, object> { ["frozen_base"] = 0L });
        Assert.Equal("f32[8,16]", full[RoutedFfnOps.DW1]!.Describe());
        Assert.Equal("f32[16]", full[RoutedFfnOps.DB1]!.Describe());
        Assert.Null(full[RoutedFfnOps.DB2]);  // no b2 input
        Assert.Null(full[RoutedFfnOps.DW3]);  // not swiglu
    }

    [Fact]
    public void BadContractsNameTheOpAndInput()
    {
        var inputs = ForwardInputs();
        inputs[RoutedFfnOps.LoraB2] = null;
        var e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(inputs));
        Assert.Equal("spt::RoutedFFN: LoRA inputs 'A2' and 'B2' must be given together (got only 'A2')", e.Message);

        inputs = ForwardInputs();
        inputs[RoutedFfnOps.W2] = F32(16, 9);
        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(inputs));
        Assert.Contains("input 'W2' must have shape [d_ff, d]", e.Message);

        inputs = ForwardInputs();
        inputs[RoutedFfnOps.W1] = F32(8, 18);
        inputs[RoutedFfnOps.B1] = null;
        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(inputs));
        Assert.Contains("d_ff (18, from W1) must be divisible by attribute n_blocks (4)", e.Message);

        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(
            ForwardInputs(), new Dictionary<string, object> { ["blocks_per_token"] = 5L }));
        Assert.Contains("'blocks_per_token' = 5", e.Message);

        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(
            ForwardInputs(), new Dictionary<string, object> { ["activation"] = "swiglu" }));
        Assert.Contains("input 'W3'", e.Message);

        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(
            ForwardInputs(), new Dictionary<string, object> { ["gate"] = "sigmoid" }));
        Assert.Contains("attribute 'gate'", e.Message);

        inputs = ForwardInputs();
        inputs[RoutedFfnOps.X] = new TensorType(ElementType.Float16, [new Dim(2), new Dim(8)]);
        e = Assert.Throws<OpContractException>(() => RoutedFfnOps.RoutedFfn.InferTypes(inputs));
        Assert.Contains("input 0 'X' has element type", e.Message);
    }
}
