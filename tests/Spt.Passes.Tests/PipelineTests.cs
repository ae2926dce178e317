using Spt.Ir;
using Spt.Passes;

namespace Spt.Passes.Tests;

public class PipelineTests
{
    // Removes one Relu per run (Relu(Relu(x)) -> Relu(x)), so a fixpoint needs several rounds.
    private sealed class CollapseOneDoubleRelu : IPass
    {
        public string Name => "collapse-relu";

        public bool Run(Model model, PassContext context)
        {
            foreach (var node in model.Graph.Nodes)
            {
                if (node.OpType == "Relu" && node.Inputs[0]?.Producer is { OpType: "Relu" } inner)
                {
                    var editor = model.Graph.Edit();
                    editor.SetInput(node, 0, inner.Inputs[0]);
                    editor.Remove(inner);
                    return true;
                }
            }

            return false;
        }
    }

    private sealed class BreakGraph : IPass
    {
        public string Name => "break";

        public bool Run(Model model, PassContext context)
        {
            // Feeds the last node's output back into the first node: a cycle the verifier must catch.
            var first = model.Graph.Nodes.First();
            var last = model.Graph.Nodes.Reverse().First();
            model.Graph.Edit().SetInput(first, 0, last.Outputs[0]);
            return true;
        }
    }

    private static Model ChainOfRelus(int count)
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2, 3);
        var y = x;
        for (var i = 0; i < count; i++)
        {
            y = b.Op("Relu", y);
        }

        b.Output(y, "y");
        return b.Build();
    }

    [Fact]
    public void FixpointRunsUntilNothingChanges()
    {
        var model = ChainOfRelus(4);
        var result = new Pipeline("test").AddFixpoint(10, new CollapseOneDoubleRelu()).Run(model);

        Assert.True(result.Changed);
        Assert.Single(model.Graph.Nodes);
        var timing = Assert.Single(result.Timings);
        Assert.Equal(4, timing.Runs);
        Assert.Equal(3, timing.Changes);
    }

    [Fact]
    public void FixpointThatDoesNotSettleWarns()
    {
        var model = ChainOfRelus(5);
        var result = new Pipeline("test").AddFixpoint(2, new CollapseOneDoubleRelu()).Run(model);

        Assert.Equal(3, model.Graph.Nodes.Count);
        Assert.Contains(result.Context.Diagnostics, d => d.Severity == Severity.Warning && d.Message.Contains("did not settle"));
    }

    [Fact]
    public void SinglePassRunsOnce()
    {
        var model = ChainOfRelus(4);
        var result = new Pipeline("test").Add(new CollapseOneDoubleRelu()).Run(model);

        Assert.Equal(3, model.Graph.Nodes.Count);
        Assert.Equal(1, result.Timings[0].Runs);
    }

    [Fact]
    public void UnchangedModelReportsNoChange()
    {
        var model = ChainOfRelus(1);
        var result = new Pipeline("test").AddFixpoint(3, new CollapseOneDoubleRelu()).Run(model);
        Assert.False(result.Changed);
    }

    [Fact]
    public void VerifierBetweenPassesNamesTheBrokenPass()
    {
        var model = ChainOfRelus(2);
        var context = new PassContext { VerifyAfterEachPass = true };
        var e = Assert.Throws<InvalidOperationException>(() => new Pipeline("test").Add(new BreakGraph()).Run(model, context));
        Assert.Contains("pass 'break' left an invalid graph", e.Message);
    }
}
