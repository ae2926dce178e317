using Spt.Ir;
using Spt.Runtime.Training;

namespace Spt.Runtime.Tests;

/// <summary>
/// A hand-written training artifact for a bigram language model (logits = Gather(E, ids) @ W, causal-LM loss), so
/// that the runtime is tested apart from the compiler: grad.onnx holds an explicit backward (softmax - one-hot,
/// MatMul transposes, ScatterND-add for the embedding), optimizer.onnx a literal AdamW with global-norm clipping.
/// </summary>
internal static class TrainingArtifacts
{
    public const long Opset = 17;

    /// <summary>Writes the artifact for vocabulary <paramref name="vocab"/> and width <paramref name="width"/> into a new temp directory.</summary>
    public static string Bigram(string directory, int vocab = 256, int width = 8, int seed = 1, double maxGradNorm = 1.0, double weightDecay = 0.01,
        bool frozenEmbedding = false, float[]? embedding = null)
    {
        Directory.CreateDirectory(directory);
        var rng = new Random(seed);
        var e = embedding ?? [.. Enumerable.Range(0, vocab * width).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.2))];
        var w = Enumerable.Range(0, width * vocab).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.2)).ToArray();
        var parameters = new List<ParameterSpec>
        {
            new("E", ElementType.Float, [vocab, width], !frozenEmbedding),
            new("W", ElementType.Float, [width, vocab], true),
        };

        using (var grad = BuildForward(vocab, width, withBackward: true, parameters))
        {
            grad.Save(Path.Combine(directory, "grad.onnx"));
        }

        using (var eval = BuildForward(vocab, width, withBackward: false, parameters))
        {
            eval.Save(Path.Combine(directory, "eval.onnx"));
        }

        var optimizer = new OptimizerSpec(0.9, 0.999, 1e-8, weightDecay, maxGradNorm);
        using (var opt = BuildAdamW([.. parameters.Where(p => p.Trainable)], optimizer))
        {
            opt.Save(Path.Combine(directory, "optimizer.onnx"));
        }

        using (var state = Checkpoint.Build([Tensor.Create("E", e, vocab, width), Tensor.Create("W", w, width, vocab)], TrainerState.Initial(0)))
        {
            Checkpoint.WriteAtomically(state, Path.Combine(directory, "checkpoint"));
        }

        new TrainingManifest
        {
            DataInputs =
            [
                new("input_ids", ElementType.Int64, [new Dim("batch"), new Dim("sequence")], DataRole.InputIds),
                new("labels", ElementType.Int64, [new Dim("batch"), new Dim("sequence")], DataRole.Labels),
            ],
            Parameters = parameters,
            Loss = new LossSpec("causal_lm", -100, 0),
            Optimizer = optimizer,
            ModelOutputs = ["logits"],
        }.Save(directory);
        return directory;
    }

    private static Model BuildForward(int vocab, int width, bool withBackward, IReadOnlyList<ParameterSpec> parameters)
    {
        var b = new GraphBuilder(Opset);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        var labels = b.Input("labels", ElementType.Int64, "batch", "sequence");
        var e = b.Input("E", ElementType.Float, vocab, width);
        var w = b.Input("W", ElementType.Float, width, vocab);
        var x = b.Op("Gather", [e, ids], ("axis", 0L));                        // [B, S, D]
        var logits = b.Op("MatMul", x, w);                                      // [B, S, V]
        // labels[b, t] is the target of logits[b, t] (the runtime shifts); -100 positions carry no loss.
        var valid = b.Op("Not", b.Op("Equal", labels, I64(b, -100)));            // [B, S]
        var maskf = b.Op("Cast", [valid], ("to", (long)ElementType.Float));
        var safe = b.Op("Where", valid, labels, I64(b, 0));
        var mask3 = b.Op("Unsqueeze", maskf, I64(b, -1));                      // [B, S, 1]
        var onehot = b.Op("Mul", b.Op("OneHot", [safe, I64(b, vocab), b.Constant(Tensor.Create("oh", new float[] { 0, 1 }, 2))], ("axis", -1L)), mask3);
        var lp = b.Op("LogSoftmax", [logits], ("axis", -1L));
        var n = b.Op("ReduceSum", [maskf], ("keepdims", 0L));
        var loss = b.Op("Div", b.Op("Neg", b.Op("ReduceSum", [b.Op("Mul", lp, onehot)], ("keepdims", 0L))), n);
        b.Output(loss, "loss");
        b.Output(b.Op("Identity", loss), "task_loss");
        if (!withBackward)
        {
            b.Output(b.Op("Identity", logits), "logits");
            return b.Build();
        }

        // d loss / d logits = (softmax(logits) * mask - onehot) / N.
        var dlogits = b.Op("Div", b.Op("Sub", b.Op("Mul", b.Op("Exp", lp), mask3), onehot), n);
        var x2 = b.Op("Reshape", x, b.Constant(Tensor.Create("sx", new long[] { -1, width }, 2)));       // [B*S, D]
        var d2 = b.Op("Reshape", dlogits, b.Constant(Tensor.Create("sd", new long[] { -1, vocab }, 2))); // [B*S, V]
        var grads = new Dictionary<string, Value>
        {
            ["W"] = b.Op("MatMul", b.Op("Transpose", [x2], ("perm", new long[] { 1, 0 })), d2),
        };
        if (parameters[0].Trainable)
        {
            var dx = b.Op("MatMul", dlogits, b.Op("Transpose", [w], ("perm", new long[] { 1, 0 })));  // [B, S, D]
            var zeros = b.Op("ConstantOfShape", b.Op("Shape", e));
            grads["E"] = b.Op("ScatterND", [zeros, b.Op("Unsqueeze", ids, I64(b, -1)), dx], ("reduction", "add"));
        }

        foreach (var p in parameters.Where(p => p.Trainable))
        {
            var acc = b.Input("grad_acc." + p.Name, ElementType.Float, [.. p.Shape.Select(d => (object)d)]);
            b.Output(b.Op("Add", acc, grads[p.Name]), "grad_acc_out." + p.Name);
        }

        return b.Build();
    }

    /// <summary>AdamW exactly as torch.optim.AdamW, with global-norm clipping before it (max_norm 0 = off).</summary>
    public static Model BuildAdamW(IReadOnlyList<ParameterSpec> trainable, OptimizerSpec o)
    {
        var b = new GraphBuilder(Opset);
        var lr = b.Input("lr", ElementType.Float);
        var step = b.Input("step", ElementType.Float);
        var scale = b.Input("grad_scale", ElementType.Float);
        Value F(double v) => b.Constant(Tensor.Scalar(b.Graph.UniqueName("c"), (float)v));
        var grads = new List<Value>();
        var squares = new List<Value>();
        foreach (var p in trainable)
        {
            b.Input(p.Name, ElementType.Float, [.. p.Shape.Select(d => (object)d)]);
            var g = b.Op("Mul", b.Input("grad." + p.Name, ElementType.Float, [.. p.Shape.Select(d => (object)d)]), scale);
            b.Input("m." + p.Name, ElementType.Float, [.. p.Shape.Select(d => (object)d)]);
            b.Input("v." + p.Name, ElementType.Float, [.. p.Shape.Select(d => (object)d)]);
            grads.Add(g);
            squares.Add(b.Op("ReduceSum", [b.Op("Mul", g, g)], ("keepdims", 0L)));
        }

        var norm = b.Op("Sqrt", squares.Count == 1 ? squares[0] : b.Op("Sum", [.. squares]));
        b.Output(norm, "grad_norm");
        Value? coef = o.MaxGradNorm > 0
            ? b.Op("Min", F(1), b.Op("Div", F(o.MaxGradNorm), b.Op("Add", norm, F(1e-6))))
            : null;
        var bc1 = b.Op("Sub", F(1), b.Op("Pow", F(o.Beta1), step));
        var bc2 = b.Op("Sub", F(1), b.Op("Pow", F(o.Beta2), step));
        for (var i = 0; i < trainable.Count; i++)
        {
            var name = trainable[i].Name;
            var p = b.Graph.FindValue(name)!;
            var m = b.Graph.FindValue("m." + name)!;
            var v = b.Graph.FindValue("v." + name)!;
            var g = coef is null ? grads[i] : b.Op("Mul", grads[i], coef);
            var decayed = b.Op("Sub", p, b.Op("Mul", b.Op("Mul", lr, F(o.WeightDecay)), p));
            var m2 = b.Op("Add", b.Op("Mul", F(o.Beta1), m), b.Op("Mul", F(1 - o.Beta1), g));
            var v2 = b.Op("Add", b.Op("Mul", F(o.Beta2), v), b.Op("Mul", F(1 - o.Beta2), b.Op("Mul", g, g)));
            var denom = b.Op("Add", b.Op("Div", b.Op("Sqrt", v2), b.Op("Sqrt", bc2)), F(o.Epsilon));
            var update = b.Op("Mul", b.Op("Div", lr, bc1), b.Op("Div", m2, denom));
            b.Output(b.Op("Sub", decayed, update), "new." + name);
            b.Output(m2, "new.m." + name);
            b.Output(v2, "new.v." + name);
        }

        return b.Build();
    }

    private static Value I64(GraphBuilder b, long v) => b.Constant(Tensor.Create(b.Graph.UniqueName("k"), new[] { v }, 1));
}
