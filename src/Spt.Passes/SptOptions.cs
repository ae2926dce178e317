using Spt.CustomOps;

namespace Spt.Passes;

/// <summary>What to do with recognized attention blocks.</summary>
public enum AttentionMode
{
    /// <summary>Rewrite to PQEncode, PQTopK and SparseAttention.</summary>
    Sparse,

    /// <summary>Recognize and report, keep the dense computation.</summary>
    Keep,
}

/// <summary>What to do with recognized FFN blocks.</summary>
public enum FfnMode
{
    /// <summary>Rewrite to RoutedFFN.</summary>
    Routed,

    /// <summary>Recognize and report, keep the dense computation.</summary>
    Keep,
}

/// <summary>
/// Options of the SPT rewrite (<c>sptc optimize</c>). Defaults follow the SPT reference: codewords of 8 dims, 16
/// codewords per subspace; the keys per query, FFN blocks, active blocks and score clamp are the op schemas'
/// defaults (<see cref="AttentionOps"/>, <see cref="RoutedFfnOps"/>: 1/8 of the keys, 4 blocks with 2 active, clamp 10).
/// </summary>
public sealed record SptOptions
{
    /// <summary>Attention rewrite (default sparse).</summary>
    public AttentionMode Attention { get; init; } = AttentionMode.Sparse;

    /// <summary>FFN rewrite (default routed).</summary>
    public FfnMode Ffn { get; init; } = FfnMode.Routed;

    /// <summary>LoRA rank for the rewritten FFNs' optional LoRA inputs (0 = none). A ~ N(0, 1), B = 0.</summary>
    public int LoraRank { get; init; }

    /// <summary>Keys per query as a fraction of the sequence (used when <see cref="TopK"/> is null).</summary>
    public double TopKRatio { get; init; } = AttentionOps.DefaultKeysRatio;

    /// <summary>Keys per query as a count (overrides <see cref="TopKRatio"/> and <see cref="MinTopK"/>).</summary>
    public int? TopK { get; init; }

    /// <summary>The default of <see cref="MinTopK"/>.</summary>
    public const int DefaultMinTopK = 16;

    /// <summary>
    /// Fewest keys per query the ratio may give (PQTopK's <c>min_keys_per_query</c>; clamped to the sequence, so sequences of
    /// at most this many tokens attend to every key). SPT's S/8 was chosen for S = 512 (64 keys); on short inputs it
    /// leaves a query two or three keys, and fine-tuning a pretrained encoder through that does not recover (MiniLM
    /// on 12-token texts stays at chance; README). 0 = no floor, the reference's behaviour.
    /// </summary>
    public int MinTopK { get; init; } = DefaultMinTopK;

    /// <summary>Codewords per subspace C.</summary>
    public int CodebookSize { get; init; } = 16;

    /// <summary>The codeword dim the SPT reference uses, and the most a fitted codeword dim can be.</summary>
    public const int DefaultCodewordDim = 8;

    /// <summary>
    /// Codeword dim d_c. Null (the default): per layer, the largest d_c up to <see cref="DefaultCodewordDim"/> that
    /// divides the head dim (8 for head dims 64 or 96, 6 for 12, 5 for 20). A value given here is strict: a layer
    /// whose head dim it does not divide is kept dense.
    /// </summary>
    public int? CodewordDim { get; init; }

    /// <summary>The codeword dim for head dim <paramref name="headDim"/>, or null when an explicit one does not divide it.</summary>
    public long? CodewordDimFor(long headDim)
    {
        if (CodewordDim is { } explicitDim)
            return headDim % explicitDim == 0 ? explicitDim : null;
        for (long dc = Math.Min(DefaultCodewordDim, headDim); dc > 1; dc--)
        {
            if (headDim % dc == 0)
                return dc;
        }
        return 1;
    }

    /// <summary>FFN blocks n_b; d_ff must be a multiple of it.</summary>
    public int Blocks { get; init; } = (int)RoutedFfnOps.DefaultNBlocks;

    /// <summary>Active FFN blocks per token.</summary>
    public int Active { get; init; } = (int)RoutedFfnOps.DefaultBlocksPerToken;

    /// <summary>
    /// Emit the dense-equivalent configuration: every key (top_k = Sk), no clamp, every block active, gate
    /// "none". The rewritten model then computes what the original does (used to prove faithfulness).
    /// </summary>
    public bool Exact { get; init; }

    /// <summary>Layer indices to rewrite (attention and FFN layers counted separately, from 0); null = all.</summary>
    public IReadOnlySet<int>? Layers { get; init; }

    /// <summary>Seed of the new initializers (codebooks, routers, LoRA factors).</summary>
    public int Seed { get; init; }

    /// <summary>Score clamp of SparseAttention: the op's default normally, 0 (off) in exact mode.</summary>
    public float Clamp => Exact ? 0f : AttentionOps.DefaultClamp;

    /// <summary>Whether layer <paramref name="layer"/> is selected.</summary>
    public bool Selects(int layer) => Layers is null || Layers.Contains(layer);

    /// <summary>Throws <see cref="ArgumentException"/> for inconsistent values.</summary>
    public void Validate()
    {
        if (AttentionOps.PQTopK.FindAttribute(AttentionOps.KeysRatioAttr)!.Check!((float)TopKRatio) is { } problem)
            throw new ArgumentException($"top-k ratio {problem}; got {TopKRatio}");
        if (TopK is <= 0)
            throw new ArgumentException($"top-k must be positive; got {TopK}");
        if (MinTopK < 0)
            throw new ArgumentException($"the key floor (min top-k) must be >= 0; got {MinTopK}");
        if (CodebookSize < 1 || CodewordDim < 1)
            throw new ArgumentException("codebook size and codeword dim must be positive");
        if (Blocks < 1 || Active < 1 || Active > Blocks)
            throw new ArgumentException($"need 1 <= active ({Active}) <= blocks ({Blocks})");
        if (LoraRank < 0)
            throw new ArgumentException($"LoRA rank must be >= 0; got {LoraRank}");
    }
}
