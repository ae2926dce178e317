namespace Spt.Ir.Samples;

/// <summary>Size of the built-in sample decoder.</summary>
/// <param name="Layers">Decoder blocks.</param>
/// <param name="DModel">Hidden width d.</param>
/// <param name="Heads">Attention heads (d must be a multiple).</param>
/// <param name="DFf">FFN hidden width.</param>
/// <param name="Vocab">Vocabulary size.</param>
/// <param name="MaxSequence">Positions in the position embedding and causal mask buffer.</param>
/// <param name="Seed">Seed of the weights.</param>
public sealed record SampleDecoderConfig(int Layers = 2, int DModel = 64, int Heads = 4, int DFf = 256, int Vocab = 128, int MaxSequence = 32, int Seed = 1)
{
    /// <summary>
    /// Most parameters a sample may hold: 2^28 floats (1 GiB). The sample is a demo and test model built in memory,
    /// where one tensor is also limited to 2^31 elements; beyond this a typo (an extra zero) would exhaust memory.
    /// </summary>
    public const long MaxParameters = 1L << 28;

    /// <summary>Parameters (and mask buffer elements) of a decoder of this size, computed without overflow.</summary>
    public long ParameterCount
    {
        get
        {
            double d = DModel, f = DFf, v = Vocab, s = MaxSequence;
            // embeddings + mask buffer + per layer (4 d^2 + 4 d attention, 2 d f + d + f FFN, 4 d norms) + final norm + LM head
            double n = v * d + s * d + s * s + Layers * (4 * d * d + 4 * d + 2 * d * f + d + f + 4 * d) + 2 * d + d * v;
            return n >= long.MaxValue ? long.MaxValue : (long)n;
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first size out of range.</summary>
    public void Validate()
    {
        foreach (var (name, value) in new[] { ("layers", Layers), ("d_model", DModel), ("heads", Heads), ("d_ff", DFf), ("vocab", Vocab), ("max_seq", MaxSequence) })
        {
            if (value < 1)
                throw new ArgumentException($"{name} must be at least 1, got {value}");
        }
        if (DModel % Heads != 0)
            throw new ArgumentException($"d_model {DModel} is not a multiple of heads {Heads}");
        if (ParameterCount > MaxParameters)
            throw new ArgumentException($"the sample would hold {ParameterCount:N0} parameters, more than {MaxParameters:N0} (1 GiB of float32); choose smaller sizes");
    }
}

/// <summary>Models built in code, for the demo and tests.</summary>
public static class SampleModels
{
    /// <summary>
    /// A tiny GPT/OPT-style decoder the way PyTorch exports it (opset 17): token and position embedding Gathers,
    /// per block LayerNormalization, Q/K/V MatMul+Add, head split (Reshape, Transpose), Q scaled by E^-1/2, scores
    /// plus an additive causal mask sliced from a [1, 1, max, max] buffer, Softmax, PV, head merge, output
    /// projection, residual, LayerNormalization, ReLU FFN, residual; final LayerNormalization and LM head.
    /// Input <c>input_ids</c> int64 [batch, sequence] (sequence at most <c>MaxSequence</c>), output <c>logits</c>
    /// [batch, sequence, vocab].
    /// </summary>
    public static Model TinyDecoder(SampleDecoderConfig? config = null)
    {
        var c = config ?? new SampleDecoderConfig();
        c.Validate();
        int e = c.DModel / c.Heads;
        var rng = new Random(c.Seed);
        var b = new GraphBuilder(17);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");

        Value Weight(string name, double std, params long[] dims)
        {
            long n = dims.Aggregate(1L, (p, d) => p * d);
            var data = new float[n];
            for (long i = 0; i < n; i++)
                data[i] = (float)(Normal(rng) * std);
            return b.Initializer(name, data, dims);
        }

        Value Ones(string name, int n) => b.Initializer(name, Enumerable.Repeat(1f, n).ToArray(), n);
        Value Zeros(string name, int n) => b.Initializer(name, new float[n], n);
        Value I64(string name, params long[] values) => b.Initializer(name, values, values.Length);
        Value Scalar(string name, float value) => b.Initializer(Tensor.Scalar(name, value));

        var tokens = b.Op("Gather", Weight("embed_tokens.weight", 1.0, c.Vocab, c.DModel), ids);
        // positions 0..S-1 = Range(0, Shape(ids)[1])
        var seqLen = b.Op("Gather", [b.Op("Shape", ids), b.Initializer(Tensor.Scalar("one_i64", 1L))], ("axis", 0L));
        var positions = b.Op("Range", b.Initializer(Tensor.Scalar("zero_i64", 0L)), seqLen, b.Initializer(Tensor.Scalar("step_i64", 1L)));
        var pos = b.Op("Gather", Weight("embed_positions.weight", 1.0, c.MaxSequence, c.DModel), positions);
        var h = b.Op("Add", tokens, pos);

        // Causal mask buffer: 0 on and below the diagonal, float.MinValue above; sliced to [1, 1, S, S].
        var maskData = new float[c.MaxSequence * c.MaxSequence];
        for (int i = 0; i < c.MaxSequence; i++)
        {
            for (int j = i + 1; j < c.MaxSequence; j++)
                maskData[i * c.MaxSequence + j] = float.MinValue;
        }
        var maskBuffer = b.Initializer("causal_mask", maskData, 1, 1, c.MaxSequence, c.MaxSequence);
        var seq1 = b.Op("Unsqueeze", seqLen, I64("axes0", 0));
        var mask = b.Op("Slice", maskBuffer, I64("mask_starts", 0, 0), b.Op("Concat", [seq1, seq1], ("axis", 0L)), I64("mask_axes", 2, 3));

        var headShape = I64("head_shape", 0, 0, c.Heads, e);
        var mergeShape = I64("merge_shape", 0, 0, c.DModel);
        var qScale = Scalar("q_scale", (float)Math.Pow(e, -0.5));

        // Linear on a 3-D input as exported: Add(bias, MatMul(x, W)), W stored [in, out].
        Value Linear(string prefix, Value x, int inDim, int outDim)
        {
            var w = Weight($"{prefix}.weight", 1.0 / Math.Sqrt(inDim), inDim, outDim);
            var bias = Weight($"{prefix}.bias", 0.02, outDim);
            return b.Op("Add", bias, b.Op("MatMul", x, w));
        }

        Value LayerNorm(string prefix, Value x) =>
            b.Op("LayerNormalization", [x, Ones($"{prefix}.weight", c.DModel), Zeros($"{prefix}.bias", c.DModel)], ("axis", -1L), ("epsilon", 1e-5f));

        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"layers.{l}";
            var x = LayerNorm($"{p}.self_attn_layer_norm", h);
            // [B, S, d] -> [B, H, S, E]
            Value Heads(Value v) => b.Op("Transpose", [b.Op("Reshape", v, headShape)], ("perm", new long[] { 0, 2, 1, 3 }));
            var q = b.Op("Mul", Heads(Linear($"{p}.self_attn.q_proj", x, c.DModel, c.DModel)), qScale);
            var k = Heads(Linear($"{p}.self_attn.k_proj", x, c.DModel, c.DModel));
            var v = Heads(Linear($"{p}.self_attn.v_proj", x, c.DModel, c.DModel));
            var scores = b.Op("MatMul", q, b.Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 })));    // [B, H, S, S]
            var probs = b.Op("Softmax", [b.Op("Add", scores, mask)], ("axis", -1L));
            var attn = b.Op("MatMul", probs, v);                                                           // [B, H, S, E]
            var merged = b.Op("Reshape", b.Op("Transpose", [attn], ("perm", new long[] { 0, 2, 1, 3 })), mergeShape);
            h = b.Op("Add", h, Linear($"{p}.self_attn.out_proj", merged, c.DModel, c.DModel));

            var y = LayerNorm($"{p}.final_layer_norm", h);
            var hidden = b.Op("Relu", Linear($"{p}.fc1", y, c.DModel, c.DFf));
            h = b.Op("Add", h, Linear($"{p}.fc2", hidden, c.DFf, c.DModel));
        }
        var final = LayerNorm("final_layer_norm", h);
        var logits = b.Op("MatMul", final, Weight("lm_head.weight", 1.0 / Math.Sqrt(c.DModel), c.DModel, c.Vocab));
        b.Output(logits, "logits");
        return b.Build("sptc-sample");
    }

    private static double Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble();
        double u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
