using Spt.Ir;
using System.Globalization;

namespace Spt.CustomOps;

/// <summary>
/// Schemas of the sparse-attention op family (domain <c>spt</c>, opset 1): product-quantizer encoding, PQ key
/// selection, fixed-k sparse attention with its gradient, and the PQ codebook loss with its gradient. The native
/// library implements exactly these contracts on CPU in fp32.
/// </summary>
/// <remarks>
/// Layouts are per head: Q is [B, H, S, E], K/V are [B, Hkv, S, E] with H a multiple of Hkv (grouped-query and
/// multi-query attention: query head h reads kv head h / (H / Hkv); Hkv = H is plain multi-head attention). The codebook loss is a fused op pair (<see cref="PQLoss"/> and
/// <see cref="PQLossGrad"/>) rather than a decomposition into standard ONNX ops; a layer's loss
/// L_pq(Q) + L_pq(K) is two <see cref="PQLoss"/> nodes summed by the compiler.
/// </remarks>
public static class AttentionOps
{
    /// <summary>Attribute <c>causal</c> of PQTopK, SparseAttention and SparseAttentionGrad.</summary>
    public const string CausalAttr = "causal";

    /// <summary>Attribute <c>scale</c> of SparseAttention(Grad): the logit scale; 0 or absent means 1/sqrt(E).</summary>
    public const string ScaleAttr = "scale";

    /// <summary>Attribute <c>clamp</c> of SparseAttention(Grad).</summary>
    public const string ClampAttr = "clamp";

    /// <summary>Attribute <c>window</c> of PQTopK, SparseAttention and SparseAttentionGrad: a sliding window (0 = off).</summary>
    public const string WindowAttr = "window";

    /// <summary>Default of <see cref="WindowAttr"/>: no sliding window.</summary>
    public const long DefaultWindow = 0;

    /// <summary>Attribute <c>mode</c> of PQTopK.</summary>
    public const string ModeAttr = "mode";

    /// <summary>Attribute <c>keys_per_query</c> of PQTopK: keys per query as a count (0 = use <see cref="KeysRatioAttr"/>).</summary>
    public const string KeysPerQueryAttr = "keys_per_query";

    /// <summary>Attribute <c>keys_ratio</c> of PQTopK: keys per query as a fraction of Sk.</summary>
    public const string KeysRatioAttr = "keys_ratio";

    /// <summary>
    /// Attribute <c>min_keys_per_query</c> of PQTopK: the fewest keys per query <see cref="KeysRatioAttr"/> may give
    /// (0 = no floor); clamped to Sk, ignored with <see cref="KeysPerQueryAttr"/>.
    /// </summary>
    public const string MinKeysPerQueryAttr = "min_keys_per_query";

    /// <summary>Attribute <c>metric</c> of PQEncode.</summary>
    public const string MetricAttr = "metric";

    /// <summary>Attribute <c>detach_inputs</c> of PQLossGrad.</summary>
    public const string DetachInputsAttr = "detach_inputs";

    /// <summary>Default of <see cref="KeysRatioAttr"/>: 1/8 of the keys per query (the SPT reference).</summary>
    public const float DefaultKeysRatio = 0.125f;

    /// <summary>Default of <see cref="ClampAttr"/>: scaled logits are clamped to [-10, 10].</summary>
    public const float DefaultClamp = 10f;

    /// <summary>Default of <see cref="CausalAttr"/>.</summary>
    public const long DefaultCausal = 1;

    /// <summary>Default of <see cref="ScaleAttr"/>: 0, i.e. 1/sqrt(E).</summary>
    public const float DefaultScale = 0f;

    /// <summary>PQTopK's selection modes.</summary>
    public static IReadOnlyList<string> Modes { get; } = ["exact", "bucketed"];

    // Input and output positions. PQEncode / PQLoss: (Z, codebook); PQLossGrad: (dLoss, Z, codebook) -> (dZ, dCodebook).
    public const int PQZ = 0, PQCodebook = 1;
    public const int PQGradDLoss = 0, PQGradZ = 1, PQGradCodebook = 2, PQGradDZ = 0, PQGradDCodebook = 1;

    // PQTopK(codes_q, codes_k, key_padding_mask?) -> indices.
    public const int CodesQ = 0, CodesK = 1, TopKKeyPadding = 2;

    // SparseAttention(Q, K, V, indices, key_padding_mask?, attn_bias?) -> Y, P.
    public const int Q = 0, K = 1, V = 2, Indices = 3, KeyPadding = 4, AttnBias = 5, Y = 0, P = 1;

    // SparseAttentionGrad(dY, Q, K, V, indices, P, key_padding_mask?) -> dQ, dK, dV: the forward inputs shifted by one.
    public const int GradDY = 0, GradShift = 1, GradP = 5, GradKeyPadding = 6, DQ = 0, DK = 1, DV = 2;

    /// <summary>The logit scale a SparseAttention (or the compiler's attention core) with scale attribute <paramref name="scale"/> uses for head dim <paramref name="e"/>.</summary>
    public static double EffectiveScale(float scale, long e) => scale == 0 ? 1 / Math.Sqrt(e) : scale;

    private static readonly ElementType[] FloatOnly = [ElementType.Float];
    private static readonly ElementType[] Int32Only = [ElementType.Int32];

    private static readonly ElementType[] MaskTypes =
        [ElementType.Float, ElementType.Bool, ElementType.Int8, ElementType.UInt8, ElementType.Int32, ElementType.Int64];

    private static readonly AttributeSpec Causal = AttributeSpec.Flag(
        CausalAttr, DefaultCausal,
        "1: key j is visible to query i iff j <= i + Sk - Sq (j <= i when Sq == Sk); 0: no causal mask.");

    private static readonly AttributeSpec Window = new(
        WindowAttr, AttributeKind.Int, DefaultWindow,
        "Sliding window: > 0 also hides keys j < pos - window + 1 (and, when not causal, j > pos + window - 1), " +
        "pos = i + Sk - Sq the query's aligned key position; 0 = off.",
        v => (long)v >= 0 ? null : "must be >= 0 (0 = off)") { Rejected = [-1L] };

    private static readonly AttributeSpec Scale = new(
        ScaleAttr, AttributeKind.Float, DefaultScale, "Logit scale; 0 means 1/sqrt(E).",
        v => float.IsFinite((float)v) ? null : "must be finite") { Rejected = [float.NaN, float.PositiveInfinity] };

    private static readonly AttributeSpec Clamp = new(
        ClampAttr, AttributeKind.Float, DefaultClamp,
        "Scaled logits are clamped to [-clamp, clamp] before the mask is added; 0 turns the clamp off.",
        v => float.IsFinite((float)v) && (float)v >= 0 ? null : "must be finite and >= 0 (0 = off)") { Rejected = [-1f, float.PositiveInfinity] };

    /// <summary>PQEncode(Z [..., E] f32, codebook [M, C, dc] f32) -> codes [..., M] i32; E must equal M * dc.</summary>
    public static OpSchema PQEncode { get; } = new(
        "PQEncode",
        "L1-nearest codeword per subspace: codes[..., m] = argmin_c ||Z[..., m*dc:(m+1)*dc] - codebook[m, c]||_1, ties " +
        "to the lowest c. Not differentiable.",
        [
            new("Z", "[..., E] rows to encode (E = M * dc).", FloatOnly),
            new("codebook", "[M, C, dc] codewords, shared by Q and K.", FloatOnly),
        ],
        [new("codes", "[..., M] int32 codeword indices.", Int32Only)],
        [AttributeSpec.OneOf(MetricAttr, "l1", "Distance; only \"l1\" is supported.", ["l1"])],
        ctx =>
        {
            var (z, m, _, _) = PQShapes(ctx, 0);
            return [new TensorType(ElementType.Int32, z is null ? null : [.. z.Take(z.Count - 1), m])];
        });

    /// <summary>PQTopK(codes_q [B,H,Sq,M] i32, codes_k [B,Hkv,Sk,M] i32, key_padding_mask? [B,Sk]) -> indices [B,H,Sq,L] i32.</summary>
    public static OpSchema PQTopK { get; } = new(
        "PQTopK",
        "Selects L keys per query by the number of subspaces whose codes agree. Rows list the chosen keys in " +
        "ascending key order, then -1 when fewer than L keys are eligible; no key repeats. mode \"exact\": count " +
        "descending, ties to the lower key. mode \"bucketed\": the reference's match-count buckets " +
        "b = min(3, n / max(1, floor(M/4))), key residue class w = j mod 4 fills the output slots p = w (mod 4), " +
        "highest bucket then earliest key first; slots a class cannot fill go to the best remaining keys of any " +
        "class (deterministic, no race). key_padding_mask is a keep-mask: 0/false = padded (never selected), any " +
        "nonzero value = keep, for bool, integer and float masks alike. L = keys_per_query if keys_per_query > 0, " +
        "else max(1, min_keys_per_query, ceil(keys_ratio * Sk)); L is clamped to Sk.",
        [
            new("codes_q", "[B, H, Sq, M] query codes.", Int32Only),
            new("codes_k", "[B, Hkv, Sk, M] key codes (H % Hkv == 0; query head h uses key head h / (H / Hkv)).", Int32Only),
            new("key_padding_mask", "[B, Sk] keep-mask (0 = padded).", MaskTypes, Optional: true),
        ],
        [new("indices", "[B, H, Sq, L] int32 key indices, -1 = empty slot.", Int32Only)],
        [
            AttributeSpec.OneOf(ModeAttr, Modes[0], "\"exact\" or \"bucketed\".", Modes),
            Causal,
            new(KeysPerQueryAttr, AttributeKind.Int, 0L, "Keys per query as a count; 0 = use keys_ratio.",
                v => (long)v >= 0 ? null : "must be >= 0 (0 = use keys_ratio)") { Rejected = [-1L] },
            new(KeysRatioAttr, AttributeKind.Float, DefaultKeysRatio, "Keys per query as a fraction of Sk (default S/8).",
                v => (float)v > 0 && (float)v <= 1 ? null : "must be in (0, 1]") { Rejected = [0f, 1.5f, -0.5f] },
            new(MinKeysPerQueryAttr, AttributeKind.Int, 0L, "Fewest keys per query keys_ratio may give (0 = no floor); clamped to Sk, ignored with keys_per_query.",
                v => (long)v >= 0 ? null : "must be >= 0 (0 = no floor)") { Rejected = [-1L] },
            Window,
        ],
        ctx =>
        {
            var q = ctx.ShapeOfRank(0, 4, "[B, H, Sq, M]");
            var k = ctx.ShapeOfRank(1, 4, "[B, Hkv, Sk, M]");
            if (q is not null && k is not null)
            {
                ctx.RequireSame(q[0], k[0], "codes_q and codes_k batch B");
                RequireHeadGroups(ctx, "codes_k", q[1], k[1]);
                ctx.RequireSame(q[3], k[3], "codes_q and codes_k subspaces M");
            }

            CheckMask(ctx, 2, q?[0] ?? Dim.Unknown, k?[2] ?? Dim.Unknown);
            if (q is null)
            {
                return [new TensorType(ElementType.Int32, null)];
            }

            var l = k is not null && k[2].Value is { } sk
                ? new Dim(KeysPerQuery(ctx.Int(KeysPerQueryAttr), ctx.Float(KeysRatioAttr), sk, ctx.Int(MinKeysPerQueryAttr)))
                : Dim.Unknown;
            return [new TensorType(ElementType.Int32, [q[0], q[1], q[2], l])];
        });

    /// <summary>SparseAttention(Q, K, V, indices, key_padding_mask?) -> Y [B,H,Sq,Ev], P [B,H,Sq,L].</summary>
    public static OpSchema SparseAttention { get; } = new(
        "SparseAttention",
        "Fixed-k sparse attention. Per query row i and slot t with key j = indices[i, t]: " +
        "a = clamp(scale * <q_i, k_j>, -clamp, clamp) + mask[j]; slots with j = -1, causally hidden keys and keys " +
        "whose additive mask is <= -1e30 (or 0 in a bool/int keep-mask) get P = 0; P = softmax over the rest " +
        "(max-subtracted); Y_i = sum_t P_t v_j. Rows with nothing left give Y = 0, P = 0. Indices need not be " +
        "sorted or unique (repeats count as separate entries). Saved for the backward: indices and P (plus Q, K, V). " +
        "key_padding_mask: float = additive (0 keep, -inf/large negative pad), bool/int = keep-mask (1 keep, 0 pad).",
        [
            new("Q", "[B, H, Sq, E] queries.", FloatOnly),
            new("K", "[B, Hkv, Sk, E] keys (H % Hkv == 0; query head h uses kv head h / (H / Hkv)).", FloatOnly),
            new("V", "[B, Hkv, Sk, Ev] values.", FloatOnly),
            new("indices", "[B, H, Sq, L] selected keys (PQTopK output), -1 = empty slot.", Int32Only),
            new("key_padding_mask", "[B, Sk] additive float mask or bool/int keep-mask.", MaskTypes, Optional: true),
            new("attn_bias", "[1|B, 1|H, 1|Sq, Sk] additive score bias (relative position bias, ALiBi) read at the " +
                "selected keys and added after the clamp; values <= -1e30 exclude the key. Not differentiated.", FloatOnly, Optional: true),
        ],
        [
            new("Y", "[B, H, Sq, Ev] attention output.", FloatOnly),
            new("P", "[B, H, Sq, L] probabilities, saved for SparseAttentionGrad.", FloatOnly),
        ],
        [Scale, Clamp, Causal, Window],
        ctx =>
        {
            var (q, v, idx) = AttentionShapes(ctx, 0, 4);
            if (ctx.HasInput(AttnBias) && ctx.Input(AttnBias)?.Shape is { } ab && q is not null)
            {
                // Broadcast against [B, H, Sq, Sk]: each dim 1 or the full size; rank at most 4.
                var k = ctx.Input(K)?.Shape;
                Dim[] full = [q[0], q[1], q[2], k is { Count: 4 } ? k[2] : Dim.Unknown];
                bool bad = ab.Count > 4;
                for (int a = 0; !bad && a < ab.Count; a++)
                {
                    var want = full[4 - ab.Count + a];
                    bool last = a == ab.Count - 1;
                    bad = ab[a].Value is { } x && want.Value is { } w && x != w && (last || x != 1);
                }
                if (bad)
                {
                    throw ctx.Fail($"input 'attn_bias' has shape [{string.Join(", ", ab)}], expected [1|B, 1|H, 1|Sq, Sk] = [1|{full[0]}, 1|{full[1]}, 1|{full[2]}, {full[3]}]");
                }
            }
            return
            [
                new TensorType(ElementType.Float, q is null || v is null ? null : [q[0], q[1], q[2], v[3]]),
                new TensorType(ElementType.Float, idx),
            ];
        });

    /// <summary>SparseAttentionGrad(dY, Q, K, V, indices, P, key_padding_mask?) -> dQ, dK, dV.</summary>
    public static OpSchema SparseAttentionGrad { get; } = new(
        "SparseAttentionGrad",
        "Backward of SparseAttention from its saved P: dp_t = <dy_i, v_j>, c_i = sum_t P_t dp_t (plain sum), " +
        "ds_t = P_t (dp_t - c_i) * scale * [|scale <q_i, k_j>| <= clamp] (the clamp mask is rebuilt from the " +
        "recomputed logit; the gradient passes on the boundary), dQ_i = sum_t ds_t k_j, dK_j = sum ds_t q_i, " +
        "dV_j = sum P_t dy_i. dK and dV are reduced per key through a key-major copy of the index: deterministic. " +
        "The mask is accepted for symmetry and checked; its effect is already in P. Attributes must equal the " +
        "forward's.",
        [
            new("dY", "[B, H, Sq, Ev] gradient of Y.", FloatOnly),
            new("Q", "[B, H, Sq, E]", FloatOnly),
            new("K", "[B, Hkv, Sk, E]", FloatOnly),
            new("V", "[B, Hkv, Sk, Ev]", FloatOnly),
            new("indices", "[B, H, Sq, L]", Int32Only),
            new("P", "[B, H, Sq, L] probabilities from SparseAttention.", FloatOnly),
            new("key_padding_mask", "[B, Sk] as in the forward.", MaskTypes, Optional: true),
        ],
        [
            new("dQ", "[B, H, Sq, E]", FloatOnly),
            new("dK", "[B, Hkv, Sk, E] (summed over each kv head's query heads)", FloatOnly),
            new("dV", "[B, Hkv, Sk, Ev] (summed over each kv head's query heads)", FloatOnly),
        ],
        [Scale, Clamp, Causal, Window],
        ctx =>
        {
            var (q, v, idx) = AttentionShapes(ctx, 1, 6);
            var k = ctx.Input(2)?.Shape;
            if (ctx.ShapeOfRank(0, 4, "[B, H, Sq, Ev]") is { } dy && q is not null && v is not null)
            {
                RequireDims(ctx, "dY", dy, [q[0], q[1], q[2], v[3]], "[B, H, Sq, Ev]");
            }

            if (ctx.ShapeOfRank(5, 4, "[B, H, Sq, L]") is { } p && idx is not null)
            {
                RequireDims(ctx, "P", p, idx, "[B, H, Sq, L]");
            }

            return
            [
                new TensorType(ElementType.Float, q),
                new TensorType(ElementType.Float, k),
                new TensorType(ElementType.Float, v),
            ];
        });

    /// <summary>PQLoss(Z [..., E], codebook [M, C, dc]) -> loss [] f32.</summary>
    public static OpSchema PQLoss { get; } = new(
        "PQLoss",
        "Codebook loss of one tensor (fused; not decomposed into ONNX ops): per row and subspace, D_c = L1 distance " +
        "to codeword c, hard centroid zh = codebook[m, argmin D], soft weights a = softmax(-log max(D, 1e-5)), soft " +
        "centroid zs = sum_c a_c codebook[m, c]; loss = mean((zs - zh)^2) + mean((z - zh)^2) over all N*M*dc " +
        "elements. A layer's loss is PQLoss(Q) + PQLoss(K).",
        [
            new("Z", "[..., E] queries or keys (E = M * dc).", FloatOnly),
            new("codebook", "[M, C, dc]", FloatOnly),
        ],
        [new("loss", "[] scalar.", FloatOnly)],
        [],
        ctx =>
        {
            PQShapes(ctx, 0);
            return [new TensorType(ElementType.Float, [])];
        });

    /// <summary>PQLossGrad(dLoss [], Z [..., E], codebook [M, C, dc]) -> dZ [..., E], dCodebook [M, C, dc].</summary>
    public static OpSchema PQLossGrad { get; } = new(
        "PQLossGrad",
        "Gradient of dLoss * PQLoss through the hard gather, the soft centroid and the soft weights (no " +
        "stop-gradients). d|x|/dx uses sign(0) = 0 as torch does; the 1e-5 distance floor passes gradient only where " +
        "D > 1e-5. detach_inputs = 1 gives dZ = 0 (no commitment gradient into Z). Deterministic.",
        [
            new("dLoss", "[] (or one element) upstream gradient.", FloatOnly),
            new("Z", "[..., E]", FloatOnly),
            new("codebook", "[M, C, dc]", FloatOnly),
        ],
        [
            new("dZ", "[..., E]", FloatOnly),
            new("dCodebook", "[M, C, dc]", FloatOnly),
        ],
        [AttributeSpec.Flag(DetachInputsAttr, 0L, "1: no gradient into Z (dZ = 0).")],
        ctx =>
        {
            var (z, _, _, _) = PQShapes(ctx, 1);
            return
            [
                new TensorType(ElementType.Float, z),
                new TensorType(ElementType.Float, ctx.Input(2)?.Shape),
            ];
        });

    /// <summary>All schemas of the family, in a fixed order.</summary>
    public static IReadOnlyList<OpSchema> All { get; } =
        [PQEncode, PQTopK, SparseAttention, SparseAttentionGrad, PQLoss, PQLossGrad];

    /// <summary>Keys per query: <paramref name="count"/> when positive, else max(1, minKeys, ceil(ratio * Sk)); clamped to Sk.</summary>
    public static long KeysPerQuery(long count, float ratio, long sk, long minKeys = 0)
    {
        var l = count > 0 ? count : Math.Max(Math.Max(1L, minKeys), (long)Math.Ceiling((double)ratio * sk));
        return Math.Max(Math.Min(l, sk), sk > 0 ? 1 : 0);
    }

    // Z [..., E] and codebook [M, C, dc] with E = M * dc.
    private static (IReadOnlyList<Dim>? Z, Dim M, Dim C, Dim Dc) PQShapes(ShapeContext ctx, int zIndex)
    {
        var w = ctx.ShapeOfRank(zIndex + 1, 3, "[M, C, dc]");
        var z = ctx.Input(zIndex)?.Shape;
        if (z is { Count: 0 })
        {
            throw ctx.Fail($"input {zIndex} 'Z' must have rank >= 1 ([..., E])");
        }

        if (w is null)
        {
            return (z, Dim.Unknown, Dim.Unknown, Dim.Unknown);
        }

        if (z is not null && z[^1].Value is { } e && w[0].Value is { } m && w[2].Value is { } dc && e != m * dc)
        {
            throw ctx.Fail(string.Create(CultureInfo.InvariantCulture,
                $"input {zIndex} 'Z' has last dim E = {e}, expected M * dc = {m} * {dc} = {m * dc}"));
        }

        return (z, w[0], w[1], w[2]);
    }

    // Q, K, V, indices at offset..offset+3 and the mask at maskIndex; returns Q, V and indices shapes.
    private static (IReadOnlyList<Dim>? Q, IReadOnlyList<Dim>? V, IReadOnlyList<Dim>? Indices) AttentionShapes(
        ShapeContext ctx, int offset, int maskIndex)
    {
        var q = ctx.ShapeOfRank(offset, 4, "[B, H, Sq, E]");
        var k = ctx.ShapeOfRank(offset + 1, 4, "[B, Hkv, Sk, E]");
        var v = ctx.ShapeOfRank(offset + 2, 4, "[B, Hkv, Sk, Ev]");
        var idx = ctx.ShapeOfRank(offset + 3, 4, "[B, H, Sq, L]");
        if (q is not null && k is not null)
        {
            RequireDims(ctx, "K", k, [q[0], Dim.Unknown, Dim.Unknown, q[3]], "[B, Hkv, Sk, E]");
            RequireHeadGroups(ctx, "K", q[1], k[1]);
        }

        if (q is not null && v is not null)
        {
            RequireDims(ctx, "V", v, [q[0], k?[1] ?? Dim.Unknown, k?[2] ?? Dim.Unknown, Dim.Unknown], "[B, Hkv, Sk, Ev]");
        }

        if (q is not null && idx is not null)
        {
            RequireDims(ctx, "indices", idx, [q[0], q[1], q[2], Dim.Unknown], "[B, H, Sq, L]");
        }

        CheckMask(ctx, maskIndex, q?[0] ?? Dim.Unknown, k?[2] ?? Dim.Unknown);
        return (q, v, idx);
    }

    // Grouped K/V heads: when both are known, the query heads H must be a whole multiple of the kv heads Hkv.
    private static void RequireHeadGroups(ShapeContext ctx, string input, Dim h, Dim hkv)
    {
        if (h.Value is { } queryHeads && hkv.Value is { } kvHeads && (kvHeads < 1 || queryHeads % kvHeads != 0))
        {
            throw ctx.Fail(string.Create(CultureInfo.InvariantCulture,
                $"input '{input}' has {kvHeads} heads; the {queryHeads} query heads must be a whole multiple of it (H % Hkv == 0)"));
        }
    }

    private static void CheckMask(ShapeContext ctx, int index, Dim b, Dim sk)
    {
        if (ctx.HasInput(index) && ctx.ShapeOfRank(index, 2, "[B, Sk]") is { } mask)
        {
            RequireDims(ctx, "key_padding_mask", mask, [b, sk], "[B, Sk]");
        }
    }

    private static void RequireDims(ShapeContext ctx, string input, IReadOnlyList<Dim> got, IReadOnlyList<Dim> want, string pattern)
    {
        for (var i = 0; i < want.Count; i++)
        {
            if (got[i].ConflictsWith(want[i]))
            {
                throw ctx.Fail($"input '{input}' has shape [{string.Join(", ", got)}], expected {pattern} = " +
                    $"[{string.Join(", ", want)}]");
            }
        }
    }
}
