using Spt.Ir;
using Spt.Passes.Canonicalization;

namespace Spt.Passes.Tests;

public class CanonicalizationTests
{
    private static float[] Data(int n, int seed = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
    }

    private static Model Run(Model model, params IPass[] passes)
    {
        var p = new Pipeline("test");
        foreach (var pass in passes)
            p.Add(pass);
        p.Add(new DeadCodeElimination());
        return TestSupport.AssertSameOutputs(model, m => p.Run(m, new PassContext { VerifyAfterEachPass = true }), seq: 5);
    }

    // The exporter's head split: Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 4, Shape(x)[2] / 4)).
    private static Model HeadSplit(long opset, long allowZero = 0)
    {
        var b = new GraphBuilder(opset);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 32);
        var shape = b.Op("Shape", x);
        Value Dim(long i) => b.Op("Gather", [shape, b.Constant(Tensor.Scalar("i", i))], ("axis", 0L));
        Value Unsq(Value v) => opset >= 13
            ? b.Op("Unsqueeze", v, b.Constant(Tensor.Create("a", new long[] { 0 }, 1)))
            : b.Op("Unsqueeze", [v], ("axes", new long[] { 0 }));
        var e = b.Op("Cast", [b.Op("Div", Dim(2), b.Constant(Tensor.Scalar("h", 4L)))], ("to", 7L));
        var target = b.Op("Concat", [Unsq(Dim(0)), Unsq(Dim(1)), b.Constant(Tensor.Create("four", new long[] { 4 }, 1)), Unsq(e)], ("axis", 0L));
        var y = opset >= 14 ? b.Op("Reshape", [b.Op("Relu", x), target], ("allowzero", allowZero)) : b.Op("Reshape", b.Op("Relu", x), target);
        b.Output(b.Op("Transpose", [y], ("perm", new long[] { 0, 2, 1, 3 })), "y");
        return b.Build();
    }

    [Theory]
    [InlineData(11L)]
    [InlineData(14L)]
    public void HeadSplitShapeSubgraphFoldsToConstantTarget(long opset)
    {
        var result = Run(HeadSplit(opset), new ConstantFolding());
        var reshape = Assert.Single(result.Graph.Nodes, n => n.OpType == "Reshape");
        Assert.Equal([0L, 0L, 4L, 8L], reshape.Inputs[1]!.Initializer!.ToInt64Array());
        Assert.Equal(["Relu", "Reshape", "Transpose"], result.Graph.Nodes.Select(n => n.OpType));
    }

    [Fact]
    public void AllowZeroReshapeGetsMinusOneNotZero()
    {
        // With allowzero = 1 a literal 0 means size 0, so copies cannot be written as 0; one symbol may become -1.
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, "batch", 6);
        var dim0 = b.Op("Gather", [b.Op("Shape", x), b.Constant(Tensor.Scalar("i", 0L))], ("axis", 0L));
        var target = b.Op("Concat", [b.Op("Unsqueeze", dim0, b.Constant(Tensor.Create("a", new long[] { 0 }, 1))), b.Constant(Tensor.Create("c", new long[] { 2, 3 }, 2))], ("axis", 0L));
        b.Output(b.Op("Reshape", [x, target], ("allowzero", 1L)), "y");
        var result = Run(b.Build(), new ConstantFolding());
        var reshape = Assert.Single(result.Graph.Nodes, n => n.OpType == "Reshape");
        Assert.Equal([-1L, 2L, 3L], reshape.Inputs[1]!.Initializer!.ToInt64Array());
    }

    [Fact]
    public void TwoUnrelatedSymbolsStayComputed()
    {
        // [batch*seq, 8] -> [seq, batch, 8]: two sizes that are not copies of the input's; cannot be constant.
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 8);
        var flat = b.Op("Reshape", x, b.Initializer("flat", new long[] { -1, 8 }, 2));
        var s = b.Op("Shape", x);
        Value Pick(long i) => b.Op("Slice", s, b.Initializer(Tensor.Create("s" + i, new long[] { i }, 1)), b.Initializer(Tensor.Create("e" + i, new long[] { i + 1 }, 1)));
        var target = b.Op("Concat", [Pick(1), Pick(0), b.Initializer("eight", new long[] { 8 }, 1)], ("axis", 0L));
        b.Output(b.Op("Reshape", flat, target), "y");
        var context = new PassContext();
        var model = b.Build();
        new ConstantFolding().Run(model, context);
        Assert.Equal(2, model.Graph.Nodes.Count(n => n.OpType == "Reshape" && (n.Inputs[1]!.Producer?.OpType == "Concat" || n.Inputs[1]!.Name == "flat")));
        Assert.Contains(context.Diagnostics, d => d.Message.Contains("2 symbolic dimensions"));
    }

    // Linear on 3-D input as torch exports it: MatMul(x, Transpose(W)); folding keeps the parameter's name.
    [Fact]
    public void FoldedTransposedWeightKeepsTheParameterName()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", 4);
        var w = b.Initializer("proj.weight", Data(12), 3, 4);
        b.Output(b.Op("MatMul", x, b.Op("Transpose", [w], ("perm", new long[] { 1, 0 }))), "y");
        var result = Run(b.Build(), new ConstantFolding());

        var weight = Assert.Single(result.Graph.Nodes).Inputs[1]!;
        Assert.Equal("proj.weight_T", weight.Name);
        Assert.Equal([4L, 3L], weight.Initializer!.Dims);
        Assert.Contains(result.Metadata, kv => kv.Key == TransposedWeightFolding.MetadataKey && kv.Value == "proj.weight_T=proj.weight");
    }

    [Fact]
    public void FoldsAllConstantArithmeticKeepingDtype()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 3);
        var c = b.Op("Sqrt", b.Op("Add", b.Constant(Tensor.Scalar("a", 7f)), b.Constant(Tensor.Scalar("b", 9f)))); // 4
        var r = b.Op("Range", b.Constant(Tensor.Scalar("s", 0L)), b.Constant(Tensor.Scalar("l", 3L)), b.Constant(Tensor.Scalar("d", 1L)));
        var mask = b.Op("Cast", [b.Op("Equal", r, b.Constant(Tensor.Scalar("one", 1L)))], ("to", 1L)); // [0, 1, 0]
        b.Output(b.Op("Add", b.Op("Mul", x, c), mask), "y");
        var result = Run(b.Build(), new ConstantFolding());
        Assert.Equal(["Mul", "Add"], result.Graph.Nodes.Select(n => n.OpType));
        var folded = result.Graph.Nodes.First().Inputs[1]!.Initializer!;
        Assert.Equal(ElementType.Float, folded.ElementType);
        Assert.Equal(4f, folded.ToFloatArray().Single());
        Assert.Equal([0f, 1f, 0f], result.Graph.Nodes.Last().Inputs[1]!.Initializer!.ToFloatArray());
    }

    [Fact]
    public void SizeCapLeavesLargeResultsAlone()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 64, 64);
        var big = b.Op("ConstantOfShape", [b.Initializer("shape", new long[] { 64, 64 }, 2)], ("value", Tensor.Create("v", new[] { 1f }, 1)));
        b.Output(b.Op("Add", x, big), "y");
        var model = b.Build();
        Assert.False(new ConstantFolding(maxElements: 1000).Run(model, new PassContext()));
        Assert.True(new ConstantFolding(maxElements: 5000).Run(model, new PassContext()));
    }

    [Fact]
    public void NoOpsAreRemovedButTrainingDropoutStays()
    {
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, "batch", 8);
        var y = b.Op("Identity", x);
        y = b.Op("Cast", [y], ("to", 1L));                                          // float -> float
        y = b.Op("Reshape", y, b.Initializer("same", new long[] { 0, 8 }, 2));       // same shape
        y = b.Op("Mul", y, b.Initializer(Tensor.Scalar("one", 1f)));                  // * 1
        y = b.Op("Add", b.Initializer(Tensor.Scalar("zero", 0f)), y);                  // 0 +
        y = b.Op("Transpose", [y], ("perm", new long[] { 0, 1 }));
        y = b.Op("Dropout", y, b.Initializer(Tensor.Scalar("ratio", 0.1f)));          // inference: no training_mode
        var kept = b.Op("Mul", y, b.Initializer(Tensor.Create("twos", new[] { 1f, 1f }, 2, 1))); // broadcasts [b,8] to [2,8]? no: [2,1] -> kept
        b.Output(b.Op("Relu", kept), "y");
        var result = Run(b.Build(), new NoOpElimination());
        Assert.Equal(["Mul", "Relu"], result.Graph.Nodes.Select(n => n.OpType));

        var t = new GraphBuilder(14);
        var xt = t.Input("x", ElementType.Float, 2, 8);
        var dropped = t.Op("Dropout", xt, t.Initializer(Tensor.Scalar("ratio", 0.1f)), t.Initializer(Tensor.Scalar("training", true)));
        t.Output(t.Op("Relu", dropped), "y");
        var training = t.Build();
        Assert.False(new NoOpElimination().Run(training, new PassContext()));
        Assert.Equal(1, TestSupport.Count(training, "Dropout"));
    }

    [Theory]
    [InlineData(0L, 1L, 1f, 1f)]
    [InlineData(1L, 0L, 0.5f, 2f)]
    [InlineData(0L, 1L, 1f, 0f)]
    public void GemmBecomesMatMulAndAdd(long transA, long transB, float alpha, float beta)
    {
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, transA != 0 ? 8 : 3, transA != 0 ? 3 : 8);
        var w = b.Initializer("w", Data(32), transB != 0 ? 4 : 8, transB != 0 ? 8 : 4);
        var bias = b.Initializer("bias", Data(4, 2), 4);
        b.Output(b.Op("Gemm", [x, w, bias], ("transA", transA), ("transB", transB), ("alpha", alpha), ("beta", beta)), "y");
        var result = Run(b.Build(), new GemmToMatMul());
        Assert.Equal(0, TestSupport.Count(result, "Gemm"));
        Assert.Equal(1, TestSupport.Count(result, "MatMul"));
        Assert.Equal(beta != 0 ? 1 : 0, TestSupport.Count(result, "Add"));
        Assert.Equal("y", result.Graph.Outputs[0].Name);
        if (transB != 0)
        {
            Assert.NotNull(result.Graph.FindValue("w_T"));
            Assert.Null(result.Graph.FindValue("w")); // no other user: removed
            Assert.Contains(result.Metadata, kv => kv.Key == TransposedWeightFolding.MetadataKey && kv.Value == "w_T=w");
        }
    }

    [Fact]
    public void TransposedWeightKeepsOriginalWhileOthersReadIt()
    {
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, 2, 3, 8);
        var w = b.Initializer("proj.weight", Data(32), 4, 8);
        var y = b.Op("MatMul", x, b.Op("Transpose", [w], ("perm", new long[] { 1, 0 })));
        var other = b.Op("ReduceSum", [w], ("keepdims", 0L));
        b.Output(y, "y").Output(other, "s");
        var result = Run(b.Build(), new TransposedWeightFolding());
        Assert.Equal(["MatMul", "ReduceSum"], result.Graph.Nodes.Select(n => n.OpType));
        Assert.Equal([8L, 4L], result.Graph.FindValue("proj.weight_T")!.Initializer!.Dims);
        Assert.NotNull(result.Graph.FindValue("proj.weight"));
    }

    [Fact]
    public void CseMergesDuplicatesButNotDropout()
    {
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, 2, 8);
        var a1 = b.Op("Relu", x);
        var a2 = b.Op("Relu", x);
        var s1 = b.Op("Softmax", [a1], ("axis", -1L));
        var s2 = b.Op("Softmax", [a2], ("axis", 0L)); // different attribute: kept
        var training = b.Initializer(Tensor.Scalar("t", true));
        var ratio = b.Initializer(Tensor.Scalar("r", 0.5f));
        var d1 = b.Op("Dropout", s1, ratio, training);
        var d2 = b.Op("Dropout", s1, ratio, training);
        b.Output(b.Op("Add", s1, s2), "y").Output(d1, "d1").Output(d2, "d2");
        var model = b.Build();
        Assert.True(new CommonSubexpressionElimination().Run(model, new PassContext()));
        new DeadCodeElimination().Run(model, new PassContext());
        Assert.Equal(1, TestSupport.Count(model, "Relu"));
        Assert.Equal(2, TestSupport.Count(model, "Softmax"));
        Assert.Equal(2, TestSupport.Count(model, "Dropout"));
    }

    [Fact]
    public void DeadCodeGoesButGraphOutputsAndTheirProducersStay()
    {
        var b = new GraphBuilder(14);
        var x = b.Input("x", ElementType.Float, 2, 8);
        b.Op("Relu", b.Op("Neg", x));                     // dead chain
        b.Initializer("unused", Data(4), 4);
        b.Output(b.Op("Sigmoid", x), "y");
        var model = b.Build();
        Assert.True(new DeadCodeElimination().Run(model, new PassContext()));
        Assert.Equal(["Sigmoid"], model.Graph.Nodes.Select(n => n.OpType));
        Assert.Empty(model.Graph.Initializers);
        Assert.False(new DeadCodeElimination().Run(model, new PassContext()));
    }
}
