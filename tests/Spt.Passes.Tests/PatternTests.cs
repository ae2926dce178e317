using Spt.Ir;
using Spt.Passes.Patterns;

namespace Spt.Passes.Tests;

public class PatternTests
{
    // scores = MatMul(q, Transpose(k, perm [0,1,3,2])) / 4 ; probs = Softmax(scores, axis -1)
    private static (Model Model, Value Scores, Value Probs, Value Transposed) Attention(
        long[]? perm = null, float divisor = 4f, bool constantNode = false, long axis = -1, string divOp = "Div")
    {
        var b = new GraphBuilder(17);
        var q = b.Input("q", ElementType.Float, 2, 4, 8, 16);
        var k = b.Input("k", ElementType.Float, 2, 4, 8, 16);
        var kt = b.Op("Transpose", [k], ("perm", perm ?? [0, 1, 3, 2]));
        var mm = b.Op("MatMul", q, kt);
        var scale = constantNode ? b.Constant(Tensor.Scalar("s", divisor)) : b.Initializer(Tensor.Scalar("s", divisor));
        var scores = b.Op(divOp, mm, scale);
        var probs = b.Op("Softmax", [scores], ("axis", axis));
        b.Output(probs, "probs");
        return (b.Build(), scores, probs, kt);
    }

    private static OpPattern ScoresPattern() => Pat.Op("Div",
        Pat.Op("MatMul", Pat.Any("q"), Pat.Op("Transpose", Pat.Any("k")).AttrInts("perm", 0, 1, 3, 2).Named("kt")).Named("qk"),
        Pat.Const("scale", 4.0));

    [Fact]
    public void MatchesAndCaptures()
    {
        var (model, scores, _, kt) = Attention();
        var m = ScoresPattern().Match(scores);
        Assert.True(m.Success, m.Reason);
        Assert.Equal("q", m["q"].Name);
        Assert.Equal("k", m["k"].Name);
        Assert.Same(kt.Producer, m.Node("kt"));
        Assert.Equal(4f, m.Constant("scale").ToFloatArray().Single());
        Assert.Equal(["Div", "MatMul", "Transpose"], m.MatchedNodes.Select(n => n.OpType));
        Assert.Same(scores.Producer, m.MatchedNodes[0]);
        Assert.Equal(4, model.Graph.Nodes.Count);
    }

    [Fact]
    public void ConstantNodeCountsAsConstant()
    {
        var (_, scores, _, _) = Attention(constantNode: true);
        Assert.True(ScoresPattern().Match(scores).Success);
    }

    [Fact]
    public void WrongOpFailsWithReasonAndNode()
    {
        var (_, scores, _, _) = Attention(divOp: "Mul");
        var m = ScoresPattern().Match(scores);
        Assert.False(m.Success);
        Assert.Same(scores.Producer, m.FailedAt);
        Assert.Contains("should come from Div", m.Reason);
        Assert.Contains("Mul", m.Reason);
        Assert.Empty(m.Values);
    }

    [Fact]
    public void WrongAttributeFails()
    {
        var (_, scores, _, kt) = Attention(perm: [0, 2, 1, 3]);
        var m = ScoresPattern().Match(scores);
        Assert.False(m.Success);
        Assert.Same(kt.Producer, m.FailedAt);
        Assert.Contains("perm = [0,1,3,2]", m.Reason);
    }

    [Fact]
    public void WrongConstantFails()
    {
        var (_, scores, _, _) = Attention(divisor: 5f);
        var m = ScoresPattern().Match(scores);
        Assert.False(m.Success);
        Assert.Contains("is not a constant = 4", m.Reason);
    }

    [Fact]
    public void ConstantToleranceIsRelative()
    {
        var (_, scores, _, _) = Attention(divisor: (float)Math.Sqrt(16.0) + 2e-6f);
        Assert.True(ScoresPattern().Match(scores).Success);
    }

    [Fact]
    public void ComputedValueIsNotAConstant()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 4);
        var s = b.Input("s", ElementType.Float);
        var y = b.Op("Div", b.Op("Relu", x), s);
        b.Output(y);
        var m = Pat.Op("Div", Pat.Any(), Pat.Const("c")).Match(y);
        Assert.False(m.Success);
        Assert.Contains("graph input", m.Reason);
    }

    [Fact]
    public void AttributePredicatesSeeDefaultsAndLastAxis()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 4, 8, 8);
        var last = b.Op("Softmax", [x], ("axis", 3L));
        var third = b.Op("Softmax", [x], ("axis", 2L));
        var implicitAxis = b.Op("Softmax", x);
        var unknownRank = b.Op("Softmax", [b.Op("Relu", x)], ("axis", 3L));
        b.Output(last).Output(third).Output(implicitAxis).Output(unknownRank);

        var p = Pat.Op("Softmax", Pat.Any()).AttrLastAxis("axis", -1);
        Assert.True(p.Match(last).Success);
        Assert.True(p.Match(implicitAxis).Success);
        var m = p.Match(third);
        Assert.False(m.Success);
        Assert.Contains("last axis", m.Reason);
        // Rank unknown: axis 3 cannot be proven last.
        Assert.False(p.Match(unknownRank).Success);
        // Opset 11 default axis is 1.
        Assert.False(Pat.Op("Softmax", Pat.Any()).AttrLastAxis("axis", 1).Match(implicitAxis).Success);
        Assert.True(Pat.Op("Softmax", Pat.Any()).Attr("axis", 2L).Match(third).Success);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CommutativeMatchesBothOrders(bool biasFirst)
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 8);
        var w = b.Initializer("w", new float[32], 8, 4);
        var bias = b.Initializer("b", new float[4], 4);
        var mm = b.Op("MatMul", x, w);
        var y = biasFirst ? b.Op("Add", bias, mm) : b.Op("Add", mm, bias);
        b.Output(y);

        var linear = Pat.Commutative("Add", Pat.Op("MatMul", Pat.Any("x"), Pat.Const("w")), Pat.Const("b"));
        var m = linear.Match(y);
        Assert.True(m.Success, m.Reason);
        Assert.Equal("w", m["w"].Name);
        Assert.Equal("b", m["b"].Name);

        // Without commutation only the written order matches.
        var ordered = Pat.Op("Add", Pat.Op("MatMul", Pat.Any("x"), Pat.Const("w")), Pat.Const("b"));
        Assert.Equal(!biasFirst, ordered.Match(y).Success);
    }

    [Fact]
    public void CommutativeFailureReportsBothOrders()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 8);
        var z = b.Input("z", ElementType.Float, 2, 8);
        var y = b.Op("Add", b.Op("Relu", x), z);
        b.Output(y);
        var m = Pat.Commutative("Add", Pat.Op("MatMul", Pat.Any(), Pat.Any()), Pat.Any("b")).Match(y);
        Assert.False(m.Success);
        Assert.Contains("neither order", m.Reason);
        Assert.Empty(m.Values); // the capture of the first attempt was undone
    }

    [Fact]
    public void OneOfTakesFirstFittingAlternativeAndUndoesCaptures()
    {
        var (_, scores, _, _) = Attention(divOp: "Mul", divisor: 0.25f);
        var qk = Pat.Op("MatMul", Pat.Any("q"), Pat.Op("Transpose", Pat.Any("k")));
        var div = Pat.Op("Div", qk, Pat.Const("scale", 4.0));
        var mul = Pat.Commutative("Mul", Pat.Op("MatMul", Pat.Any("q"), Pat.Op("Transpose", Pat.Any("k"))), Pat.Const("scale", 0.25));
        var m = Pat.OneOf(div, mul).Match(scores);
        Assert.True(m.Success, m.Reason);
        Assert.Equal(0.25f, m.Constant("scale").ToFloatArray()[0]);

        var (_, scores2, _, _) = Attention(divOp: "Mul", divisor: 0.5f);
        var failed = Pat.OneOf(div, mul).Match(scores2);
        Assert.False(failed.Success);
        Assert.Contains("no alternative matches", failed.Reason);
        Assert.Contains("[Div]", failed.Reason);
        Assert.Contains("[Mul (commutative)]", failed.Reason);
    }

    [Fact]
    public void OptionalLinkIsSkippedOrMatched()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 2, 8);
        var direct = b.Op("Softmax", x);
        var dropped = b.Op("Dropout", b.Op("Softmax", x));
        var cast = b.Op("Cast", [b.Op("Softmax", x)], ("to", (long)ElementType.Float));
        b.Output(direct).Output(dropped).Output(cast);

        var p = Pat.Optional("Dropout", Pat.Op("Softmax", Pat.Any("x")).Named("sm"));
        Assert.True(p.Match(direct).Success);
        var m = p.Match(dropped);
        Assert.True(m.Success, m.Reason);
        Assert.Equal(["Dropout", "Softmax"], m.MatchedNodes.Select(n => n.OpType));
        Assert.False(p.Match(cast).Success);

        var guarded = Pat.Optional("Dropout", Pat.Op("Softmax", Pat.Any()), n => n.Inputs.Count > 2, "has training_mode");
        var g = guarded.Match(dropped);
        Assert.False(g.Success);
        Assert.Contains("should come from Softmax", g.Reason);
    }

    [Fact]
    public void RepeatedCaptureMustBindTheSameValue()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 4);
        var z = b.Input("z", ElementType.Float, 4);
        var square = b.Op("Mul", x, x);
        var product = b.Op("Mul", x, z);
        b.Output(square).Output(product);
        var p = Pat.Op("Mul", Pat.Any("a"), Pat.Any("a"));
        Assert.True(p.Match(square).Success);
        var m = p.Match(product);
        Assert.False(m.Success);
        Assert.Contains("capture 'a' is already %x", m.Reason);
    }

    [Fact]
    public void InputCountAndOutputIndexAreChecked()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, 4);
        var ratio = b.Initializer(Tensor.Scalar("ratio", 0.1f));
        var outs = b.Ops("Dropout", [x, ratio], 2);
        b.Output(outs[0]).Output(outs[1]);
        Assert.Contains("has 2 inputs", Pat.Op("Dropout", Pat.Any()).Match(outs[0]).Reason);
        Assert.True(Pat.Op("Dropout", Pat.Any()).WithTrailingInputs().Match(outs[0]).Success);
        Assert.Contains("is output 1", Pat.Op("Dropout", Pat.Any()).WithTrailingInputs().Match(outs[1]).Reason);
    }

    [Fact]
    public void DomainFilter()
    {
        var b = new GraphBuilder(17).Opset("com.microsoft", 1);
        var x = b.Input("x", ElementType.Float, 4);
        var y = b.DomainOp("com.microsoft", "Gelu", [x]);
        b.Output(y);
        Assert.False(Pat.Op("Gelu", Pat.Any()).Match(y).Success);
        Assert.True(Pat.Op("Gelu", Pat.Any()).Domain("com.microsoft").Match(y).Success);
    }

    [Fact]
    public void OutsideUseOfAnIntermediateFailsTheMatch()
    {
        var b = new GraphBuilder(17);
        var q = b.Input("q", ElementType.Float, 2, 4, 8, 16);
        var k = b.Input("k", ElementType.Float, 2, 4, 8, 16);
        var kt = b.Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 }));
        var mm = b.Op("MatMul", q, kt);
        var scores = b.Op("Div", mm, b.Initializer(Tensor.Scalar("s", 4f)));
        b.Output(scores, "scores");
        var pattern = ScoresPattern();

        var clean = pattern.Match(scores).RequireNoOutsideUses();
        Assert.True(clean.Success, clean.Reason);

        // Another consumer of the raw scores: the Div cannot absorb the MatMul.
        var other = b.Op("Relu", mm);
        b.Output(other, "raw");
        var m = pattern.Match(scores).RequireNoOutsideUses();
        Assert.False(m.Success);
        Assert.Same(mm.Producer, m.FailedAt);
        Assert.Contains("also used by Relu", m.Reason);

        // Declared exits may be used outside.
        Assert.True(pattern.Match(scores).RequireNoOutsideUses("qk").Success);
    }

    [Fact]
    public void GraphOutputInsideTheRegionFailsTheMatch()
    {
        var (model, scores, _, kt) = Attention();
        model.Graph.Edit().AddOutput(kt);
        var m = ScoresPattern().Match(scores).RequireNoOutsideUses();
        Assert.False(m.Success);
        Assert.Contains("graph output", m.Reason);
    }

    [Fact]
    public void ValueGuardsOnAny()
    {
        var (_, scores, _, _) = Attention();
        var p = Pat.Op("Div", Pat.Op("MatMul", Pat.Any("q").Where(v => v.Shape?.Count == 3, "rank 3"), Pat.Any()), Pat.Any());
        var m = p.Match(scores);
        Assert.False(m.Success);
        Assert.Contains("rank 3", m.Reason);
    }
}
