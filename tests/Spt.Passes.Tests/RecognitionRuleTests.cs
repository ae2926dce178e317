using Spt.Ir;

namespace Spt.Passes.Tests;

/// <summary>Positive and negative cases of the attention and FFN rules on small built graphs.</summary>
public class RecognitionRuleTests
{
    private const int B = 2, H = 2, S = 8, E = 8, D = H * E;

    private static float[] Random(int n, int seed)
    {
        var r = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() - 0.5))];
    }

    // x [B, S, D] -> q/k/v projections -> [B, H, S, E] -> scores -> softmax -> PV -> merge -> out projection
    private static Model Attention(
        long softmaxAxis = -1,
        bool scaleIsInput = false,
        bool probsUsedOutside = false,
        int headDim = E,
        string scaleOp = "Div",
        bool causalWhere = false)
    {
        int d = H * headDim;
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, B, S, d);
        Value Linear(string name, int seed) =>
            b.Op("Add", b.Initializer(name + ".b", Random(d, seed + 100), d), b.Op("MatMul", x, b.Initializer(name + ".w", Random(d * d, seed), d, d)));
        var headShape = b.Initializer("head_shape", new long[] { 0, 0, H, headDim }, 4);
        Value Heads(Value v) => b.Op("Transpose", [b.Op("Reshape", v, headShape)], ("perm", new long[] { 0, 2, 1, 3 }));
        var q = Heads(Linear("q", 1));
        var k = Heads(Linear("k", 2));
        var vProj = Linear("v", 3);
        var v = Heads(vProj);
        var scores = b.Op("MatMul", q, b.Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 })));
        var scale = scaleIsInput ? b.Input("scale", ElementType.Float) : b.Initializer(Tensor.Scalar("scale", (float)Math.Sqrt(headDim)));
        scores = b.Op(scaleOp, scores, scale);
        if (causalWhere)
        {
            var tril = new bool[S * S];
            for (int i = 0; i < S; i++)
            {
                for (int j = 0; j <= i; j++)
                    tril[i * S + j] = true;
            }
            var cond = b.Initializer(Tensor.Create("tril", tril, 1, 1, S, S));
            scores = b.Op("Where", cond, scores, b.Initializer(Tensor.Scalar("fill", float.MinValue)));
        }
        var probs = b.Op("Softmax", [scores], ("axis", softmaxAxis));
        var pv = b.Op("MatMul", probs, v);
        var merged = b.Op("Reshape", b.Op("Transpose", [pv], ("perm", new long[] { 0, 2, 1, 3 })), b.Initializer("merge", new long[] { 0, 0, d }, 3));
        var y = b.Op("MatMul", merged, b.Initializer("o.w", Random(d * d, 4), d, d));
        b.Output(y, "y");
        if (probsUsedOutside)
            b.Output(b.Op("Relu", probs), "probs_relu");
        return b.Build();
    }

    private static OptimizeReport Optimize(Model m, SptOptions? options = null) => SptOptimizer.Optimize(m, options ?? new SptOptions());

    [Fact]
    public void AttentionWithDivScaleIsRewritten()
    {
        using var m = Attention();
        var r = Optimize(m);
        Assert.Equal(1, r.AttentionRewritten);
        Assert.False(r.Attention[0].Causal);
        Assert.Equal(1 / Math.Sqrt(E), r.Attention[0].EffectiveScale, 1e-6);
        Assert.Equal(1, TestSupport.Count(m, "SparseAttention"));
        Assert.Equal(2, TestSupport.Count(m, "PQEncode"));
        Assert.Equal(0, TestSupport.Count(m, "Softmax"));
        var sa = m.Graph.Nodes.Single(n => n.OpType == "SparseAttention");
        Assert.Equal(1 / Math.Sqrt(E), sa.GetFloat("scale", 0), 1e-6);
        Assert.Equal(10f, sa.GetFloat("clamp", 0));
        var codebook = m.Graph.Nodes.First(n => n.OpType == "PQEncode").Inputs[1]!.Initializer!;
        Assert.Equal([E / 8, 16, 8], codebook.Dims);
    }

    [Fact]
    public void MulScaleAndCausalWhereAreDetected()
    {
        using var m = Attention(scaleOp: "Mul", causalWhere: true);
        var r = Optimize(m);
        Assert.Equal(1, r.AttentionRewritten);
        Assert.True(r.Attention[0].Causal);
        Assert.Equal(Math.Sqrt(E), r.Attention[0].EffectiveScale, 1e-5);
        Assert.Equal(1, m.Graph.Nodes.Single(n => n.OpType == "PQTopK").GetInt("causal", 0));
    }

    [Fact]
    public void SoftmaxOverAnotherAxisIsNotAttention()
    {
        using var m = Attention(softmaxAxis: 2);
        var r = Optimize(m);
        // A Softmax over scores that does not match is still a found candidate: found − rewritten = the misses.
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(0, r.AttentionRewritten);
        Assert.Equal(1, r.AttentionMissed);
        Assert.Contains(r.Unmatched, u => u.Kind == "attention" && u.Reason.Contains("axis", StringComparison.Ordinal));
        Assert.Equal(1, TestSupport.Count(m, "Softmax"));
    }

    [Fact]
    public void NonConstantScaleIsNotFolded()
    {
        using var m = Attention(scaleIsInput: true);
        var r = Optimize(m);
        // A Softmax over scores that does not match is still a found candidate: found − rewritten = the misses.
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(0, r.AttentionRewritten);
        Assert.Equal(1, r.AttentionMissed);
        Assert.Contains(r.Unmatched, u => u.Reason.Contains("non-constant", StringComparison.Ordinal));
    }

    [Fact]
    public void InnerValueWithOutsideUseKeepsTheBlockDense()
    {
        using var m = Attention(probsUsedOutside: true);
        var r = Optimize(m);
        // A Softmax over scores that does not match is still a found candidate: found − rewritten = the misses.
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(0, r.AttentionRewritten);
        Assert.Equal(1, r.AttentionMissed);
        Assert.Contains(r.Unmatched, u => u.Reason.Contains("softmax output has 2 uses", StringComparison.Ordinal));
        Assert.Equal(1, TestSupport.Count(m, "Softmax"));
    }

    [Theory]
    [InlineData(12, 6)]
    [InlineData(20, 5)]
    [InlineData(80, 8)]
    [InlineData(96, 8)]
    [InlineData(7, 7)]
    [InlineData(11, 1)]
    public void CodewordDimFitsTheHeadDimUnlessGiven(int headDim, int fitted)
    {
        using var m = Attention(headDim: headDim);
        var r = TestSupport.AssertSameOutputs(m, copy => Assert.Equal(1, Optimize(copy, new SptOptions { Exact = true }).AttentionRewritten), tolerance: 1e-4);
        var encode = r.Graph.Nodes.First(n => n.OpType == "PQEncode");
        // codebook [M, C, d_c] with M·d_c = E
        Assert.Equal([headDim / fitted, 16, fitted], encode.Inputs[1]!.Initializer!.Dims);
        using var again = Attention(headDim: headDim);
        var report = Optimize(again);
        Assert.Equal(fitted, report.Attention[0].CodewordDim);
        Assert.Contains($"\"codeword_dim\": {fitted}", report.ToJson(), StringComparison.Ordinal);
    }

    [Fact]
    public void HeadDimNotDivisibleByAnExplicitCodewordDimIsKeptDense()
    {
        using var m = Attention(headDim: 12);
        var r = Optimize(m, new SptOptions { CodewordDim = 8 });
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(0, r.AttentionRewritten);
        Assert.Contains("head dim 12 is not divisible by the codeword dim 8 (given explicitly", r.Attention[0].KeptDenseReason, StringComparison.Ordinal);
        Assert.Null(r.Attention[0].CodewordDim);
        // Expanded back to dense ops: no internal node left, one Softmax.
        Assert.Equal(1, TestSupport.Count(m, "Softmax"));
        Assert.DoesNotContain(m.Graph.Nodes, n => n.Domain.StartsWith("spt", StringComparison.Ordinal) && n.OpType != "RoutedFFN");
    }

    [Fact]
    public void UnselectedLayerIsKeptDense()
    {
        using var m = Attention();
        var r = Optimize(m, new SptOptions { Layers = new HashSet<int> { 5 } });
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(0, r.AttentionRewritten);
        Assert.Equal(1, TestSupport.Count(m, "Softmax"));
    }

    // x [T, d] -> fc1 (+b1?) -> activation -> fc2 (+b2?)
    private static Model Ffn(Func<GraphBuilder, Value, Value> activation, bool bias = true, bool hiddenUsedOutside = false, int dff = 16)
    {
        const int d = 8;
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 4, d);
        var u = b.Op("MatMul", x, b.Initializer("w1", Random(d * dff, 1), d, dff));
        if (bias)
            u = b.Op("Add", u, b.Initializer("b1", Random(dff, 2), dff));
        var h = activation(b, u);
        var y = b.Op("MatMul", h, b.Initializer("w2", Random(dff * d, 3), dff, d));
        if (bias)
            y = b.Op("Add", b.Initializer("b2", Random(d, 4), d), y);
        b.Output(y, "y");
        if (hiddenUsedOutside)
            b.Output(h, "hidden");
        return b.Build();
    }

    private static Value GeluErf(GraphBuilder b, Value u) =>
        b.Op("Mul", b.Op("Mul", u, b.Op("Add", b.Op("Erf", b.Op("Div", u, b.Initializer(Tensor.Scalar("sqrt2", 1.4142135f)))), b.Initializer(Tensor.Scalar("one", 1f)))),
            b.Initializer(Tensor.Scalar("half", 0.5f)));

    [Theory]
    [InlineData("relu")]
    [InlineData("gelu")]
    [InlineData("gelu_tanh")]
    [InlineData("silu")]
    public void FfnActivationsAreRecognized(string kind)
    {
        using var m = Ffn((b, u) => kind switch
        {
            "relu" => b.Op("Relu", u),
            "gelu" => GeluErf(b, u),
            "gelu_tanh" => b.Op("Gelu", [u], ("approximate", "tanh")),
            _ => b.Op("Mul", b.Op("Sigmoid", u), u),
        });
        var r = Optimize(m);
        Assert.Equal(1, r.FfnRewritten);
        Assert.Equal(kind, r.Ffn[0].Activation);
        var node = m.Graph.Nodes.Single(n => n.OpType == "RoutedFFN");
        Assert.Equal(kind, node.GetString("activation"));
        Assert.Equal(2, node.GetInt("blocks_per_token", 0));
        Assert.Equal([8, 4], node.Inputs[5]!.Initializer!.Dims);
    }

    [Fact]
    public void MissingBiasesAreFine()
    {
        using var m = Ffn((b, u) => b.Op("Relu", u), bias: false);
        var r = Optimize(m, new SptOptions { Exact = true });
        Assert.Equal(1, r.FfnRewritten);
        var node = m.Graph.Nodes.Single(n => n.OpType == "RoutedFFN");
        Assert.Null(node.Inputs[2]);
        Assert.Null(node.Inputs[4]);
        Assert.Equal(4, node.GetInt("blocks_per_token", 0));
        Assert.Equal("none", node.GetString("gate"));
    }

    [Fact]
    public void UnsupportedActivationIsReported()
    {
        using var m = Ffn((b, u) => b.Op("Tanh", u));
        var r = Optimize(m);
        Assert.Equal(0, r.FfnFound);
        Assert.Contains(r.Unmatched, u => u.Kind == "ffn" && u.Reason.Contains("not ReLU", StringComparison.Ordinal));
    }

    [Fact]
    public void HiddenActivationWithOutsideUseIsNotRewritten()
    {
        using var m = Ffn((b, u) => b.Op("Relu", u), hiddenUsedOutside: true);
        var r = Optimize(m);
        Assert.Equal(0, r.FfnFound);
        Assert.Contains(r.Unmatched, u => u.Kind == "ffn");
    }

    [Fact]
    public void HiddenWidthNotDivisibleByBlocksIsKeptDense()
    {
        using var m = Ffn((b, u) => b.Op("Relu", u), dff: 18);
        var r = Optimize(m);
        Assert.Equal(1, r.FfnFound);
        Assert.Equal(0, r.FfnRewritten);
        Assert.Contains("not divisible", r.Ffn[0].KeptDenseReason, StringComparison.Ordinal);
    }

    [Fact]
    public void LoraFactorsGoToTheRoutedFfn()
    {
        using var m = Ffn((b, u) => b.Op("Relu", u));
        var r = Optimize(m, new SptOptions { LoraRank = 4 });
        var node = m.Graph.Nodes.Single(n => n.OpType == "RoutedFFN");
        Assert.Equal([8, 4], node.Inputs[8]!.Initializer!.Dims);
        Assert.Equal([4, 16], node.Inputs[9]!.Initializer!.Dims);
        Assert.All(node.Inputs[9]!.Initializer!.ToFloatArray(), v => Assert.Equal(0f, v));
        Assert.Equal(8 * 4 + 4 + 8 * 4 + 4 * 16 + 16 * 4 + 4 * 8, r.Ffn[0].ParametersAdded);
    }

    [Fact]
    public void UnsupportedOpsetIsReportedNotRewritten()
    {
        var b = new GraphBuilder(6);
        var x = b.Input("x", ElementType.Float, 2, 3);
        b.Output(b.Op("Softmax", x), "y");
        using var m = b.Build();
        var r = Optimize(m);
        Assert.Contains(r.Unsupported, u => u.Contains("opset 6 is not supported", StringComparison.Ordinal));
        Assert.Equal(1, TestSupport.Count(m, "Softmax"));
        Assert.Equal(6, m.GetOpsetVersion(""));
    }

    [Fact]
    public void OldOpsetWithAnOpTheUpgradeCannotConvertIsRefusedNamingTheOp()
    {
        var b = new GraphBuilder(8);
        var x = b.Input("x", ElementType.Float, 2, 3, 4, 4);
        var p = Enumerable.Range(0, 4).Select(i => b.Initializer($"p{i}", Random(3 * 4 * 4, i), 3, 4, 4)).ToArray();
        b.Output(b.Op("BatchNormalization", [x, p[0], p[1], p[2], p[3]], ("spatial", 0L)), "y");
        using var m = b.Build();
        var r = Optimize(m);
        var line = Assert.Single(r.Unsupported);
        Assert.Contains("opset 8 cannot be upgraded to 13", line, StringComparison.Ordinal);
        Assert.Contains("BatchNormalization '", line, StringComparison.Ordinal);
        Assert.Contains("spatial=0", line, StringComparison.Ordinal);
        Assert.Equal(8, m.GetOpsetVersion(""));
    }
}
