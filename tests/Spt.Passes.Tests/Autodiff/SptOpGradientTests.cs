using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Tests.Training;
using Spt.Passes.Training;
using static Spt.Passes.Tests.Autodiff.GradientCheck;

namespace Spt.Passes.Tests.Autodiff;

/// <summary>
/// Finite-difference checks of the spt ops' gradient rules (SparseAttention, RoutedFFN, PQLoss), alone and inside a
/// whole small model compiled with <see cref="TrainingCompiler"/>, with the native custom-op library loaded in ORT.
/// </summary>
public sealed class SptOpGradientTests
{
    private static GraphBuilder WithSpt(GraphBuilder b)
    {
        b.Opset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        return b;
    }

    [Fact]
    public void SparseAttentionRuleMatchesFiniteDifferences()
    {
        // Q, K, V [1, 2, 5, 4]; 3 fixed keys per query (some repeated, some -1), causal, clamp active for large logits.
        var (b, feeds) = Start(17, symbolic: true, ("q", [1, 2, 5, 4], -2, 2), ("k", [1, 2, 5, 4], -2, 2), ("v", [1, 2, 5, 4], -1, 1));
        WithSpt(b);
        var idx = new int[2 * 5 * 3];
        for (int h = 0; h < 2; h++)
        {
            for (int i = 0; i < 5; i++)
            {
                idx[(h * 5 + i) * 3 + 0] = i;
                idx[(h * 5 + i) * 3 + 1] = (i + h) % (i + 1);
                idx[(h * 5 + i) * 3 + 2] = i >= 2 ? 1 : -1;
            }
        }
        var indices = b.Initializer(Tensor.Create("indices", idx, 1, 2, 5, 3));
        Value V(string n) => b.Graph.FindValue(n)!;
        var y = b.Node("SparseAttention", [V("q"), V("k"), V("v"), indices], 2, [("scale", 0.8f), ("clamp", 2.5f), ("causal", 1L)], CustomOpLibrary.Domain).Outputs[0];
        double error = Run(new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["q", "k", "v"] }, h: 1e-3, customOps: true);
        Assert.True(error <= 1e-2, $"relative error {error:E2}");
    }

    /// <summary>
    /// SparseAttentionGrad reads the forward's inputs at their grad positions: P at its slot and the key padding mask
    /// at its own (the mask once landed in P's slot and was overwritten, so the backward ran without it).
    /// </summary>
    [Fact]
    public void SparseAttentionRuleFeedsTheKeyPaddingMaskAndPAtTheirGradPositions()
    {
        var (b, feeds) = Start(17, symbolic: false, ("q", [1, 2, 5, 4], -2, 2), ("k", [1, 2, 5, 4], -2, 2), ("v", [1, 2, 5, 4], -1, 1));
        WithSpt(b);
        var idx = new int[2 * 5 * 3];
        for (int i = 0; i < idx.Length; i++)
            idx[i] = i % 5;
        var indices = b.Initializer(Tensor.Create("indices", idx, 1, 2, 5, 3));
        var mask = b.Initializer(Tensor.Create("mask", new long[] { 1, 1, 1, 0, 1 }, 1, 5));
        Value V(string n) => b.Graph.FindValue(n)!;
        var node = b.Node("SparseAttention", [V("q"), V("k"), V("v"), indices, mask], 2, [("causal", 0L)], CustomOpLibrary.Domain);
        double error = Run(new Case { Builder = b, Output = node.Outputs[0], Feeds = feeds, Differentiate = ["q", "k", "v"] }, h: 1e-3, customOps: true);
        Assert.True(error <= 1e-2, $"relative error {error:E2}");

        var grad = Assert.Single(b.Graph.Nodes, n => n.OpType == AttentionOps.SparseAttentionGrad.Name);
        Assert.True(grad.Inputs.Count > AttentionOps.GradKeyPadding, "SparseAttentionGrad has no key padding mask input");
        Assert.Same(node.Outputs[AttentionOps.P], grad.Inputs[AttentionOps.GradP]);
        Assert.Same(mask, grad.Inputs[AttentionOps.GradKeyPadding]);
        Assert.Same(indices, grad.Inputs[AttentionOps.Indices + AttentionOps.GradShift]);
    }

    [Fact]
    public void PQLossRuleMatchesFiniteDifferences()
    {
        var (b, feeds) = Start(17, symbolic: false, ("z", [6, 4], -1, 1), ("codebook", [2, 3, 2], -1, 1));
        WithSpt(b);
        var loss = b.DomainOp(CustomOpLibrary.Domain, "PQLoss", [b.Graph.FindValue("z")!, b.Graph.FindValue("codebook")!]);
        double error = Run(new Case { Builder = b, Output = loss, Feeds = feeds, Differentiate = ["z", "codebook"] }, h: 1e-3, customOps: true);
        Assert.True(error <= 1e-2, $"relative error {error:E2}");
    }

    [Fact]
    public void RoutedFfnRuleMatchesFiniteDifferences()
    {
        var (b, feeds) = Start(17, symbolic: true, ("x", [2, 3, 4], -1, 1), ("w1", [4, 8], -1, 1), ("b1", [8], -0.5f, 0.5f),
            ("w2", [8, 4], -1, 1), ("b2", [4], -0.5f, 0.5f), ("wr", [4, 2], -2, 2), ("br", [2], -0.5f, 0.5f));
        WithSpt(b);
        Value V(string n) => b.Graph.FindValue(n)!;
        var y = b.Node("RoutedFFN", [V("x"), V("w1"), V("b1"), V("w2"), V("b2"), V("wr"), V("br")], 1,
            [("n_blocks", 2L), ("blocks_per_token", 1L), ("activation", "gelu"), ("gate", "2sigmoid_all"), ("frozen_base", 0L)], CustomOpLibrary.Domain).Outputs[0];
        double error = Run(new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["x", "w1", "b1", "w2", "b2", "wr", "br"] }, h: 1e-3, customOps: true);
        Assert.True(error <= 1e-2, $"relative error {error:E2}");
    }

    [Fact]
    public void FrozenBaseWeightsThatAreTrainableAreReported()
    {
        var (b, _) = Start(17, symbolic: false, ("x", [2, 4], -1, 1));
        WithSpt(b);
        var w1 = b.Initializer("w1", Random(32, -1, 1, 1), 4, 8);
        var w2 = b.Initializer("w2", Random(32, -1, 1, 2), 8, 4);
        var wr = b.Initializer("wr", Random(8, -1, 1, 3), 4, 2);
        var y = b.Node("RoutedFFN", [b.Graph.FindValue("x"), w1, null, w2, null, wr], 1, [("n_blocks", 2L), ("blocks_per_token", 1L)], CustomOpLibrary.Domain, name: "ffn").Outputs[0];
        b.Output(y, "out");
        var model = b.Build();
        // By default the compiler freezes what frozen_base = 1 freezes: only the router trains.
        var art = TrainingCompiler.Compile(model, new TrainingOptions { Loss = LossKind.Mse });
        Assert.Equal(["wr"], art.Parameters.Where(p => p.Trainable).Select(p => p.Name));
        // Listing a base weight as trainable explicitly asks for a gradient the op cannot give: reported by name.
        model.Metadata.Add(new("spt.trainable", "w1,wr"));
        var ex = Assert.Throws<OnnxModelException>(() => TrainingCompiler.Compile(model, new TrainingOptions { Loss = LossKind.Mse }));
        Assert.Contains("'ffn'", ex.Message);
        Assert.Contains("frozen_base", ex.Message);
    }

    /// <summary>
    /// A whole tiny SPT decoder built by hand (embedding, Q/K/V projections, PQEncode + PQTopK + SparseAttention,
    /// RoutedFFN, LM head), compiled for causal-LM training with the PQ codebook loss; d loss / d parameter from
    /// grad.onnx against central differences of eval.onnx's loss, for sampled elements of every parameter.
    /// </summary>
    [Fact]
    public void WholeSptModelGradientsMatchFiniteDifferences()
    {
        const int vocab = 11, d = 8, heads = 2, e = 4, seq = 6;
        var b = WithSpt(new GraphBuilder(17));
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        int seed = 10;
        Value P(string name, float scale, params long[] dims) =>
            b.Initializer(name, [.. Random((int)dims.Aggregate(1L, (x, y) => x * y), -scale, scale, seed++)], dims);
        var emb = P("embed.weight", 1f, vocab, d);
        var wq = P("q.weight", 0.6f, d, d);
        var wk = P("k.weight", 0.6f, d, d);
        var wv = P("v.weight", 0.6f, d, d);
        var codebook = P("attn.codebook", 1f, 2, 3, 2);
        var w1 = P("ffn.w1", 0.5f, d, 16);
        var b1 = P("ffn.b1", 0.2f, 16);
        var w2 = P("ffn.w2", 0.5f, 16, d);
        var wr = P("ffn.router", 1f, d, 2);
        var head = P("lm_head", 0.5f, d, vocab);
        var headsShape = b.Initializer("heads_shape", [0L, 0, heads, e], 4);
        var mergedShape = b.Initializer("merged_shape", [0L, 0, d], 3);

        var x = b.Op("Gather", emb, ids); // [B, S, d]
        Value Heads(Value w) => b.Op("Transpose", [b.Op("Reshape", b.Op("MatMul", x, w), headsShape)], ("perm", new long[] { 0, 2, 1, 3 }));
        var q = Heads(wq);
        var k = Heads(wk);
        var v = Heads(wv); // [B, H, S, E]
        var cq = b.DomainOp(CustomOpLibrary.Domain, "PQEncode", [q, codebook]);
        var ck = b.DomainOp(CustomOpLibrary.Domain, "PQEncode", [k, codebook]);
        var sel = b.DomainOp(CustomOpLibrary.Domain, "PQTopK", [cq, ck], ("keys_per_query", (long)seq), ("causal", 1L));
        var attn = b.Node("SparseAttention", [q, k, v, sel], 2, [("causal", 1L)], CustomOpLibrary.Domain).Outputs[0];
        var merged = b.Op("Reshape", b.Op("Transpose", [attn], ("perm", new long[] { 0, 2, 1, 3 })), mergedShape);
        var h1 = b.Op("Add", x, merged);
        var ffn = b.Node("RoutedFFN", [h1, w1, b1, w2, null, wr], 1,
            [("n_blocks", 2L), ("blocks_per_token", 1L), ("activation", "relu"), ("gate", "2sigmoid_all"), ("frozen_base", 0L)], CustomOpLibrary.Domain).Outputs[0];
        var logits = b.Op("MatMul", b.Op("Add", h1, ffn), head);
        b.Output(logits, "logits");
        var model = b.Build();

        var art = TrainingCompiler.Compile(model, new TrainingOptions { Loss = LossKind.CausalLm, PqWeight = 0.5f });
        Assert.Equal(2, art.PqTerms);
        Assert.Contains(art.Grad.Graph.Nodes, n => n.OpType == "SparseAttentionGrad");
        Assert.Contains(art.Grad.Graph.Nodes, n => n.OpType == "RoutedFFNGrad");
        Assert.Equal(2, art.Grad.Graph.Nodes.Count(n => n.OpType == "PQLossGrad"));
        Assert.DoesNotContain(art.Grad.Graph.AllNodes(), n => n.Domain == "com.microsoft");

        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal)
        {
            ["input_ids"] = Tensor.Create("input_ids", new long[] { 1, 4, 7, 2, 9, 3, 0, 5, 10, 6, 8, 2 }, 2, seq),
            ["labels"] = Tensor.Create("labels", new long[] { 4, 7, 2, 9, 3, 0, 5, -100, 6, 8, 2 }.Concat(new long[] { 1 }).Take(10).ToArray(), 2, seq - 1),
        };
        foreach (var p in art.Parameters)
            feeds[p.Name] = model.Graph.FindValue(p.Name)!.Initializer!;
        AssertGradientsMatchFiniteDifferences(art, feeds);
    }

    /// <summary>
    /// A real export rewritten by the SPT pipeline (OPT, LoRA rank 4, routed FFN with its sigmoid gates, sparse
    /// attention with PQ codebooks) and compiled for training: every trainable parameter of the SPT parameter set
    /// (LoRA factors, routers, codebooks, norms) against central differences of eval.onnx. All keys and blocks stay
    /// selected so the finite differences cannot flip a PQ selection or a routing decision.
    /// </summary>
    [Fact]
    public void RewrittenExportGradientsMatchFiniteDifferences()
    {
        using var model = Spt.Passes.Tests.Fixtures.Load("opt_op17.onnx");
        var report = SptOptimizer.Optimize(model, new SptOptions { LoraRank = 4, TopK = 16, Blocks = 4, Active = 4, Seed = 3 });
        Assert.Equal(2, report.AttentionRewritten);
        Assert.Equal(2, report.FfnRewritten);

        // No PQ auxiliary term here: its L1 distances and argmin put kinks within a finite-difference step of many
        // Q/K values. The PQ term's gradient is checked in fp64 natively and inside the hand-built model above.
        var art = TrainingCompiler.Compile(model, new TrainingOptions { Loss = LossKind.CausalLm, PqWeight = 0 });
        Assert.Contains(art.Grad.Graph.Nodes, n => n.OpType == "SparseAttentionGrad");
        Assert.Contains(art.Grad.Graph.Nodes, n => n.OpType == "RoutedFFNGrad");
        Assert.Contains(art.Parameters, p => p.Trainable && p.Name.Contains("_lora_"));

        const int seq = 6;
        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal)
        {
            ["input_ids"] = Tensor.Create("input_ids", new long[] { 1, 40, 7, 22, 9, 33, 0, 5, 60, 16, 8, 2 }, 2, seq),
            ["labels"] = Tensor.Create("labels", new long[] { 40, 7, 22, 9, 33, 5, 60, -100, 8, 2 }, 2, seq - 1),
        };
        var rng = new Random(11);
        foreach (var p in art.Parameters)
        {
            var tensor = model.Graph.FindValue(p.Name)!.Initializer!;
            // LoRA B factors start at zero, which makes every A gradient zero: give them values first.
            if (p.Trainable && tensor.ToFloatArray().All(v => v == 0))
                tensor = Tensor.Create(p.Name, Enumerable.Range(0, (int)tensor.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray(), [.. p.Shape]);
            feeds[p.Name] = tensor;
        }

        // Codebooks get their gradient only from the PQ term, which is off here.
        AssertGradientsMatchFiniteDifferences(art, feeds, skip: name => name.EndsWith("codebook", StringComparison.Ordinal));
    }

    // d loss / d parameter from grad.onnx (zero accumulators) against central differences of eval.onnx's loss: for
    // every trainable parameter, four random elements, the largest-gradient element, and the directional derivative
    // along a random ±1 direction over the whole tensor (which checks every element at once with a signal far above
    // float32 resolution, where a single small-gradient element's difference is mostly rounding).
    private static void AssertGradientsMatchFiniteDifferences(TrainingArtifacts art, Dictionary<string, Tensor> feeds, Func<string, bool>? skip = null)
    {
        var gradFeeds = new Dictionary<string, Tensor>(feeds);
        foreach (var p in art.Parameters.Where(p => p.Trainable))
            gradFeeds[ArtifactContract.AccumulatorPrefix + p.Name] = Tensor.Create("", new float[p.Shape.Aggregate(1L, (a, c) => a * c)], [.. p.Shape]);

        using var grad = new OrtRunner(art.Grad, customOps: true);
        using var eval = new OrtRunner(art.Eval, customOps: true);
        var analytic = grad.Run(gradFeeds);
        var evalLoss = eval.Run(feeds)["loss"].ToFloatArray()[0];
        Assert.Equal(evalLoss, analytic["loss"].ToFloatArray()[0], 5);
        // The PQ auxiliary term adds to the task loss exactly when it is weighted in.
        Assert.Equal(art.Options.PqWeight > 0, analytic["loss"].ToFloatArray()[0] > analytic["task_loss"].ToFloatArray()[0]);

        const float h = 2e-3f;
        // Richardson extrapolation of two central differences (steps h and h/2) cancels the h² error term, which
        // is large where the loss curves strongly. The float32 loss of a perturbed model is off by a few ulp (its
        // reductions round differently; ±2 ulp measured on the OPT export, 4 allowed): each central difference
        // C(s) is off by up to 4 ulp / s, the extrapolation (4 C(h/2) - C(h)) / 3 by 3 · 4 ulp / h. That is the
        // noise floor. An element whose gradient moves the loss by less than an ulp over the step (|g| h < ulp)
        // has a difference made of rounding alone; the directional check covers it.
        double lossUlp = MathF.BitIncrement(evalLoss) - evalLoss;
        double noise = 3 * 4 * lossUlp / h;
        var rng = new Random(7);
        foreach (var p in art.Parameters.Where(p => p.Trainable && skip?.Invoke(p.Name) != true))
        {
            var values = feeds[p.Name].ToFloatArray();
            var a = analytic[ArtifactContract.AccumulatorOutputPrefix + p.Name].ToFloatArray();
            // The Richardson-extrapolated directional derivative of the loss along `direction` (unit steps per element).
            double Derivative(float[] direction)
            {
                double Loss(float step)
                {
                    var copy = (float[])values.Clone();
                    for (int j = 0; j < copy.Length; j++)
                        copy[j] += step * direction[j];
                    var f = new Dictionary<string, Tensor>(feeds) { [p.Name] = Tensor.Create(p.Name, copy, [.. p.Shape]) };
                    return eval.Run(f)["loss"].ToFloatArray()[0];
                }
                double Central(float step) => (Loss(step) - Loss(-step)) / (2 * step);
                return (4 * Central(h / 2) - Central(h)) / 3;
            }

            var picks = Enumerable.Range(0, 4).Select(_ => rng.Next(values.Length)).Append(Array.IndexOf(a, a.MaxBy(Math.Abs))).Distinct();
            double norm = 0;
            foreach (int i in picks)
            {
                var unit = new float[values.Length];
                unit[i] = 1;
                double fd = Derivative(unit);
                norm += fd * fd;
                Assert.True(Math.Abs(a[i] - fd) <= 2e-2 * Math.Abs(fd) + noise,
                    $"{p.Name}[{i}]: analytic {a[i]:E4}, finite difference {fd:E4} (noise floor {noise:E2})");
            }

            // d loss / d step along v is g · v.
            var signs = Enumerable.Range(0, values.Length).Select(_ => rng.Next(2) == 0 ? -1f : 1f).ToArray();
            double along = 0;
            for (int j = 0; j < a.Length; j++)
                along += (double)a[j] * signs[j];
            double fdAlong = Derivative(signs);
            Assert.True(Math.Abs(along - fdAlong) <= 2e-2 * Math.Abs(fdAlong) + noise,
                $"{p.Name} along a random ±1 direction: analytic {along:E4}, finite difference {fdAlong:E4} (noise floor {noise:E2})");
            Assert.True(Math.Max(Math.Sqrt(norm), Math.Abs(fdAlong)) > noise, $"{p.Name}: finite differences are below the noise floor");
        }
    }
}
