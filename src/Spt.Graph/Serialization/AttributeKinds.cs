namespace Spt.Ir;

/// <summary>
/// The kind each attribute of the common ONNX (and ONNX Runtime contrib) operators must have, from their operator
/// schemas: what the loader checks so that a pass reading <c>Softmax.axis</c> never finds a float there.
/// Attributes and operators not listed are not checked here (ONNX Runtime checks them when it runs the model).
/// </summary>
internal static class AttributeKinds
{
    private const AttributeKind I = AttributeKind.Int;
    private const AttributeKind F = AttributeKind.Float;
    private const AttributeKind S = AttributeKind.String;
    private const AttributeKind Is = AttributeKind.Ints;
    private const AttributeKind Fs = AttributeKind.Floats;
    private const AttributeKind T = AttributeKind.Tensor;
    private const AttributeKind G = AttributeKind.Graph;

    private static readonly Dictionary<string, (string Name, AttributeKind Kind)[]> Onnx = new(StringComparer.Ordinal)
    {
        ["Softmax"] = [("axis", I)],
        ["LogSoftmax"] = [("axis", I)],
        ["Hardmax"] = [("axis", I)],
        ["Transpose"] = [("perm", Is)],
        ["LayerNormalization"] = [("axis", I), ("epsilon", F), ("stash_type", I)],
        ["RMSNormalization"] = [("axis", I), ("epsilon", F), ("stash_type", I)],
        ["SkipSimplifiedLayerNormalization"] = [("epsilon", F)],
        ["BatchNormalization"] = [("epsilon", F), ("momentum", F), ("training_mode", I)],
        ["InstanceNormalization"] = [("epsilon", F)],
        ["GroupNormalization"] = [("epsilon", F), ("num_groups", I), ("stash_type", I)],
        ["Gemm"] = [("alpha", F), ("beta", F), ("transA", I), ("transB", I)],
        ["Concat"] = [("axis", I)],
        ["Gather"] = [("axis", I)],
        ["GatherElements"] = [("axis", I)],
        ["GatherND"] = [("batch_dims", I)],
        ["ScatterElements"] = [("axis", I), ("reduction", S)],
        ["ScatterND"] = [("reduction", S)],
        ["Flatten"] = [("axis", I)],
        ["Split"] = [("axis", I), ("split", Is), ("num_outputs", I)],
        ["Squeeze"] = [("axes", Is)],
        ["Unsqueeze"] = [("axes", Is)],
        ["Slice"] = [("starts", Is), ("ends", Is), ("axes", Is)],
        ["Reshape"] = [("allowzero", I), ("shape", Is)],
        ["Shape"] = [("start", I), ("end", I)],
        ["Cast"] = [("to", I), ("saturate", I), ("round_mode", S)],
        ["CastLike"] = [("saturate", I), ("round_mode", S)],
        ["Constant"] = [("value", T), ("value_float", F), ("value_floats", Fs), ("value_int", I), ("value_ints", Is), ("value_string", S), ("value_strings", AttributeKind.Strings), ("sparse_value", AttributeKind.SparseTensor)],
        ["ConstantOfShape"] = [("value", T)],
        ["Gelu"] = [("approximate", S)],
        ["LeakyRelu"] = [("alpha", F)],
        ["Elu"] = [("alpha", F)],
        ["Celu"] = [("alpha", F)],
        ["Selu"] = [("alpha", F), ("gamma", F)],
        ["HardSigmoid"] = [("alpha", F), ("beta", F)],
        ["ThresholdedRelu"] = [("alpha", F)],
        ["Clip"] = [("min", F), ("max", F)],
        ["Dropout"] = [("ratio", F), ("seed", I)],
        ["Trilu"] = [("upper", I)],
        ["CumSum"] = [("exclusive", I), ("reverse", I)],
        ["Einsum"] = [("equation", S)],
        ["ArgMax"] = [("axis", I), ("keepdims", I), ("select_last_index", I)],
        ["ArgMin"] = [("axis", I), ("keepdims", I), ("select_last_index", I)],
        ["TopK"] = [("axis", I), ("largest", I), ("sorted", I)],
        ["ReduceMean"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceSum"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceMax"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceMin"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceProd"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceL2"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceSumSquare"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["ReduceLogSumExp"] = [("axes", Is), ("keepdims", I), ("noop_with_empty_axes", I)],
        ["Pad"] = [("mode", S), ("pads", Is), ("value", F)],
        ["Mod"] = [("fmod", I)],
        ["OneHot"] = [("axis", I)],
        ["EyeLike"] = [("dtype", I), ("k", I)],
        ["Range"] = [],
        ["Where"] = [],
        ["MatMul"] = [],
        ["Conv"] = [("auto_pad", S), ("dilations", Is), ("group", I), ("kernel_shape", Is), ("pads", Is), ("strides", Is)],
        ["If"] = [("then_branch", G), ("else_branch", G)],
        ["Loop"] = [("body", G)],
        ["Scan"] = [("body", G), ("num_scan_inputs", I)],
        ["RotaryEmbedding"] = [("interleaved", I), ("num_heads", I), ("rotary_embedding_dim", I)],
        ["Attention"] = [("is_causal", I), ("kv_num_heads", I), ("q_num_heads", I), ("qk_matmul_output_mode", I), ("scale", F), ("softcap", F), ("softmax_precision", I)],
        ["RandomNormalLike"] = [("dtype", I), ("mean", F), ("scale", F), ("seed", F)],
        ["RandomUniformLike"] = [("dtype", I), ("high", F), ("low", F), ("seed", F)],
    };

    // ONNX Runtime's contrib operators that exporters write and the recognizers read.
    private static readonly Dictionary<string, (string Name, AttributeKind Kind)[]> Microsoft = new(StringComparer.Ordinal)
    {
        ["Attention"] = [("num_heads", I), ("unidirectional", I), ("scale", F), ("mask_filter_value", F), ("do_rotary", I), ("past_present_share_buffer", I), ("qkv_hidden_sizes", Is)],
        ["MultiHeadAttention"] = [("num_heads", I), ("scale", F), ("mask_filter_value", F), ("unidirectional", I)],
        ["SkipLayerNormalization"] = [("epsilon", F)],
        ["SkipSimplifiedLayerNormalization"] = [("epsilon", F)],
        ["SimplifiedLayerNormalization"] = [("axis", I), ("epsilon", F), ("stash_type", I)],
        ["EmbedLayerNormalization"] = [("epsilon", F), ("mask_index_type", I)],
        ["RotaryEmbedding"] = [("interleaved", I), ("num_heads", I), ("rotary_embedding_dim", I), ("scale", F), ("is_packed_batching", I)],
        ["GroupQueryAttention"] = [("num_heads", I), ("kv_num_heads", I), ("scale", F), ("local_window_size", I), ("do_rotary", I), ("rotary_interleaved", I), ("softcap", F)],
    };

    private const int Many = int.MaxValue;

    // Inputs (min, max) and outputs (min, max) of default-domain operators, over the opsets this library reads.
    private static readonly Dictionary<string, (int MinIn, int MaxIn, int MinOut, int MaxOut)> Arity = BuildArity();

    private static Dictionary<string, (int, int, int, int)> BuildArity()
    {
        var a = new Dictionary<string, (int, int, int, int)>(StringComparer.Ordinal);
        foreach (var op in new[]
        {
            "Relu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Tanh", "Sigmoid", "Erf", "Not", "Reciprocal", "Identity", "Softmax",
            "LogSoftmax", "Transpose", "Shape", "Size", "Cast", "Gelu", "Flatten", "Floor", "Ceil", "Sin", "Cos", "Softplus",
            "LeakyRelu", "HardSigmoid", "Sign", "ArgMax", "ArgMin", "ConstantOfShape", "Elu", "Selu", "Celu", "HardSwish", "Mish",
        })
        {
            a[op] = (1, 1, 1, 1);
        }

        foreach (var op in new[]
        {
            "Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or",
            "Xor", "Expand", "Gather", "GatherElements", "GatherND", "Mod", "Tile", "CumSum", "BitShift", "CastLike", "PRelu",
        })
        {
            a[op] = (2, 2, 1, 1);
        }

        a["Where"] = (3, 3, 1, 1);
        a["Range"] = (3, 3, 1, 1);
        a["OneHot"] = (3, 3, 1, 1);
        a["Reshape"] = (1, 2, 1, 1);
        a["Unsqueeze"] = (1, 2, 1, 1);
        a["Squeeze"] = (1, 2, 1, 1);
        a["Slice"] = (1, 5, 1, 1);
        a["Concat"] = (1, Many, 1, 1);
        a["Sum"] = (1, Many, 1, 1);
        a["Max"] = (1, Many, 1, 1);
        a["Min"] = (1, Many, 1, 1);
        a["Mean"] = (1, Many, 1, 1);
        a["Einsum"] = (1, Many, 1, 1);
        a["LayerNormalization"] = (2, 3, 1, 3);
        a["Gemm"] = (2, 3, 1, 1);
        a["Constant"] = (0, 0, 1, 1);
        a["Dropout"] = (1, 3, 1, 2);
        a["Split"] = (1, 2, 1, Many);
        a["Trilu"] = (1, 2, 1, 1);
        a["Clip"] = (1, 3, 1, 1);
        a["Pad"] = (1, 4, 1, 1);
        a["TopK"] = (1, 2, 2, 2);
        a["If"] = (1, 1, 1, Many);
        foreach (var op in new[] { "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp" })
        {
            a[op] = (1, 2, 1, 1);
        }

        return a;
    }

    /// <summary>
    /// The problem with <paramref name="node"/>'s number of inputs or outputs for its ONNX operator, or null (also for
    /// operators not listed). Omitted optional inputs ("") count as given.
    /// </summary>
    public static string? ArityProblem(Node node)
    {
        if (!node.IsDefaultDomain || !Arity.TryGetValue(node.OpType, out var arity))
            return null;
        static string Range(int min, int max) => min == max ? $"{min}" : max == Many ? $"at least {min}" : $"{min} to {max}";
        if (node.Inputs.Count < arity.MinIn || node.Inputs.Count > arity.MaxIn)
            return $"has {node.Inputs.Count} inputs, the operator takes {Range(arity.MinIn, arity.MaxIn)}";
        if (node.Outputs.Count < arity.MinOut || node.Outputs.Count > arity.MaxOut)
            return $"has {node.Outputs.Count} outputs, the operator gives {Range(arity.MinOut, arity.MaxOut)}";
        // Operators whose attributes became inputs: from that opset on, those inputs are required.
        long opset = node.Graph?.Model?.GetOpsetVersion("") ?? 0;
        int required = (node.OpType, opset) switch
        {
            ("Reshape", >= 5) or ("TopK", >= 10) or ("Pad", >= 11) => 2,
            ("Slice", >= 10) => 3,
            _ => arity.MinIn,
        };
        if (node.Inputs.Count < required)
            return $"has {node.Inputs.Count} inputs, the operator takes at least {required} at opset {opset}";
        // Inputs every opset requires (the first MinIn) must not be omitted.
        for (int i = 0; i < required; i++)
        {
            if (node.Inputs[i] is null)
                return $"input {i} is required but omitted";
        }
        if (node.OpType == "Constant")
        {
            int values = node.Attributes.Count(a => a.Name is "value" or "sparse_value" || a.Name.StartsWith("value_", StringComparison.Ordinal));
            if (values != 1)
                return $"has {values} value attributes, a Constant needs exactly one";
        }
        return null;
    }

    /// <summary>The kind <paramref name="attribute"/> of <paramref name="node"/>'s operator must have, or null when not known.</summary>
    public static AttributeKind? Expected(Node node, string attribute)
    {
        var table = node.IsDefaultDomain ? Onnx : node.Domain == "com.microsoft" ? Microsoft : null;
        if (table == null || !table.TryGetValue(node.OpType, out var attributes))
            return null;
        foreach (var (name, kind) in attributes)
        {
            if (name == attribute)
                return kind;
        }
        return null;
    }

    /// <summary>The message for an attribute of the wrong kind.</summary>
    public static string Mismatch(string attribute, AttributeKind expected, AttributeKind actual) =>
        $"attribute '{attribute}' must be {Name(expected)}, got {Name(actual)}";

    private static string Name(AttributeKind kind) => kind switch
    {
        AttributeKind.Int => "an int",
        AttributeKind.Float => "a float",
        AttributeKind.String => "a string",
        AttributeKind.Ints => "a list of ints",
        AttributeKind.Floats => "a list of floats",
        AttributeKind.Strings => "a list of strings",
        AttributeKind.Tensor => "a tensor",
        AttributeKind.Graph => "a graph",
        AttributeKind.Undefined => "no type",
        _ => kind.ToString(),
    };
}
