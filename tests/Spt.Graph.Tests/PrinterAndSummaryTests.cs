namespace Spt.Ir.Tests;

/// <summary>Golden dump and model summary.</summary>
public sealed class PrinterAndSummaryTests
{
    private static Model Sample()
    {
        var b = new GraphBuilder(opset: 17);
        var x = b.Input("x", ElementType.Float, "B", "S", 8);
        var cond = b.Input("flag", ElementType.Bool);
        var w = b.Initializer("w", new float[32], 8, 4);
        var mm = b.Op("MatMul", x, w);
        mm.Type = new TensorType(ElementType.Float, [new Dim("B"), new Dim("S"), new Dim(4)]);
        var parts = b.Ops("Split", [mm, null], 2, ("axis", -1L));
        var then = b.Subgraph("then");
        then.Output(then.Op("Relu", parts[0]));
        var els = b.Subgraph("else");
        els.Output(els.Op("Identity", parts[1]));
        var y = b.Op("If", [cond], ("then_branch", then.Graph), ("else_branch", els.Graph));
        b.Output(b.DomainOp("com.microsoft", "Gelu", [y]), ElementType.Float, "B", "S", 2);
        b.Opset("com.microsoft", 1);
        return b.Build();
    }

    [Fact]
    public void DumpIsStable()
    {
        const string Expected = """
            model ir8 opsets(ai.onnx:17, com.microsoft:1)
            graph main (%x:f32[B,S,8], %flag:bool[]) -> (%gelu_out:f32[B,S,2])
              init %w:f32[8,4]
              %matmul_out:f32[B,S,4] = MatMul(%x, %w)
              %split_out, %split_out_1 = Split(%matmul_out, "")  {axis=-1}
              %if_out = If(%flag)  {then_branch=graph(then), else_branch=graph(else)}
                then_branch:
                  graph then () -> (%relu_out)
                    %relu_out = Relu(%split_out)
                else_branch:
                  graph else () -> (%identity_out)
                    %identity_out = Identity(%split_out_1)
              %gelu_out:f32[B,S,2] = com.microsoft::Gelu(%if_out)

            """;
        var model = Sample();
        Assert.Equal(Expected.Replace("\r\n", "\n", StringComparison.Ordinal), GraphPrinter.Print(model));
        using var again = Model.FromBytes(model.ToBytes());
        Assert.Equal(GraphPrinter.Print(model), GraphPrinter.Print(again));
    }

    [Fact]
    public void SummaryCountsInterfaceNodesAndParameters()
    {
        var model = Sample();
        // Old-style model: an initializer also listed as a graph input is a parameter, not an input.
        var proto = model.ToProto();
        proto.Graph.Input.Add(new Onnx.ValueInfoProto { Name = "w", Type = new TensorType(ElementType.Float, [new Dim(8), new Dim(4)]).ToProto() });
        using var m = Model.FromProto(proto);
        var s = ModelSummary.Of(m);
        Assert.Equal(8, s.IrVersion);
        Assert.Equal(["x", "flag"], s.Inputs.Select(v => v.Name));
        Assert.Equal(["B", "S", "8"], s.Inputs[0].Dims);
        Assert.Equal(ElementType.Float, s.Inputs[0].ElementType);
        Assert.Equal("f32[B,S,2]", s.Outputs.Single().TypeText);
        Assert.Equal(4, s.NodeCount);
        Assert.Equal(6, s.TotalNodeCount);
        Assert.Equal(2, s.SubgraphCount);
        Assert.Equal(32, s.ParameterCount);
        Assert.Equal(128, s.ParameterBytes);
        Assert.Equal(0, s.ExternalParameterBytes);
        Assert.Contains(new KeyValuePair<string, int>("com.microsoft::Gelu", 1), s.OpHistogram);
        Assert.Equal("ai.onnx", s.ToString().Split('\n')[1]["opsets: ".Length..].Split(':')[0]);
    }
}
