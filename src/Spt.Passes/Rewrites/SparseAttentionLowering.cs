using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Recognition;

namespace Spt.Passes.Rewrites;

/// <summary>
/// Stage three of attention recognition: lowers each grown <c>spt.internal::AttentionCore</c> to SPT's sparse
/// attention, or expands it back to the dense ops when the block is not to be rewritten (not selected, attention
/// kept, head dim not a multiple of an explicit d_c, could not be grown). Without an
/// explicit d_c each layer gets the largest d_c up to 8 that divides its head dim, reported per block.. No AttentionCore survives this pass.
/// <code>
/// codebook [M, C, dc] ~ N(0, 1)                        // one per layer, shared by Q and K
/// codes_q = PQEncode(Q, codebook), codes_k = PQEncode(K, codebook)           // [B, H, S, M]
/// idx     = PQTopK(codes_q, codes_k, key_padding_mask?)                       // [B, H, Sq, L]
/// Y, P    = SparseAttention(Q, K, V, idx, key_padding_mask?)                 // Y [B, H, Sq, Ev]
/// </code>
/// With heads folded into the batch ([B·H, S, E]) the ops see [B·H, 1, S, E].
/// </summary>
public sealed class SparseAttentionLowering(SptOptions options) : IPass
{
    /// <inheritdoc />
    public string Name => "sparse-attention-lowering";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var results = context.Result<RecognitionResults>();
        var shapes = new StaticShapes();
        bool changed = false;
        foreach (var core in model.Graph.Nodes.Where(AttentionCoreOp.Is).ToList())
        {
            var info = results.CoreInfo.GetValueOrDefault(core);
            string? keep = info?.KeptDenseReason
                ?? (options.Attention == AttentionMode.Keep ? "attention rewrite not requested (--attention keep)"
                : info != null && !options.Selects(info.Layer) ? $"layer {info.Layer} not selected"
                : null);
            if (keep == null)
                keep = Lower(model.Graph, core, info!, shapes);
            if (keep != null)
            {
                if (info != null)
                    info.KeptDenseReason = keep;
                AttentionCoreExpansion.Expand(model.Graph.Edit(), core);
                context.Info(Name, keep, core);
            }
            changed = true;
        }
        return changed;
    }

    private string? Lower(Graph graph, Node core, AttentionBlockInfo info, StaticShapes shapes)
    {
        if (info.HeadDim is not { } e)
            return $"head dim of '{core.Name}' is not statically known";
        // The codeword dim fits the head dim unless the user fixed it: the largest d_c <= 8 dividing E.
        if (options.CodewordDimFor(e) is not { } dc)
            return $"head dim {e} is not divisible by the codeword dim {options.CodewordDim} (given explicitly; leave it out to fit it to the head dim)";
        var keyPadding = core.Inputs[AttentionCoreOp.KeyPadding];
        bool folded = core.GetInt("rank", 4) == 3;
        if (folded && keyPadding != null)
            return "a key padding mask with heads folded into the batch is not supported";
        bool causal = core.GetInt("causal", 0) != 0;
        long window = core.GetInt("window", 0);
        long m = e / dc;
        long c = options.CodebookSize;
        var editor = graph.Edit();
        string prefix = $"spt/attention_{info.Layer}";
        var created = new List<Node>();

        Value Emit(string op, Value?[] inputs, string name, int outputs = 1, string domain = "", params Ir.Attribute[] attrs)
        {
            string nodeName = graph.UniqueName($"{prefix}/{name}");
            // Multi-output nodes get explicit output names (P is kept for the backward).
            var names = outputs == 1 ? null : Enumerable.Range(0, outputs).Select(i => graph.UniqueName($"{nodeName}_out{i}")).ToList();
            var n = editor.CreateNode(op, inputs, outputs, attrs, domain, nodeName, names);
            editor.InsertBefore(core, n);
            created.Add(n);
            return n.Outputs[0];
        }

        Value q = core.Inputs[AttentionCoreOp.Q]!, k = core.Inputs[AttentionCoreOp.K]!, v = core.Inputs[AttentionCoreOp.V]!;
        // Grouped-query / multi-query attention: the ops read K and V at their own head count, never the repeats.
        var (kSource, kHeads) = HeadRepeat.Find(k, shapes, out var kRefusal);
        var (vSource, vHeads) = HeadRepeat.Find(v, shapes, out var vRefusal);
        if ((kRefusal ?? vRefusal) is { } refusal)
            return refusal;
        if ((kSource is null) != (vSource is null) || kHeads != vHeads)
            return $"K and V of '{core.Name}' are repeated differently (K from {(kSource is null ? "no repeat" : kHeads + " heads")}, V from {(vSource is null ? "no repeat" : vHeads + " heads")})";
        if (kSource != null && !folded)
        {
            k = kSource;
            v = vSource!;
        }
        if (folded)
        {
            // [B·H, S, E] -> [B·H, 1, S, E]
            var axis1 = editor.AddInitializer(Tensor.Create(graph.UniqueName(prefix + "/axis1"), new long[] { 1 }, 1));
            q = Emit("Unsqueeze", [q, axis1], "q4");
            k = Emit("Unsqueeze", [k, axis1], "k4");
            v = Emit("Unsqueeze", [v, axis1], "v4");
        }
        var codebook = editor.AddInitializer(Tensor.Create(graph.UniqueName(prefix + "/pq_codebook"),
            Init.Normal(m * c * dc, Init.SeedFor(options.Seed, "codebook", info.Layer)), m, c, dc));
        var encode = AttentionOps.PQEncode;
        var codesQ = Emit(encode.Name, Positioned(encode, (AttentionOps.PQZ, q), (AttentionOps.PQCodebook, codebook)), "PQEncode_q", domain: encode.Domain);
        var codesK = Emit(encode.Name, Positioned(encode, (AttentionOps.PQZ, k), (AttentionOps.PQCodebook, codebook)), "PQEncode_k", domain: encode.Domain);
        // A sliding window (masks read as one) limits the selection and the attention alike.
        (string, object)[] windowAttr = window > 0 ? [(AttentionOps.WindowAttr, window)] : [];
        var topk = AttentionOps.PQTopK;
        // Exact: every key; a count; or the ratio with its floor (0: none).
        (string, object)[] selection = options.Exact ? [(AttentionOps.KeysRatioAttr, 1f)]
            : options.TopK is { } count ? [(AttentionOps.KeysPerQueryAttr, (long)count)]
            : options.MinTopK > 0 ? [(AttentionOps.KeysRatioAttr, (float)options.TopKRatio), (AttentionOps.MinKeysPerQueryAttr, (long)options.MinTopK)]
            : [(AttentionOps.KeysRatioAttr, (float)options.TopKRatio)];
        var indices = Emit(topk.Name,
            Positioned(topk, (AttentionOps.CodesQ, codesQ), (AttentionOps.CodesK, codesK), (AttentionOps.TopKKeyPadding, keyPadding)),
            "PQTopK", 1, topk.Domain,
            [.. topk.NodeAttributes([(AttentionOps.ModeAttr, "exact"), (AttentionOps.CausalAttr, causal ? 1L : 0L), .. selection, .. windowAttr])]);
        // A score bias (relative position, ALiBi: an additive term that is no mask) is read at the selected keys.
        Value? attnBias = core.GetInt("score_bias", 0) != 0 ? core.Inputs[AttentionCoreOp.Bias] : null;
        if (attnBias != null && folded && shapes.RankOf(attnBias) == 3)
        {
            // [B·H, 1|Sq, Sk] -> [B·H, 1, 1|Sq, Sk], as Q, K and V.
            var axis1 = editor.AddInitializer(Tensor.Create(graph.UniqueName(prefix + "/bias_axis1"), new long[] { 1 }, 1));
            attnBias = Emit("Unsqueeze", [attnBias, axis1], "attn_bias4");
        }
        var attention = AttentionOps.SparseAttention;
        var y = Emit(attention.Name,
            Positioned(attention, (AttentionOps.Q, q), (AttentionOps.K, k), (AttentionOps.V, v), (AttentionOps.Indices, indices), (AttentionOps.KeyPadding, keyPadding), (AttentionOps.AttnBias, attnBias)),
            "SparseAttention", 2, attention.Domain,
            [.. attention.NodeAttributes([
                (AttentionOps.ScaleAttr, (float)AttentionCoreOp.Scale(core, e)!.Value),
                (AttentionOps.ClampAttr, options.Clamp),
                (AttentionOps.CausalAttr, causal ? 1L : 0L), .. windowAttr])]);
        if (folded)
        {
            // [B·H, 1, Sq, Ev] -> [B·H, Sq, Ev]. A Reshape to the shape read from Q and V (rather than a Squeeze)
            // leaves ORT's shape inference with dims it derives itself.
            var q3 = core.Inputs[AttentionCoreOp.Q]!;
            var v3 = core.Inputs[AttentionCoreOp.V]!;
            // Shape's start/end need opset 15: slice the shapes instead.
            Value I64(string what, long v) => editor.AddInitializer(Tensor.Create(graph.UniqueName($"{prefix}/{what}"), new[] { v }, 1));
            var lead = Emit("Slice", [Emit("Shape", [q3], "q3_shape"), I64("zero", 0), I64("two", 2)], "q3_lead");
            var last = Emit("Slice", [Emit("Shape", [v3], "v3_shape"), I64("two", 2), I64("three", 3)], "v3_last");
            y = Emit("Reshape", [y, Emit("Concat", [lead, last], "y3_shape", 1, "", Ir.Attribute.FromInt("axis", 0))], "y3");
        }
        editor.ReplaceAllUsesWith(core.Outputs[0], y, replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, [core]);
        info.Rewritten = true;
        info.RewrittenNodes = [.. created.Select(n => n.Name)];
        info.ParametersAdded = m * c * dc;
        info.CodewordDim = dc;
        return null;
    }

    // The inputs of a node of `schema` at their positions, trailing absent ones dropped.
    private static Value?[] Positioned(OpSchema schema, params (int Position, Value? Value)[] inputs)
    {
        var list = new Value?[schema.Inputs.Count];
        foreach (var (position, value) in inputs)
            list[position] = value;
        int count = list.Length;
        while (count > 0 && list[count - 1] is null)
            count--;
        return list[..count];
    }
}

/// <summary>Expands an AttentionCore back to the dense ops it stands for.</summary>
internal static class AttentionCoreExpansion
{
    // E, the last dim of Q, when the core's scale is left to its default (1/sqrt(E)).
    private static long? CoreHeadDim(Node core) =>
        core.Inputs[AttentionCoreOp.Q]?.Shape is { Count: > 0 } shape ? shape[^1].Value : null;

    /// <summary>
    /// <c>Y = MatMul(Dropout?(Softmax(Where?(scale · Q·Kᵀ + bias))), V)</c> with the core's own inputs; removes the core.
    /// </summary>
    public static void Expand(GraphEditor editor, Node core)
    {
        var graph = editor.Graph;
        int rank = (int)core.GetInt("rank", 4);
        int count = 0;
        Value Emit(string op, Value?[] inputs, int outputs = 1, params Ir.Attribute[] attrs)
        {
            var n = editor.CreateNode(op, inputs, outputs, attrs, "", $"{core.Name}/dense_{op}_{count++}");
            editor.InsertBefore(core, n);
            return n.Outputs[0];
        }
        var perm = Enumerable.Range(0, rank).Select(i => (long)i).ToArray();
        (perm[rank - 1], perm[rank - 2]) = (perm[rank - 2], perm[rank - 1]);
        var kt = Emit("Transpose", [core.Inputs[AttentionCoreOp.K]], 1, Ir.Attribute.FromInts("perm", perm));
        var s = Emit("MatMul", [core.Inputs[AttentionCoreOp.Q], kt]);
        float scale = (float)(AttentionCoreOp.Scale(core, CoreHeadDim(core))
            ?? throw new InvalidOperationException($"'{core.Name}' leaves its scale to the default 1/sqrt(E), but E is not known"));
        if (scale != 1f)
        {
            var c = editor.AddInitializer(Tensor.Scalar(graph.UniqueName(core.Name + "/scale"), scale));
            s = Emit("Mul", [s, c]);
        }
        if (core.Inputs[AttentionCoreOp.Bias] is { } bias)
            s = Emit("Add", [s, bias]);
        if (core.Inputs[AttentionCoreOp.Cond] is { } cond)
        {
            var fill = editor.AddInitializer(Tensor.Scalar(graph.UniqueName(core.Name + "/fill"), core.GetFloat("fill", float.MinValue)));
            s = core.GetInt("scores_when_true", 1) != 0 ? Emit("Where", [cond, s, fill]) : Emit("Where", [cond, fill, s]);
        }
        var p = Emit("Softmax", [s], 1, Ir.Attribute.FromInt("axis", -1));
        if (core.GetInt("dropout", 0) != 0)
            p = Emit("Dropout", [p, core.Inputs[AttentionCoreOp.DropoutRatio], core.Inputs[AttentionCoreOp.DropoutTraining]]);
        var y = Emit("MatMul", [p, core.Inputs[AttentionCoreOp.V]]);
        editor.ReplaceAllUsesWith(core.Outputs[0], y, replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, [core]);
    }
}

/// <summary>Seeded initial values for the parameters the rewrites add.</summary>
internal static class Init
{
    /// <summary>A seed for one parameter kind of one layer, stable across runs.</summary>
    public static int SeedFor(int seed, string kind, int layer)
    {
        unchecked
        {
            int h = seed * 31 + layer * 1_000_003;
            foreach (char ch in kind)
                h = h * 131 + ch;
            return h;
        }
    }

    /// <summary>N(0, 1) samples (Box-Muller).</summary>
    public static float[] Normal(long count, int seed)
    {
        var rng = new Random(seed);
        var r = new float[count];
        for (long i = 0; i < count; i += 2)
        {
            double u1 = 1.0 - rng.NextDouble();
            double u2 = rng.NextDouble();
            double mag = Math.Sqrt(-2.0 * Math.Log(u1));
            r[i] = (float)(mag * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < count)
                r[i + 1] = (float)(mag * Math.Sin(2 * Math.PI * u2));
        }
        return r;
    }

    /// <summary>U(-bound, bound) samples.</summary>
    public static float[] Uniform(long count, double bound, int seed)
    {
        var rng = new Random(seed);
        var r = new float[count];
        for (long i = 0; i < count; i++)
            r[i] = (float)((rng.NextDouble() * 2 - 1) * bound);
        return r;
    }
}
