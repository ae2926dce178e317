using Spt.CustomOps;
using Spt.Ir;

namespace Spt.CustomOps.Tests;

public class OpSchemaTests
{
    // A two-input op: y[N, K] = f(x[N, D], w[D, K]), with an int attribute that must be positive.
    private static readonly OpSchema Toy = new(
        "Toy",
        "test op",
        [
            new ParameterSpec("x", "data", [ElementType.Float]),
            new ParameterSpec("w", "weights", [ElementType.Float], Optional: true),
        ],
        [new ParameterSpec("y", "result", [ElementType.Float])],
        [
            new AttributeSpec("k", AttributeKind.Int, 4L, "width", v => (long)v > 0 ? null : "must be positive"),
            new AttributeSpec("mode", AttributeKind.String, "a", "mode"),
        ],
        ctx =>
        {
            var x = ctx.ShapeOfRank(0, 2, "[N, D]");
            return [new TensorType(ElementType.Float, x is null ? null : [x[0], new Dim(ctx.Int("k"))])];
        });

    [Fact]
    public void DefaultsAreFilledIn()
    {
        var attrs = Toy.ResolveAttributes(new Dictionary<string, object> { ["mode"] = "b" });
        Assert.Equal(4L, attrs["k"]);
        Assert.Equal("b", attrs["mode"]);
    }

    [Fact]
    public void IntAttributeAcceptsInt32AndBool()
    {
        Assert.Equal(7L, Toy.ResolveAttributes(new Dictionary<string, object> { ["k"] = 7 })["k"]);
        Assert.Equal(1L, Toy.ResolveAttributes(new Dictionary<string, object> { ["k"] = true })["k"]);
    }

    [Fact]
    public void UnknownAttributeIsNamed()
    {
        var e = Assert.Throws<OpContractException>(() =>
            Toy.ResolveAttributes(new Dictionary<string, object> { ["kk"] = 1L }));
        Assert.Equal("spt::Toy: unknown attribute 'kk'", e.Message);
    }

    [Fact]
    public void OutOfRangeAttributeIsNamedWithItsValue()
    {
        var e = Assert.Throws<OpContractException>(() =>
            Toy.ResolveAttributes(new Dictionary<string, object> { ["k"] = 0L }));
        Assert.Equal("spt::Toy: attribute 'k' = 0: must be positive", e.Message);
    }

    [Fact]
    public void WrongAttributeKindIsRejected()
    {
        var e = Assert.Throws<OpContractException>(() =>
            Toy.ResolveAttributes(new Dictionary<string, object> { ["mode"] = 3L }));
        Assert.Contains("'mode' must be string", e.Message);
    }

    [Fact]
    public void ShapeRuleSeesAttributes()
    {
        var outputs = Toy.InferTypes(
            [new TensorType(ElementType.Float, [new Dim("N"), new Dim(8)])],
            new Dictionary<string, object> { ["k"] = 3L });
        var y = Assert.IsType<TensorType>(outputs[0]);
        Assert.Equal("f32[N,3]", y.Describe());
    }

    [Fact]
    public void MissingRequiredInputIsNamed()
    {
        var e = Assert.Throws<OpContractException>(() => Toy.InferTypes([null]));
        Assert.Equal("spt::Toy: input 0 'x' is required", e.Message);
    }

    [Fact]
    public void WrongElementTypeIsNamed()
    {
        var e = Assert.Throws<OpContractException>(() =>
            Toy.InferTypes([new TensorType(ElementType.Float16, [new Dim(2), new Dim(8)])]));
        Assert.Contains("input 0 'x' has element type", e.Message);
    }

    [Fact]
    public void WrongRankNamesTheExpectedShape()
    {
        var e = Assert.Throws<OpContractException>(() =>
            Toy.InferTypes([new TensorType(ElementType.Float, [new Dim(2)])]));
        Assert.Contains("input 0 'x' has shape", e.Message);
        Assert.Contains("expected [N, D]", e.Message);
    }

    [Fact]
    public void DimRulesCompareSizesAndSymbols()
    {
        Assert.True(new Dim(3).SameAs(new Dim(3)));
        Assert.True(new Dim("S").SameAs(new Dim("S")));
        Assert.False(new Dim("S").SameAs(new Dim("T")));
        Assert.True(new Dim(3).ConflictsWith(new Dim(4)));
        Assert.False(new Dim(3).ConflictsWith(new Dim("S")));
    }
}
