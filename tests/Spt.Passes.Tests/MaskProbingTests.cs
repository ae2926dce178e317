using Spt.Ir;

namespace Spt.Passes.Tests;

/// <summary>
/// Masks classified by what they compute (evaluated at probe sizes and padding patterns), and the report counting
/// every Softmax over scores as a found candidate. The PyTorch mask fixtures (mask_*) cover the exporters' forms; these
/// built graphs cover the guards.
/// </summary>
public class MaskProbingTests
{
    private const int H = 2, E = 8, D = H * E;

    // x [batch, sequence, D], mask [batch, sequence] int64 -> one attention block whose scores get `mask(b, scores)`.
    private static Model Block(Func<GraphBuilder, Value, Value, Value> mask, bool softmaxOnHead = false)
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "sequence", D);
        var keep = b.Input("attention_mask", ElementType.Int64, "batch", "sequence");
        var rng = new Random(3);
        float[] W() => [.. Enumerable.Range(0, D * D).Select(_ => (float)(rng.NextDouble() - 0.5))];
        var headShape = b.Initializer("head_shape", new long[] { 0, 0, H, E }, 4);
        Value Heads(Value v) => b.Op("Transpose", [b.Op("Reshape", v, headShape)], ("perm", new long[] { 0, 2, 1, 3 }));
        var q = Heads(b.Op("MatMul", x, b.Initializer("wq", W(), D, D)));
        var k = Heads(b.Op("MatMul", x, b.Initializer("wk", W(), D, D)));
        var v = Heads(b.Op("MatMul", x, b.Initializer("wv", W(), D, D)));
        var scores = b.Op("Div", b.Op("MatMul", q, b.Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 }))), b.Initializer(Tensor.Scalar("scale", (float)Math.Sqrt(E))));
        var probs = b.Op("Softmax", [mask(b, keep, scores)], ("axis", -1L));
        var merged = b.Op("Reshape", b.Op("Transpose", [b.Op("MatMul", probs, v)], ("perm", new long[] { 0, 2, 1, 3 })), b.Initializer("merge", new long[] { 0, 0, D }, 3));
        var y = b.Op("MatMul", merged, b.Initializer("wo", W(), D, D));
        if (softmaxOnHead)
            y = b.Op("Softmax", [b.Op("MatMul", y, b.Initializer("head", W(), D, D))], ("axis", -1L));
        b.Output(y, "y");
        return b.Build();
    }

    private static Value KeepAsFloat(GraphBuilder b, Value keep) =>
        b.Op("Unsqueeze", b.Op("Cast", [keep], ("to", (long)ElementType.Float)), b.Initializer("axes12", new long[] { 1, 2 }, 2));

    [Fact]
    public void PaddingWrittenAsWhereOnABoolMaskIsKeyPadding()
    {
        // masked_fill(~mask.bool()[:, None, None, :], -1e4)
        using var m = Block((b, keep, s) =>
        {
            var blocked = b.Op("Not", b.Op("Unsqueeze", b.Op("Cast", [keep], ("to", (long)ElementType.Bool)), b.Initializer("ax", new long[] { 1, 2 }, 2)));
            return b.Op("Where", blocked, b.Initializer(Tensor.Scalar("fill", -1e4f)), s);
        });
        var r = TestSupport.AssertSameOutputs(m, copy => Assert.Equal(1, SptOptimizer.Optimize(copy, new SptOptions { Exact = true, Ffn = FfnMode.Keep }).AttentionRewritten), tolerance: 1e-4);
        Assert.Equal(1, TestSupport.Count(r, "SparseAttention"));
        using var again = Block((b, keep, s) =>
            b.Op("Where", b.Op("Not", b.Op("Unsqueeze", b.Op("Cast", [keep], ("to", (long)ElementType.Bool)), b.Initializer("ax", new long[] { 1, 2 }, 2))), b.Initializer(Tensor.Scalar("fill", -1e4f)), s));
        var report = SptOptimizer.Optimize(again, new SptOptions());
        Assert.Equal("attention_mask", report.Attention.Single().KeyPaddingMask);
        Assert.False(report.Attention.Single().Causal);
    }

    // An additive term that is no mask the kernels take becomes SparseAttention's attn_bias, read at the selected keys,
    // and the exact rewrite still reproduces the model.
    private static void AssertAppliedAsAttentionBias(Func<GraphBuilder, Value, Value, Value> mask)
    {
        using var m = Block(mask);
        var r = TestSupport.AssertSameOutputs(m, copy => Assert.Equal(1, SptOptimizer.Optimize(copy, new SptOptions { Exact = true, Ffn = FfnMode.Keep }).AttentionRewritten), tolerance: 1e-4);
        var sa = Assert.Single(r.Graph.Nodes, n => n.OpType == "SparseAttention");
        Assert.True(sa.Inputs.Count > Spt.CustomOps.AttentionOps.AttnBias && sa.Inputs[Spt.CustomOps.AttentionOps.AttnBias] is not null, "no attn_bias input");
        Assert.Null(sa.Inputs[Spt.CustomOps.AttentionOps.KeyPadding]);
    }

    [Fact]
    public void AnAdditiveTermThatIsNotAMaskBecomesAnAttentionBias() =>
        // (mask * 0.5) added: values 0 and 0.5, a bias on the scores
        AssertAppliedAsAttentionBias((b, keep, s) => b.Op("Add", s, b.Op("Mul", KeepAsFloat(b, keep), b.Initializer(Tensor.Scalar("half", 0.5f)))));

    [Fact]
    public void InvertedPaddingAddedToTheScoresIsAppliedAsAnAttentionBias() =>
        // mask * -1e4 added: blocks the keys where the mask is 1 (no key padding mask the kernels take, but an exact bias)
        AssertAppliedAsAttentionBias((b, keep, s) => b.Op("Add", s, b.Op("Mul", KeepAsFloat(b, keep), b.Initializer(Tensor.Scalar("big", -1e4f)))));

    [Fact]
    public void AnUnknownPatternNamesTheBlockedKeys()
    {
        // blocks key 0 for every query: none of the known meanings
        using var m = Block((b, keep, s) =>
        {
            var seq = b.Op("Gather", [b.Op("Shape", keep), b.Initializer(Tensor.Scalar("one_axis", 1L))], ("axis", 0L));
            var j = b.Op("Range", b.Initializer(Tensor.Scalar("zero", 0L)), seq, b.Initializer(Tensor.Scalar("one", 1L)));
            return b.Op("Where", b.Op("Equal", j, b.Initializer(Tensor.Scalar("z", 0L))), b.Initializer(Tensor.Scalar("fill", float.MinValue)), s);
        });
        var r = SptOptimizer.Optimize(m, new SptOptions());
        var miss = Assert.Single(r.Unmatched, u => u.Kind == "attention");
        Assert.Contains("query 0: keys {0}", miss.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void FoundCountsEveryScoreSoftmaxAndNoOther()
    {
        // Scores reshaped to [B·H, S, S] and back (a chain the core does not model yet) and a classifier-head Softmax.
        using var m = Block((b, keep, s) =>
        {
            var folded = b.Op("Reshape", s, b.Initializer("bhss", new long[] { -1, 0, 0 }, 3));
            var back = b.Op("Reshape", folded, b.Op("Shape", s));
            return b.Op("Add", back, b.Op("Mul", b.Op("Sub", b.Initializer(Tensor.Scalar("one", 1f)), KeepAsFloat(b, keep)), b.Initializer(Tensor.Scalar("big", -1e4f))));
        }, softmaxOnHead: true);
        var r = SptOptimizer.Optimize(m, new SptOptions());
        Assert.Equal(1, r.AttentionFound);
        Assert.Equal(1, r.AttentionMissed);
        Assert.Equal(0, r.AttentionRewritten);
        var miss = Assert.Single(r.Unmatched, u => u.Kind == "attention");
        // The reason names the Reshape the chain passes through, not "neither operand leads to the QK MatMul".
        Assert.Contains("Reshape", miss.Reason, StringComparison.Ordinal);
        Assert.DoesNotContain("leads to the QK MatMul", miss.Reason, StringComparison.Ordinal);
        Assert.Single(r.Unmatched, u => u.Kind == "softmax" && u.Reason.Contains("not over attention scores", StringComparison.Ordinal));
        Assert.Contains("\"unmatched\": 1", r.ToJson(), StringComparison.Ordinal);
    }
}
