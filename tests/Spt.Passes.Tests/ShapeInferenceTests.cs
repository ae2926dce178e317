using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Canonicalization;

namespace Spt.Passes.Tests;

/// <summary>The IR shape inference on what exporters write: each case builds a small graph and checks the dims.</summary>
public sealed class ShapeInferenceTests
{
    private static string Text(ShapeAnalysis a, Value v) => a.ShapeOf(v) is { } s ? "[" + string.Join(",", s.Select(d => d.Value?.ToString() ?? (ShapeAnalysis.IsFresh(d) ? "?" : d.Param))) + "]" : "null";

    [Fact]
    public void ConvAndConvTransposeFollowStridesPadsAndDilations()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", 3, 16, 16);
        var seq = b.Input("s", ElementType.Float, "B", 8, "S");
        var patches = b.Op("Conv", [x, b.Initializer("w", new float[8 * 3 * 4 * 4], 8, 3, 4, 4)], ("strides", new long[] { 4, 4 }));
        var dilated = b.Op("Conv", [x, b.Initializer("w2", new float[2 * 3 * 3 * 3], 2, 3, 3, 3)], ("pads", new long[] { 1, 0, 1, 2 }), ("dilations", new long[] { 2, 1 }));
        var same = b.Op("Conv", [seq, b.Initializer("w3", new float[8 * 8 * 3], 8, 8, 3)], ("pads", new long[] { 1, 1 }));
        var up = b.Op("ConvTranspose", [patches, b.Initializer("wt", new float[8 * 5 * 2 * 2], 8, 5, 2, 2)], ("strides", new long[] { 2, 2 }));
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[B,8,4,4]", Text(a, patches));
        Assert.Equal("[B,2,14,16]", Text(a, dilated));
        Assert.Equal("[B,8,S]", Text(a, same)); // padding 1 with a kernel of 3 keeps the symbolic length
        Assert.Equal("[B,5,8,8]", Text(a, up));
    }

    [Fact]
    public void AMaskBufferSlicedToTheSequenceBroadcastsToTheSequence()
    {
        // torch's causal-mask buffer sliced to the sequence length, mask[:, :, :S, :S], added to [B, H, S, S] scores:
        // the slice is min(S, 64), which only broadcasts against S when it is S (or S is 1), so the sum is [B, H, S, S].
        // Against another symbol nothing is known.
        var b = new GraphBuilder(17);
        var ids = b.Input("ids", ElementType.Int64, "B", "S");
        var scores = b.Input("scores", ElementType.Float, "B", 4, "S", "S");
        var other = b.Input("other", ElementType.Float, "B", 4, "T", "T");
        var mask = b.Initializer("mask", new float[64 * 64], 1, 1, 64, 64);
        var len = b.Op("Unsqueeze", b.Op("Gather", b.Op("Shape", ids), b.Initializer(Tensor.Scalar("one", 1L))), b.Initializer("ax", [0L], 1));
        var ends = b.Op("Concat", [len, len], ("axis", 0L));
        var sliced = b.Op("Slice", mask, b.Initializer("starts", [0L, 0L], 2), ends, b.Initializer("axes", [2L, 3L], 2));
        var masked = b.Op("Add", scores, sliced);
        var unrelated = b.Op("Add", other, sliced);
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Matches(@"^\[1,1,\?\d*,\?\d*\]$", Text(a, sliced));
        Assert.Equal("[B,4,S,S]", Text(a, masked));
        Assert.Matches(@"^\[B,4,\?\d*,\?\d*\]$", Text(a, unrelated));
    }

    [Fact]
    public void ExpandWithMinusOneAsTorchWritesIt()
    {
        // cls.expand(x.shape[0], -1, -1): shape = Concat(Shape(x)[0], -1, -1); Where(Equal(shape, -1), 1, shape).
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", 16, 32);
        var cls = b.Initializer("cls", new float[32], 1, 1, 32);
        var batch = b.Op("Unsqueeze", b.Op("Gather", b.Op("Shape", x), b.Initializer(Tensor.Scalar("zero", 0L))), b.Initializer("ax", [0L], 1));
        var shape = b.Op("Concat", [batch, b.Initializer("m1", [-1L], 1), b.Initializer("m2", [-1L], 1)], ("axis", 0L));
        var ones = b.Op("ConstantOfShape", [b.Op("Shape", shape)], ("value", Tensor.Create("value", [1L], 1)));
        var resolved = b.Op("Where", b.Op("Equal", shape, b.Initializer(Tensor.Scalar("neg", -1L))), ones, shape);
        var y = b.Op("Expand", cls, resolved);
        var joined = b.Op("Concat", [y, x], ("axis", 1L));
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[B,1,32]", Text(a, y));
        Assert.Equal("[B,17,32]", Text(a, joined));
    }

    [Fact]
    public void ReshapeWithZeroAndMinusOne()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", "S", 32);
        var heads = b.Op("Reshape", x, b.Initializer("t", [0L, 0, 4, -1], 4));
        var merged = b.Op("Reshape", heads, b.Initializer("t2", [0L, 0, -1], 3));
        var flat = b.Op("Reshape", x, b.Initializer("t3", [-1L, 32], 2));
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[B,S,4,8]", Text(a, heads));
        Assert.Equal("[B,S,32]", Text(a, merged));
        Assert.Equal(2, a.RankOf(flat));
        Assert.Equal(32, a.ShapeOf(flat)![1].Value);
    }

    [Fact]
    public void IfWithAConstantConditionTakesItsBranch()
    {
        // torch's Squeeze(dim) export of a dim it cannot prove is 1: If(Equal(Shape(x)[1], 1), Squeeze, Identity).
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", 1, 8);
        var dim = b.Op("Gather", b.Op("Shape", x), b.Initializer(Tensor.Scalar("one", 1L)));
        var cond = b.Op("Equal", dim, b.Initializer(Tensor.Scalar("c1", 1L)));
        var then = b.Subgraph("then");
        then.Output(then.Op("Squeeze", x, then.Initializer("axes", [1L], 1)));
        var els = b.Subgraph("else");
        els.Output(els.Op("Identity", x));
        var y = b.Op("If", [cond], ("then_branch", then.Graph), ("else_branch", els.Graph));
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[B,8]", Text(a, y));
    }

    [Fact]
    public void RangeOverASymbolicLengthAndSlicesOfShapes()
    {
        var b = new GraphBuilder(17);
        var ids = b.Input("ids", ElementType.Int64, "B", "S");
        var s = b.Op("Gather", b.Op("Shape", ids), b.Initializer(Tensor.Scalar("i1", 1L)));
        var positions = b.Op("Range", b.Initializer(Tensor.Scalar("start", 0L)), s, b.Initializer(Tensor.Scalar("delta", 1L)));
        var tail = b.Op("Slice", b.Op("Shape", ids), b.Initializer("st", [1L], 1), b.Initializer("en", [2L], 1));
        var table = b.Initializer("table", new float[32 * 8], 32, 8);
        var rows = b.Op("Gather", table, positions);
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[S]", Text(a, positions));
        Assert.Equal([new Dim("S")], a.ElementsOf(tail)!);
        Assert.Equal("[S,8]", Text(a, rows));
    }

    [Fact]
    public void SptOpsFollowTheirSchemas()
    {
        var b = new GraphBuilder(17).Opset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        var q = b.Input("q", ElementType.Float, "B", 4, 32, 8);
        var codebook = b.Initializer("cb", new float[2 * 16 * 4], 2, 16, 4);
        var codes = b.DomainOp(CustomOpLibrary.Domain, AttentionOps.PQEncode.Name, [q, codebook]);
        var indices = b.DomainOp(CustomOpLibrary.Domain, AttentionOps.PQTopK.Name, [codes, codes], (AttentionOps.KeysRatioAttr, 0.25f));
        using var model = b.Build();
        var a = new ShapeAnalysis(model.Graph);
        Assert.Equal("[B,4,32,2]", Text(a, codes));
        Assert.Equal("[B,4,32,8]", Text(a, indices)); // 0.25 of 32 keys
        Assert.Equal(ElementType.Int32, ShapeAnalysis.ElementTypeOf(indices));
    }

    [Fact]
    public void ValuesMadeAfterTheFirstQuestionAreAnalysedWhenAsked()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", 8);
        var y = b.Op("Relu", x);
        using var model = b.Build();
        var shapes = new StaticShapes();
        Assert.Equal([null, 8L], shapes.ShapeOf(y)!);
        var z = model.Graph.Edit().AddNode("MatMul", [y, model.Graph.Edit().AddInitializer(Tensor.Create("w", new float[8 * 3], 8, 3))]).Outputs[0];
        Assert.Equal([null, 3L], shapes.ShapeOf(z)!);
        Assert.Equal(3L, ConstantValue.Ints(model.Graph.Edit().AddInitializer(Tensor.Create("k", new[] { 3L }, 1)))![0]);
    }
}
