using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Recognition;

/// <summary>
/// Brings already-fused attention ops to the same internal form as decomposed exports: ORT <c>com.microsoft</c>
/// <c>Attention</c> (packed QKV projection inside the op) and <c>MultiHeadAttention</c>, and ONNX <c>Attention</c>
/// (opset 23). Each becomes explicit projections (where the op had them), head split to [B, H, S, E], one
/// <c>spt.internal::AttentionCore</c> carrying the op's scale, causal flag and key padding mask, and the head merge
/// back to [B, S, H·E].
/// </summary>
public sealed class FusedAttentionImport : IPass
{
    /// <inheritdoc />
    public string Name => "fused-attention-import";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var found = context.Result<RecognitionResults>();
        var shapes = new StaticShapes();
        bool changed = false;
        int imported = 0;
        foreach (var node in model.Graph.Nodes.Where(IsFusedAttention).ToList())
        {
            var reason = TryImport(model.Graph, node, shapes, imported);
            if (reason != null)
                found.AddUnmatched("attention", node, reason);
            else
            {
                changed = true;
                imported++;
            }
        }
        return changed;
    }

    private static bool IsFusedAttention(Node n) =>
        (n.Domain == "com.microsoft" && n.OpType is "Attention" or "MultiHeadAttention") || (n.IsDefaultDomain && n.OpType == "Attention");

    private static bool Present(Node n, int i) => i < n.Inputs.Count && n.Inputs[i] is not null;

    private static string? TryImport(Graph graph, Node node, StaticShapes shapes, int index)
    {
        if (node.Outputs.Skip(1).Any(o => !o.IsOmitted && (o.Uses.Count > 0 || o.IsGraphOutput)))
            return "extra outputs (present key/value, attention probabilities) are used";
        long heads;
        float? scaleAttr = node.GetAttribute("scale") is { Kind: AttributeKind.Float } sa && sa.AsFloat() != 0 ? sa.AsFloat() : null;
        bool causal;
        Value? keep = null;
        var editor = graph.Edit();
        Value q, k, v;
        long hidden;
        if (node.Domain == "com.microsoft" && node.OpType == "Attention")
        {
            heads = node.GetInt("num_heads", 0);
            causal = node.GetInt("unidirectional", 0) != 0;
            if (node.GetInts("qkv_hidden_sizes") is { } sizes && sizes.Distinct().Count() > 1)
                return "qkv_hidden_sizes with different sizes is not supported";
            if (node.GetInt("do_rotary", 0) != 0)
                return "do_rotary is not supported";
            for (int i = 4; i < node.Inputs.Count; i++)
            {
                if (Present(node, i))
                    return $"input {i} (past state or attention bias) is not supported";
            }
            var w = ConstantValue.Of(node.Inputs[1]);
            if (w is null || w.Dims.Count != 2 || w.Dims[1] % 3 != 0)
                return "packed QKV weight is not a constant [d, 3·hidden]";
            hidden = w.Dims[1] / 3;
            if (Present(node, 3))
            {
                if (shapes.RankOf(node.Inputs[3]!) != 2)
                    return "mask_index is not a 2-D [B, S] keep-mask";
                keep = node.Inputs[3];
            }
            // QKV = x·W + b, split into three [B, S, hidden]
            Value qkv = Emit(editor, node, "MatMul", [node.Inputs[0], node.Inputs[1]]);
            if (Present(node, 2))
                qkv = Emit(editor, node, "Add", [qkv, node.Inputs[2]]);
            var splits = Const(editor, graph, node, "split", [hidden, hidden, hidden]);
            string splitName = graph.UniqueName(node.Name + "/split_qkv");
            var split = editor.CreateNode("Split", [qkv, splits], 3, [Ir.Attribute.FromInt("axis", -1)], "", splitName,
                [graph.UniqueName(splitName + "_q"), graph.UniqueName(splitName + "_k"), graph.UniqueName(splitName + "_v")]);
            editor.InsertBefore(node, split);
            (q, k, v) = (split.Outputs[0], split.Outputs[1], split.Outputs[2]);
        }
        else if (node.Domain == "com.microsoft")
        {
            heads = node.GetInt("num_heads", 0);
            causal = node.GetInt("unidirectional", 0) != 0;
            if (!Present(node, 1) || !Present(node, 2))
                return "packed QKV input (key and value omitted) is not supported";
            if (Present(node, 3))
                return "the packed bias input is not supported";
            for (int i = 5; i < node.Inputs.Count; i++)
            {
                if (Present(node, i))
                    return $"input {i} (attention bias or past state) is not supported";
            }
            if (Present(node, 4))
            {
                if (shapes.RankOf(node.Inputs[4]!) != 2)
                    return "key_padding_mask is not a 2-D [B, Sk] keep-mask";
                keep = node.Inputs[4];
            }
            (q, k, v) = (node.Inputs[0]!, node.Inputs[1]!, node.Inputs[2]!);
            if (shapes.RankOf(q) != 3 || shapes.RankOf(k) != 3 || shapes.RankOf(v) != 3)
                return "query/key/value are not 3-D [B, S, hidden]";
            hidden = shapes.LastDim(q) ?? 0;
        }
        else
        {
            heads = node.GetInt("q_num_heads", 0);
            causal = node.GetInt("is_causal", 0) != 0;
            if (node.GetInt("kv_num_heads", heads) != heads)
                return "grouped-query attention (kv_num_heads != q_num_heads) is not supported";
            if (node.GetFloat("softcap", 0) != 0)
                return "softcap is not supported";
            for (int i = 3; i < node.Inputs.Count; i++)
            {
                if (Present(node, i))
                    return $"input {i} (attn_mask or past state) is not supported";
            }
            (q, k, v) = (node.Inputs[0]!, node.Inputs[1]!, node.Inputs[2]!);
            if (shapes.RankOf(q) != 3)
                return "only 3-D Q/K/V ([B, S, hidden]) are supported";
            hidden = shapes.LastDim(q) ?? 0;
        }
        if (heads <= 0 || hidden <= 0 || hidden % heads != 0)
            return $"hidden size {hidden} and heads {heads} do not give a whole head dim";
        long e = hidden / heads;
        double scale = scaleAttr ?? 1.0 / Math.Sqrt(e);

        // [B, S, hidden] -> [B, H, S, E]
        var headShape = Const(editor, graph, node, "head_shape", [0, 0, heads, e]);
        Value Split(Value x) => Emit(editor, node, "Transpose", [Emit(editor, node, "Reshape", [x, headShape])], Ir.Attribute.FromInts("perm", [0, 2, 1, 3]));
        var q4 = Split(q);
        var k4 = Split(k);
        var v4 = Split(v);

        // The dense meaning of the op's masks, as an additive bias (used only if the core is expanded back).
        Value? bias = null;
        if (causal)
        {
            // Shape's start/end need opset 15: slice the shapes instead.
            var two = Const(editor, graph, node, "two", [2]);
            var three = Const(editor, graph, node, "three", [3]);
            var sq = Emit(editor, node, "Slice", [Emit(editor, node, "Shape", [q4]), two, three]);
            var sk = Emit(editor, node, "Slice", [Emit(editor, node, "Shape", [k4]), two, three]);
            var square = Emit(editor, node, "Concat", [sq, sk], Ir.Attribute.FromInt("axis", 0));
            var full = Emit(editor, node, "ConstantOfShape", [square], Ir.Attribute.FromTensor("value", Tensor.Create("value", new[] { float.MinValue }, 1)));
            bias = Emit(editor, node, "Trilu", [full, Const(editor, graph, node, "one", [1], scalar: true)], Ir.Attribute.FromInt("upper", 1));
        }
        if (keep != null)
        {
            // (1 - mask[:, None, None, :]) * -10000
            var axes = Const(editor, graph, node, "axes", [1, 2]);
            var m = Emit(editor, node, "Cast", [Emit(editor, node, "Unsqueeze", [keep, axes])], Ir.Attribute.FromInt("to", (long)ElementType.Float));
            var oneF = editor.AddInitializer(Tensor.Create(graph.UniqueName(node.Name + "/one_f"), new[] { 1f }));
            var negF = editor.AddInitializer(Tensor.Create(graph.UniqueName(node.Name + "/mask_filter"), new[] { -10000f }));
            var pad = Emit(editor, node, "Mul", [Emit(editor, node, "Sub", [oneF, m]), negF]);
            bias = bias is null ? pad : Emit(editor, node, "Add", [bias, pad]);
        }
        var inputs = new Value?[AttentionCoreOp.InputCount];
        inputs[AttentionCoreOp.Q] = q4;
        inputs[AttentionCoreOp.K] = k4;
        inputs[AttentionCoreOp.V] = v4;
        inputs[AttentionCoreOp.Bias] = bias;
        inputs[AttentionCoreOp.KeyPadding] = keep;
        var source = (node.IsDefaultDomain ? "" : node.Domain + ".") + node.OpType;
        var core = editor.CreateNode(AttentionCoreOp.OpType, inputs, 1,
        [
            Ir.Attribute.FromFloat("scale", (float)scale),
            Ir.Attribute.FromFloat("effective_scale", (float)scale),
            Ir.Attribute.FromInt("causal", causal ? 1 : 0),
            Ir.Attribute.FromFloat("fill", float.MinValue),
            Ir.Attribute.FromInt("scores_when_true", 1),
            Ir.Attribute.FromInt("rank", 4),
            Ir.Attribute.FromInt("heads", heads),
            Ir.Attribute.FromInt("dropout", 0),
            Ir.Attribute.FromString("source", source),
            Ir.Attribute.FromString("region", node.Name),
        ], AttentionCoreOp.Domain, $"{(node.Name.Length > 0 ? node.Name : "attention")}/AttentionCore_{index}");
        editor.InsertBefore(node, core);

        // [B, H, S, E] -> [B, S, H·E]
        var merged = Emit(editor, node, "Reshape",
            [Emit(editor, node, "Transpose", [core.Outputs[0]], Ir.Attribute.FromInts("perm", [0, 2, 1, 3])), Const(editor, graph, node, "merge_shape", [0, 0, hidden])]);
        editor.ReplaceAllUsesWith(node.Outputs[0], merged, replaceGraphOutputs: true);
        DeadCode.RemoveDeadFrom(editor, [node]);
        return null;
    }

    private static Value Emit(GraphEditor editor, Node anchor, string op, Value?[] inputs, params Ir.Attribute[] attrs)
    {
        var n = editor.CreateNode(op, inputs, 1, attrs);
        editor.InsertBefore(anchor, n);
        return n.Outputs[0];
    }

    private static Value Const(GraphEditor editor, Graph graph, Node node, string what, long[] values, bool scalar = false) =>
        editor.AddInitializer(scalar
            ? Tensor.Scalar(graph.UniqueName((node.Name.Length > 0 ? node.Name : "attention") + "/" + what), values[0])
            : Tensor.Create(graph.UniqueName((node.Name.Length > 0 ? node.Name : "attention") + "/" + what), values, values.Length));
}
