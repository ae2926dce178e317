using Spt.Ir;
using Spt.Passes.Autodiff;
using Spt.Passes.Tests.Training;

namespace Spt.Passes.Tests.Autodiff;

/// <summary>What the backward builder adds (and does not add), and how it fails.</summary>
public sealed class BackwardStructureTests
{
    // x -> MatMul(w_frozen) -> Relu -> MatMul(w_train) -> ReduceSum = loss
    private static (Model Model, Value Loss, Value Frozen, Value Trained) TwoLayer()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "B", 4);
        var frozen = b.Initializer("w_frozen", GradientCheck.Random(16, -1, 1, 1), 4, 4);
        var trained = b.Initializer("w_train", GradientCheck.Random(8, -1, 1, 2), 4, 2);
        var h = b.Op("Relu", b.Op("MatMul", x, frozen));
        var loss = b.Op("ReduceSum", [b.Op("MatMul", h, trained)], ("keepdims", 0L));
        b.Output(loss, "loss");
        return (b.Build(), loss, frozen, trained);
    }

    [Fact]
    public void PathsThatLeadOnlyToFrozenParametersGetNoGradientWork()
    {
        var (model, loss, frozen, trained) = TwoLayer();
        var result = new BackwardBuilder().Build(model.Graph, loss, [trained]);
        Assert.NotNull(result.Gradients[trained]);
        // Only the last MatMul and the ReduceSum are differentiated; nothing flows into Relu or the first MatMul.
        Assert.Equal(2, result.DifferentiatedNodes);
        Assert.DoesNotContain(model.Graph.Nodes, n => n.Name.StartsWith("grad/Relu", StringComparison.Ordinal) || n.Name.StartsWith("grad/MatMul_0", StringComparison.Ordinal));
        Assert.All(model.Graph.Nodes.Skip(4), n => Assert.StartsWith("grad/", n.Name));
        _ = frozen;
    }

    [Fact]
    public void ValuesWithSeveralConsumersGetTheSumOfTheirGradients()
    {
        var b = new GraphBuilder(17);
        var w = b.Input("w", ElementType.Float, 3);
        var loss = b.Op("ReduceSum", [b.Op("Add", b.Op("Mul", w, w), b.Op("Exp", w))], ("keepdims", 0L));
        b.Output(loss, "loss");
        var model = b.Build();
        var result = new BackwardBuilder().Build(model.Graph, loss, [w]);
        var g = result.Gradients[w]!;
        Assert.Equal("Sum", g.Producer!.OpType);
        Assert.Equal(3, g.Producer.Inputs.Count); // w*w contributes twice, exp once
        model.Graph.Edit().AddOutput(g);
        using var run = new OrtRunner(model);
        var outs = run.Run(new Dictionary<string, Tensor> { ["w"] = Tensor.Create("w", new[] { 0.5f, -1f, 2f }, 3) });
        var d = outs[g.Name].ToFloatArray();
        float[] expected = [2 * 0.5f + MathF.Exp(0.5f), -2f + MathF.Exp(-1f), 4f + MathF.Exp(2f)];
        for (int i = 0; i < 3; i++)
            Assert.Equal(expected[i], d[i], 4);
    }

    // y = x + t with symbolic dims, loss = sum(y * x): dL/dx = x + y, dL/dt = the sum of x over t's broadcast axes.
    private static (Model Model, Value X, Value T, BackwardResult Result) BroadcastAdd(object[] xDims, object[] tDims)
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, xDims);
        var t = b.Input("t", ElementType.Float, tDims);
        var y = b.Op("Add", x, t);
        var loss = b.Op("ReduceSum", [b.Op("Mul", y, x)], ("keepdims", 0L));
        b.Output(loss, "loss");
        var model = b.Build();
        return (model, x, t, new BackwardBuilder().Build(model.Graph, loss, [x, t]));
    }

    private static int GradNodes(Model model, string opType) =>
        model.Graph.Nodes.Count(n => n.OpType == opType && n.Name.StartsWith("grad/Add", StringComparison.Ordinal));

    [Fact]
    public void BroadcastGradientsDecidedFromSharedSymbolsNeedNoRunTimeShapes()
    {
        // x [B, H, S, S] + t [1, 1, S, S] (a mask-like term) and + t [S] (a bias-like term): the axes to sum are known
        // from the symbols, so the Add's rule emits no Shape/NonZero and sums t's gradient statically.
        foreach (object[] tDims in new[] { new object[] { 1L, 1L, "S", "S" }, new object[] { "S" } })
        {
            var (model, x, t, result) = BroadcastAdd(["B", "H", "S", "S"], tDims);
            Assert.Equal(0, GradNodes(model, "NonZero"));
            Assert.Equal(0, GradNodes(model, "Shape"));
            Assert.Equal(1, GradNodes(model, "ReduceSum"));  // one static sum: axes 0, 1 (kept) or the three leading axes

            var gx = result.Gradients[x]!;
            var gt = result.Gradients[t]!;
            model.Graph.Edit().AddOutput(gx);
            model.Graph.Edit().AddOutput(gt);
            const int batch = 2, heads = 3, seq = 4;
            var xv = GradientCheck.Random(batch * heads * seq * seq, -1, 1, 5);
            long[] tShape = tDims.Length == 4 ? [1, 1, seq, seq] : [seq];
            var tv = GradientCheck.Random((int)tShape.Aggregate(1L, (a, c) => a * c), -1, 1, 6);
            using var run = new OrtRunner(model);
            var outs = run.Run(new Dictionary<string, Tensor>
            {
                ["x"] = Tensor.Create("x", xv, batch, heads, seq, seq),
                ["t"] = Tensor.Create("t", tv, tShape),
            });
            var dx = outs[gx.Name].ToFloatArray();
            var dt = outs[gt.Name].ToFloatArray();
            var want = new double[tv.Length];
            for (int e = 0; e < xv.Length; e++)
            {
                int ti = tDims.Length == 4 ? e % (seq * seq) : e % seq;
                Assert.Equal(2 * xv[e] + tv[ti], dx[e], 4);
                want[ti] += xv[e];
            }
            for (int i = 0; i < tv.Length; i++)
                Assert.Equal(want[i], dt[i], 4);
        }
    }

    [Fact]
    public void BroadcastGradientsOfUnrelatedSymbolsAreSummedAtRunTime()
    {
        // t [1, 1, P, Q]: nothing says P = S, so the axes are found at run time; with P = Q = 1 they are summed.
        var (model, _, t, result) = BroadcastAdd(["B", "H", "S", "S"], [1L, 1L, "P", "Q"]);
        Assert.True(GradNodes(model, "NonZero") > 0);
        var gt = result.Gradients[t]!;
        model.Graph.Edit().AddOutput(gt);
        var xv = GradientCheck.Random(2 * 2 * 3 * 3, -1, 1, 7);
        using var run = new OrtRunner(model);
        var outs = run.Run(new Dictionary<string, Tensor>
        {
            ["x"] = Tensor.Create("x", xv, 2, 2, 3, 3),
            ["t"] = Tensor.Create("t", new[] { 0.5f }, 1, 1, 1, 1),
        });
        Assert.Equal(xv.Sum(v => (double)v), outs[gt.Name].ToFloatArray().Single(), 3);
    }

    [Fact]
    public void NamesAreDeterministic()
    {
        string Dump()
        {
            var (model, loss, _, trained) = TwoLayer();
            new BackwardBuilder().Build(model.Graph, loss, [trained]);
            return string.Join("\n", model.Graph.Nodes.Select(n => $"{n.Name}: {n.OpType}({string.Join(",", n.Inputs.Select(v => v?.Name))})"));
        }
        Assert.Equal(Dump(), Dump());
    }

    [Fact]
    public void AnOpWithoutARuleOnATrainablePathIsAnErrorNamingIt()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 3);
        var w = b.Initializer("w", GradientCheck.Random(6, -1, 1, 3), 2, 3);
        var y = b.Node("HardSwish", [b.Op("Mul", x, w)], 1, [], name: "act").Outputs[0];
        var loss = b.Op("ReduceSum", [y], ("keepdims", 0L));
        b.Output(loss, "loss");
        var model = b.Build();
        int before = model.Graph.Nodes.Count;
        var ex = Assert.Throws<OnnxModelException>(() => new BackwardBuilder().Build(model.Graph, loss, [w]));
        Assert.Contains("'act'", ex.Message);
        Assert.Contains("HardSwish", ex.Message);
        Assert.Contains("opset 17", ex.Message);
        Assert.Equal(before, model.Graph.Nodes.Count); // nothing was added
        // The same op off the trainable path is fine.
        var ok = new BackwardBuilder().Build(model.Graph, loss, []);
        Assert.Empty(ok.Gradients);
    }

    [Fact]
    public void NoGradientOpsStopTheGradient()
    {
        var b = new GraphBuilder(17);
        var w = b.Input("w", ElementType.Float, 4);
        // ArgMax(w) picks a position: the loss gathers w there, so only the Gather path carries a gradient.
        var pos = b.Op("ArgMax", [w], ("keepdims", 0L));
        var loss = b.Op("Gather", w, pos);
        b.Output(loss, "loss");
        var model = b.Build();
        var result = new BackwardBuilder().Build(model.Graph, loss, [w]);
        Assert.DoesNotContain(model.Graph.Nodes, n => n.Name.StartsWith("grad/ArgMax", StringComparison.Ordinal));
        model.Graph.Edit().AddOutput(result.Gradients[w]!);
        using var run = new OrtRunner(model);
        var d = run.Run(new Dictionary<string, Tensor> { ["w"] = Tensor.Create("w", new[] { 0.1f, 3f, -2f, 1f }, 4) })[result.Gradients[w]!.Name].ToFloatArray();
        Assert.Equal([0f, 1f, 0f, 0f], d);
    }

    [Fact]
    public void TrainingModeDropoutReusesItsMask()
    {
        var b = new GraphBuilder(17);
        var w = b.Input("w", ElementType.Float, 64);
        var outs = b.Ops("Dropout", [w, b.Initializer(Tensor.Scalar("ratio", 0.25f)), b.Initializer(Tensor.Scalar("training", true))], 2);
        var loss = b.Op("ReduceSum", [outs[0]], ("keepdims", 0L));
        b.Output(loss, "loss");
        b.Output(outs[1], "mask");
        var model = b.Build();
        var result = new BackwardBuilder().Build(model.Graph, loss, [w]);
        model.Graph.Edit().AddOutput(result.Gradients[w]!);
        using var run = new OrtRunner(model);
        var o = run.Run(new Dictionary<string, Tensor> { ["w"] = Tensor.Create("w", GradientCheck.Random(64, -1, 1, 4), 64) });
        var mask = o["mask"].ToArray<byte>().Select(v => v != 0).ToArray();
        var d = o[result.Gradients[w]!.Name].ToFloatArray();
        Assert.Contains(false, mask);
        for (int i = 0; i < 64; i++)
            Assert.Equal(mask[i] ? 1f / 0.75f : 0f, d[i], 5);
    }
}
