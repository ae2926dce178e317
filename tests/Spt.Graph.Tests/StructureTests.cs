namespace Spt.Ir.Tests;

/// <summary>Use-def chains, the editor, the verifier and topological order.</summary>
public sealed class StructureTests
{
    // x -> Relu -> a; a -> Neg -> b; (a, b) -> Add -> y
    private static (GraphBuilder B, Value X, Value A, Value Bv, Value Y) Diamond()
    {
        var b = new GraphBuilder(opset: 17);
        var x = b.Input("x", ElementType.Float, "N");
        var a = b.Op("Relu", x);
        var bv = b.Op("Neg", a);
        var y = b.Op("Add", a, bv);
        b.Output(y);
        return (b, x, a, bv, y);
    }

    [Fact]
    public void ValuesKnowProducerAndOrderedUses()
    {
        var (_, x, a, bv, y) = Diamond();
        Assert.Null(x.Producer);
        Assert.True(x.IsGraphInput);
        Assert.Equal("Relu", a.Producer!.OpType);
        Assert.Equal(0, a.ProducerOutputIndex);
        Assert.Equal(["Neg", "Add"], a.Uses.Select(u => u.Node.OpType));
        Assert.Equal([0, 0], a.Uses.Select(u => u.InputIndex));
        Assert.Equal(1, bv.Uses.Single().InputIndex);
        Assert.True(y.IsGraphOutput);
    }

    [Fact]
    public void ReplaceAllUsesWithKeepsUseOrder()
    {
        var (b, x, a, bv, _) = Diamond();
        var ed = b.Editor;
        var sig = ed.InsertAfter(a.Producer!, ed.CreateNode("Sigmoid", [x])).Outputs[0];
        ed.ReplaceAllUsesWith(a, sig);
        Assert.Empty(a.Uses);
        Assert.Equal([("Neg", 0), ("Add", 0)], sig.Uses.Select(u => (u.Node.OpType, u.InputIndex)));
        Assert.Same(sig, bv.Producer!.Inputs[0]);
        ed.Remove(a.Producer!);
        Assert.Empty(GraphVerifier.Verify(b.Graph));
        Assert.Equal(["Sigmoid", "Neg", "Add"], b.Graph.Nodes.Select(n => n.OpType));
    }

    [Fact]
    public void RemovingAUsedNodeIsRefused()
    {
        var (b, _, a, _, _) = Diamond();
        var e = Assert.Throws<InvalidOperationException>(() => b.Editor.Remove(a.Producer!));
        Assert.Contains("Relu", e.Message);
        Assert.Contains("still used", e.Message);
    }

    [Fact]
    public void NodesCanBeRemovedWhileIterating()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 4);
        var v = x;
        for (int i = 0; i < 6; i++)
            v = b.Op(i % 2 == 0 ? "Identity" : "Relu", v);
        b.Output(v);
        var ed = b.Editor;
        int visited = 0;
        foreach (var n in b.Graph.Nodes)
        {
            visited++;
            if (n.OpType == "Identity")
            {
                ed.ReplaceAllUsesWith(n.Outputs[0], n.Inputs[0]!);
                ed.Remove(n);
            }
        }
        Assert.Equal(6, visited);
        Assert.Equal(["Relu", "Relu", "Relu"], b.Graph.Nodes.Select(n => n.OpType));
        Assert.Empty(GraphVerifier.Verify(b.Graph));
    }

    [Fact]
    public void SetInputAndOptionalInputsAreTracked()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 4);
        var lo = b.Initializer("lo", [0f], 1);
        var clip = b.Graph.Edit().AddNode("Clip", [x, null, lo]);
        b.Output(clip.Outputs[0]);
        Assert.Null(clip.Inputs[1]);
        b.Editor.SetInput(clip, 1, lo);
        b.Editor.SetInput(clip, 2, null);
        Assert.Equal([1], lo.Uses.Select(u => u.InputIndex));
        Assert.Contains("Clip(%x, %lo, \"\")", GraphPrinter.NodeLine(clip), StringComparison.Ordinal);
    }

    [Fact]
    public void RenameUpdatesNamesAndRefusesDuplicates()
    {
        var (b, _, a, _, _) = Diamond();
        b.Editor.Rename(a, "relu_out");
        Assert.Same(a, b.Graph.FindValue("relu_out"));
        Assert.Throws<ArgumentException>(() => b.Editor.Rename(a, "x"));
    }

    [Fact]
    public void TopologicalSortIsStableAndFixesOrder()
    {
        var (b, _, a, bv, y) = Diamond();
        var ed = b.Editor;
        // Move Add to the front: Add needs Relu and Neg, so sorting puts it back last.
        ed.InsertBefore(a.Producer!, y.Producer!);
        Assert.Equal(["Add", "Relu", "Neg"], b.Graph.Nodes.Select(n => n.OpType));
        // Out of order is not a cycle: the verifier accepts it, sorting repairs it.
        Assert.Empty(GraphVerifier.Verify(b.Graph));
        ed.SortTopologically();
        Assert.Equal(["Relu", "Neg", "Add"], b.Graph.Nodes.Select(n => n.OpType));
        // An independent node keeps its place relative to others.
        var c = ed.InsertBefore(bv.Producer!, ed.CreateNode("Abs", [b.Graph.Inputs[0]]));
        ed.SortTopologically();
        Assert.Equal(["Relu", "Abs", "Neg", "Add"], b.Graph.Nodes.Select(n => n.OpType));
        Assert.Same(c, NodeList.NextOf(a.Producer!));
    }

    [Fact]
    public void VerifierReportsCycleNamingTheNodes()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 4);
        var ed = b.Editor;
        var n1 = ed.AddNode("Add", [x, x], name: "first");
        var n2 = ed.AddNode("Mul", [n1.Outputs[0], x], name: "second");
        ed.SetInput(n1, 1, n2.Outputs[0]);
        b.Output(n2.Outputs[0]);
        var errors = GraphVerifier.Verify(b.Graph);
        var cycle = Assert.Single(errors);
        Assert.Contains("cycle", cycle.Message);
        Assert.Contains("'first' (Add, opset 17)", cycle.Message);
        Assert.Contains("'second' (Mul, opset 17)", cycle.Message);
        var e = Assert.Throws<OnnxModelException>(() => ed.SortTopologically());
        Assert.Contains("cycle", e.Message);
    }

    [Fact]
    public void VerifierReportsDanglingInputAndDuplicateNames()
    {
        var model = new GraphBuilder().Build();
        var proto = model.ToProto();
        proto.Graph.Input.Add(new Onnx.ValueInfoProto { Name = "x" });
        proto.Graph.Node.Add(new Onnx.NodeProto { Name = "r1", OpType = "Relu", Input = { "x" }, Output = { "y" } });
        proto.Graph.Node.Add(new Onnx.NodeProto { Name = "r2", OpType = "Relu", Input = { "nowhere" }, Output = { "y" } });
        proto.Graph.Output.Add(new Onnx.ValueInfoProto { Name = "y" });
        using var m = Model.FromProto(proto, new LoadOptions { Verify = false });
        var messages = GraphVerifier.Verify(m.Graph).Select(e => e.Message).ToList();
        Assert.Contains(messages, s => s.Contains("node 'r2' (Relu, opset 17)") && s.Contains("'nowhere' names no value"));
        Assert.Contains(messages, s => s.Contains("node 'r2' (Relu, opset 17)") && s.Contains("output 'y' is already defined"));
        var e = Assert.Throws<OnnxModelException>(() => Model.FromProto(proto));
        Assert.Contains("node 'r2'", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void SubgraphsResolveOuterScopeValues()
    {
        var b = new GraphBuilder(opset: 17);
        var cond = b.Input("cond", ElementType.Bool);
        var x = b.Input("x", ElementType.Float, 3);
        var scaled = b.Op("Mul", x, x);
        var then = b.Subgraph("then");
        then.Output(then.Op("Relu", scaled));
        var els = b.Subgraph("else");
        els.Output(els.Op("Neg", x));
        var y = b.Op("If", [cond], ("then_branch", then.Graph), ("else_branch", els.Graph));
        b.Output(y);
        var model = b.Build();

        Assert.Same(y.Producer, then.Graph.OwningNode);
        Assert.Same(b.Graph, then.Graph.Parent);
        Assert.Same(model, then.Graph.Model);
        Assert.Contains(scaled.Uses, u => u.Node.OpType == "Relu");
        Assert.Same(scaled, then.Graph.Lookup("mul_out"));
        Assert.Equal([scaled], TopologicalOrder.OuterScopeValues(then.Graph));
        Assert.Empty(GraphVerifier.Verify(model.Graph));

        // The If depends on Mul through its subgraph: moving it first is a broken order, and sorting repairs it.
        b.Editor.InsertBefore(scaled.Producer!, y.Producer!);
        b.Editor.SortTopologically();
        Assert.Equal(["Mul", "If"], b.Graph.Nodes.Select(n => n.OpType));

        // Round trip keeps the outer reference resolvable.
        using var again = Model.FromBytes(model.ToBytes());
        var relu = again.Graph.AllNodes().Single(n => n.OpType == "Relu");
        Assert.Same(again.Graph.FindValue("mul_out"), relu.Inputs[0]);
        Assert.Equal(GraphPrinter.Print(model), GraphPrinter.Print(again));

        // Removing the If drops the subgraph's use of the outer value.
        b.Editor.RemoveOutput(0);
        b.Editor.Remove(y.Producer!);
        Assert.DoesNotContain(scaled.Uses, u => u.Node.OpType == "Relu");
    }

    [Fact]
    public void EditorRefusesValuesFromUnrelatedGraphs()
    {
        var b1 = new GraphBuilder();
        var x1 = b1.Input("x", ElementType.Float, 2);
        var b2 = new GraphBuilder();
        b2.Input("y", ElementType.Float, 2);
        Assert.Throws<ArgumentException>(() => b2.Op("Relu", x1));
    }

    [Fact]
    public void AttributesKeepOrderAndKinds()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 2, 3);
        var t = b.Op("Transpose", [x], ("perm", new long[] { 1, 0 }), ("note", "hi"), ("alpha", 0.5f));
        var n = t.Producer!;
        Assert.Equal(["perm", "note", "alpha"], n.Attributes.Select(a => a.Name));
        Assert.Equal([1L, 0L], n.GetInts("perm"));
        Assert.Equal("hi", n.GetString("note"));
        Assert.Equal(0.5f, n.GetFloat("alpha", 0));
        n.Attributes.Set(Attribute.FromFloat("alpha", 2));
        Assert.Equal(["perm", "note", "alpha"], n.Attributes.Select(a => a.Name));
        Assert.Throws<ArgumentException>(() => n.Attributes.Add(Attribute.FromInt("perm", 1)));
        Assert.Throws<InvalidOperationException>(() => n.GetAttribute("perm")!.AsFloat());
    }
}
