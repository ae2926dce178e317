using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Canonicalization;
using Xunit.Abstractions;

namespace Spt.Passes.Tests;

public class CanonicalizationFixtureTests(ITestOutputHelper output)
{
    public static IEnumerable<object[]> Fixtures() => TestSupport.AllFixtures();

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void CanonicalizationKeepsOutputsAndShrinksTheGraph(string file)
    {
        using var model = Model.Load(TestSupport.Fixture(file));
        int before = model.Graph.Nodes.Count;
        bool training = file.StartsWith("dropout_train", StringComparison.Ordinal);
        // Training Dropout draws a new mask on every run, so only structure can be compared there.
        Model result;
        if (training)
        {
            result = Model.FromBytes(model.ToBytes());
            Canonicalize.Standard().Run(result, new PassContext { VerifyAfterEachPass = true });
        }
        else
        {
            result = TestSupport.AssertSameOutputs(model, m => Canonicalize.Standard().Run(m, new PassContext { VerifyAfterEachPass = true }));
        }
        int after = result.Graph.Nodes.Count;
        output.WriteLine($"{file}: {before} -> {after} nodes");

        bool exported = !file.StartsWith("ort_", StringComparison.Ordinal) && !file.StartsWith("onnx_attention", StringComparison.Ordinal);
        // Exporter graphs shrink a lot; the hand-built ones are already canonical.
        Assert.True(exported ? after < before * 0.6 : after <= before, $"{file}: {before} -> {after}");
        // An Identity that only renames a graph output stays (the output name is the interface).
        Assert.DoesNotContain(result.Graph.Nodes, n => n.OpType == "Identity" && !n.Outputs[0].IsGraphOutput);
        Assert.Equal(0, TestSupport.Count(result, "Gemm"));
        // Every Linear weight is read directly: no Transpose of an initializer is left.
        Assert.DoesNotContain(result.Graph.Nodes, n => n.OpType == "Transpose" && n.Inputs[0]!.IsInitializer);
        // Head splits ([B, S, d] -> [B, S, H, E]) get constant targets; only un-flattening [S*B, d] -> [S, B, d]
        // keeps a computed one (two symbolic sizes that are no copies of the input's).
        // A view of an [S, S] mask to [1, 1, S, S] (unit axes in front of the input's own dims) is no head split.
        var shapes = ShapeAnalysis.Run(result);
        bool UnitAxesInFront(Node n) => shapes.ShapeOf(n.Inputs[0]!) is { } x && shapes.ShapeOf(n.Outputs[0]) is { } y
            && y.Take(y.Count - x.Count).All(d => d.Value == 1) && y.Skip(y.Count - x.Count).SequenceEqual(x);
        // A view whose output has two or more unknown dims that are not the input's own dims at the same place
        // ([B·H, Sq, Sk] -> [B, H, Sq, Sk], [B, Hkv, n, S, E] -> [B, H, S, E]) cannot be written as a constant target.
        bool TwoFreeDims(Node n) => shapes.ShapeOf(n.Inputs[0]!) is { } x && shapes.ShapeOf(n.Outputs[0]) is { } y
            && y.Where((d, i) => !d.IsKnown && !(i < x.Count && x[i] == d && !string.IsNullOrEmpty(d.Param))).Count() >= 2;
        // The merge of LLaMA's repeat_kv ([B, Hkv, n, S, E] -> [B, H, S, E]) reads an Expand whose target torch writes as
        // Where(target == -1, 1, target): its dims are not folded, so its target stays computed.
        bool MergesExpand(Node n) => n.Inputs[0]!.Producer is { OpType: "Expand" };
        Assert.All(result.Graph.Nodes.Where(n => n.OpType == "Reshape" && shapes.ShapeOf(n.Outputs[0])?.Count == 4 && !UnitAxesInFront(n) && !TwoFreeDims(n) && !MergesExpand(n)),
            n => Assert.True(Analysis.ConstantValue.Of(n.Inputs[1]!) is not null, $"{file}: {n} has a computed target"));
        Assert.Equal(training ? TestSupport.Count(model, "Dropout") : 0, TestSupport.Count(result, "Dropout"));
    }
}
