using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Recognition;

namespace Spt.Passes.Rewrites;

/// <summary>
/// Recognizes FFN blocks (see <c>FfnRecognition</c>) and rewrites the selected ones to SPT's routed FFN:
/// <code>
/// y = RoutedFFN(x, W1 [d, d_ff], b1?, W2 [d_ff, d], b2?, Wr [d, n_b], br [n_b], W3? (gated: up), LoRA factors?)
/// </code>
/// The two halves of a fused gate/up projection become W1 and W3 (new initializers holding its column ranges).
/// The router Wr, br ~ U(±1/√d) (seeded). Unselected blocks, or all with <c>--ffn keep</c>, stay dense and are
/// reported.
/// </summary>
public sealed class RoutedFfnRewrite(SptOptions options) : IPass
{
    /// <inheritdoc />
    public string Name => "routed-ffn";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var results = context.Result<RecognitionResults>();
        var shapes = new StaticShapes();
        var matches = new List<FfnMatch>();
        var claimed = new HashSet<Node>();
        foreach (var node in model.Graph.Nodes)
        {
            if (!Linear.ReadsConstantWeight(node) && node.OpType != "Add")
                continue;
            var lin = Linear.At(node.Outputs[0]);
            if (lin is null || claimed.Contains(lin.Node))
                continue;
            // A MatMul whose bias Add makes the linear is handled at the Add.
            if (node.OpType == "MatMul" && node.Outputs[0].Uses is [{ Node: { OpType: "Add" } add }] && Linear.At(add.Outputs[0]) is not null)
                continue;
            if (!FfnRecognition.IsCandidate(lin, out var hidden))
                continue;
            var (m, reason) = FfnRecognition.Match(lin, shapes);
            if (m is null)
            {
                results.AddUnmatched("ffn", hidden.Producer!, reason!);
                continue;
            }
            if (m.Region.Any(claimed.Contains))
                continue;
            foreach (var n in m.Region)
                claimed.Add(n);
            matches.Add(m);
        }

        bool changed = false;
        results.Ffn.Clear();
        for (int layer = 0; layer < matches.Count; layer++)
        {
            var m = matches[layer];
            var (d, dff) = m.Fc1Dims;
            var info = new FfnBlockInfo
            {
                Layer = layer,
                Activation = m.Activation,
                Fc1 = m.Fc1.Node.Name,
                Up = m.Up?.Node.Name,
                Fc2 = m.Fc2.Node.Name,
                DModel = d,
                DFf = dff,
                HasBias1 = (m.Fc1Bias ?? m.Fc1.Bias) != null,
                HasBias2 = m.Fc2.Bias != null,
                MatchedNodes = [.. m.Region.Distinct().Select(n => n.Name)],
            };
            results.Ffn.Add(info);
            info.KeptDenseReason = options.Ffn == FfnMode.Keep ? "FFN rewrite not requested (--ffn keep)"
                : !options.Selects(layer) ? $"layer {layer} not selected"
                : dff % options.Blocks != 0 ? $"d_ff {dff} is not divisible by the block count {options.Blocks}"
                : null;
            if (info.KeptDenseReason != null)
            {
                context.Info(Name, info.KeptDenseReason, m.Fc2.Node);
                continue;
            }
            Rewrite(model.Graph, m, info);
            changed = true;
        }
        return changed;
    }

    // A linear's weight as a row-major [in, out] matrix.
    private static float[] InOutMatrix(Linear lin)
    {
        var t = ConstantValue.Of(lin.Weight);
        bool transposed = lin.WeightIsOutIn;
        if (t is null)
        {
            // Transpose(W) of a constant W [b, a]: the value read is Wᵀ.
            t = ConstantValue.Of(lin.Weight.Producer!.Inputs[0])!;
            transposed = !transposed;
        }
        var data = t.ToFloatArray();
        if (!transposed)
            return data;
        long rows = t.Dims[0], cols = t.Dims[1];
        var r = new float[data.Length];
        for (long i = 0; i < rows; i++)
        {
            for (long j = 0; j < cols; j++)
                r[j * rows + i] = data[i * cols + j];
        }
        return r;
    }

    private void Rewrite(Graph graph, FfnMatch m, FfnBlockInfo info)
    {
        var editor = graph.Edit();
        var anchor = m.Fc2.Nodes[^1];
        string prefix = $"spt/ffn_{info.Layer}";
        long d = info.DModel, dff = info.DFf, nb = options.Blocks, r = options.LoraRank;
        long added = 0;

        Value InOut(Linear lin)
        {
            if (!lin.WeightIsOutIn)
                return lin.Weight;
            var t = editor.CreateNode("Transpose", [lin.Weight], 1, [Ir.Attribute.FromInts("perm", [1, 0])], "", graph.UniqueName(prefix + "/weight_in_out"));
            editor.InsertBefore(anchor, t);
            return t.Outputs[0];
        }

        Value Param(string name, float[] data, params long[] dims)
        {
            added += data.Length;
            return editor.AddInitializer(Tensor.Create(graph.UniqueName($"{prefix}/{name}"), data, dims));
        }

        // One column range of a fused projection as its own [in, count] weight (and [count] bias).
        (Value Weight, Value? Bias) Half(Linear lin, Columns cols, string what)
        {
            var (din, dout) = lin.Dims;
            float[] full = InOutMatrix(lin);
            var w = new float[din * cols.Count];
            for (long i = 0; i < din; i++)
                Array.Copy(full, i * dout + cols.Start, w, i * cols.Count, cols.Count);
            var weight = editor.AddInitializer(Tensor.Create(graph.UniqueName($"{lin.Weight.Name}/{what}"), w, din, cols.Count));
            Value? bias = null;
            if (lin.Bias is { } b && ConstantValue.Of(b) is { } bt)
                bias = editor.AddInitializer(Tensor.Create(graph.UniqueName($"{b.Name}/{what}"), bt.ToFloatArray().AsSpan((int)cols.Start, (int)cols.Count).ToArray(), cols.Count));
            return (weight, bias);
        }

        var schema = RoutedFfnOps.RoutedFfn;
        var inputs = new Value?[RoutedFfnOps.ForwardInputCount];
        inputs[RoutedFfnOps.X] = m.X;
        if (m.Fc1Cols is { } gateCols)
            (inputs[RoutedFfnOps.W1], inputs[RoutedFfnOps.B1]) = Half(m.Fc1, gateCols, "gate");
        else
        {
            inputs[RoutedFfnOps.W1] = InOut(m.Fc1);
            inputs[RoutedFfnOps.B1] = m.Fc1Bias ?? m.Fc1.Bias;
        }
        inputs[RoutedFfnOps.W2] = InOut(m.Fc2);
        inputs[RoutedFfnOps.B2] = m.Fc2.Bias;
        double bound = 1 / Math.Sqrt(d);
        inputs[RoutedFfnOps.Wr] = Param("router_weight", Init.Uniform(d * nb, bound, Init.SeedFor(options.Seed, "router_weight", info.Layer)), d, nb);
        inputs[RoutedFfnOps.Br] = Param("router_bias", Init.Uniform(nb, bound, Init.SeedFor(options.Seed, "router_bias", info.Layer)), nb);
        if (m.Up != null)
        {
            if (m.UpCols is { } upCols)
            {
                // The match refuses an up half with a nonzero bias, so its bias (if any) is dropped as zero.
                inputs[RoutedFfnOps.W3] = Half(m.Up, upCols, "up").Weight;
            }
            else
            {
                inputs[RoutedFfnOps.W3] = InOut(m.Up);
            }
        }
        if (r > 0)
        {
            // LoRA: A ~ N(0, 1), B = 0, no scaling (SPT §3.3).
            inputs[RoutedFfnOps.LoraA1] = Param("lora_a1", Init.Normal(d * r, Init.SeedFor(options.Seed, "lora_a1", info.Layer)), d, r);
            inputs[RoutedFfnOps.LoraB1] = Param("lora_b1", new float[r * dff], r, dff);
            inputs[RoutedFfnOps.LoraA2] = Param("lora_a2", Init.Normal(dff * r, Init.SeedFor(options.Seed, "lora_a2", info.Layer)), dff, r);
            inputs[RoutedFfnOps.LoraB2] = Param("lora_b2", new float[r * d], r, d);
            if (m.Up != null)
            {
                inputs[RoutedFfnOps.LoraA3] = Param("lora_a3", Init.Normal(d * r, Init.SeedFor(options.Seed, "lora_a3", info.Layer)), d, r);
                inputs[RoutedFfnOps.LoraB3] = Param("lora_b3", new float[r * dff], r, dff);
            }
        }
        int count = inputs.Length;
        while (count > 0 && inputs[count - 1] is null)
            count--;
        var node = editor.CreateNode(schema.Name, inputs.Take(count), 1,
            schema.NodeAttributes(
                (RoutedFfnOps.NBlocksAttr, nb),
                (RoutedFfnOps.BlocksPerTokenAttr, (long)(options.Exact ? nb : options.Active)),
                (RoutedFfnOps.ActivationAttr, m.Activation),
                (RoutedFfnOps.GateAttr, options.Exact ? RoutedFfnOps.NoGate : RoutedFfnOps.DefaultGate)),
            schema.Domain, graph.UniqueName(prefix + "/RoutedFFN"));
        editor.InsertBefore(anchor, node);
        editor.ReplaceAllUsesWith(m.Fc2.Output, node.Outputs[0], replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, [anchor]);
        info.Rewritten = true;
        info.RewrittenNode = node.Name;
        info.ParametersAdded = added;
    }
}
