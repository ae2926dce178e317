using Microsoft.ML.OnnxRuntime;

namespace Spt.Ir.Tests;

/// <summary>Build a graph, edit it, save it, run it in ONNX Runtime and check the numbers.</summary>
public sealed class EndToEndTests
{
    [Fact]
    public void BuiltAndEditedModelRunsInOrt()
    {
        // y = Relu(x @ W + b), x: [B, 4], W: [4, 3]
        float[] w = [1, -1, 0.5f, 2, 0, -0.5f, -1, 1, 1, 0.25f, 0.5f, -2];
        float[] bias = [0.1f, -0.2f, 0.3f];
        var b = new GraphBuilder(opset: 17);
        var x = b.Input("x", ElementType.Float, "B", 4);
        var mm = b.Op("MatMul", x, b.Initializer("W", w, 4, 3));
        var add = b.Op("Add", mm, b.Initializer("b", bias, 3));
        var y = b.Op("Relu", add);
        b.Output(y, "y");
        var model = b.Build();

        // Edit: scale the pre-activation by 2 before Relu: Relu(2 * (x @ W + b)).
        var ed = model.Graph.Edit();
        var two = ed.AddInitializer(Tensor.Scalar("two", 2f));
        var scale = ed.InsertAfter(add.Producer!, ed.CreateNode("Mul", [add, two]));
        ed.SetInput(y.Producer!, 0, scale.Outputs[0]);
        Assert.Empty(GraphVerifier.Verify(model.Graph));

        using var dir = TestData.CreateTempDir();
        string path = dir.File("e2e.onnx");
        model.Save(path);

        float[] input = [1, 2, 3, 4, -1, 0.5f, 0, 2];
        using var session = new InferenceSession(path, OrtHelpers.QuietOptions());
        using var xv = OrtValue.CreateTensorValueFromMemory(input, [2, 4]);
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, ["x"], [xv], ["y"]);
        var got = outputs[0].GetTensorDataAsSpan<float>().ToArray();

        var expected = new float[6];
        for (int r = 0; r < 2; r++)
        {
            for (int c = 0; c < 3; c++)
            {
                float s = bias[c];
                for (int k = 0; k < 4; k++)
                    s += input[r * 4 + k] * w[k * 3 + c];
                expected[r * 3 + c] = Math.Max(0, 2 * s);
            }
        }
        Assert.Equal(expected.Length, got.Length);
        for (int i = 0; i < got.Length; i++)
            Assert.Equal(expected[i], got[i], 5);
    }

    [Fact]
    public void IfWithOuterScopeReferenceRunsInOrt()
    {
        var b = new GraphBuilder(opset: 17);
        var cond = b.Input("cond", ElementType.Bool);
        var x = b.Input("x", ElementType.Float, 3);
        var sq = b.Op("Mul", x, x);
        var then = b.Subgraph("then");
        then.Output(then.Op("Relu", sq));
        var els = b.Subgraph("else");
        els.Output(els.Op("Neg", x));
        b.Output(b.Op("If", [cond], ("then_branch", then.Graph), ("else_branch", els.Graph)), "y");
        byte[] bytes = b.Build().ToBytes();

        using var session = new InferenceSession(bytes, OrtHelpers.QuietOptions());
        foreach (bool c in new[] { true, false })
        {
            using var cv = OrtValue.CreateTensorValueFromMemory(new[] { c }, []);
            using var xv = OrtValue.CreateTensorValueFromMemory(new[] { -2f, 0.5f, 3f }, [3]);
            using var ro = new RunOptions();
            using var outs = session.Run(ro, ["cond", "x"], [cv, xv], ["y"]);
            float[] expected = c ? [4f, 0.25f, 9f] : [2f, -0.5f, -3f];
            Assert.Equal(expected, outs[0].GetTensorDataAsSpan<float>().ToArray());
        }
    }
}
