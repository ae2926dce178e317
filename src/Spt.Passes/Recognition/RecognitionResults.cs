using Spt.Ir;

namespace Spt.Passes.Recognition;

/// <summary>One recognized attention block: where it is, what it computes, and what became of it.</summary>
public sealed class AttentionBlockInfo
{
    /// <summary>Attention layer index (graph order).</summary>
    public int Layer { get; set; }

    /// <summary>Name of the fused core node.</summary>
    public string CoreNode { get; set; } = "";

    /// <summary>Where the block came from: <c>decomposed</c>, <c>com.microsoft.Attention</c>, ...</summary>
    public string Source { get; set; } = "";

    /// <summary>The nodes the core replaced.</summary>
    public IReadOnlyList<string> MatchedNodes { get; set; } = [];

    /// <summary>Q/K/V and output projection nodes found by growing the core (null when not found).</summary>
    public string? QProjection { get; set; }

    /// <inheritdoc cref="QProjection"/>
    public string? KProjection { get; set; }

    /// <inheritdoc cref="QProjection"/>
    public string? VProjection { get; set; }

    /// <inheritdoc cref="QProjection"/>
    public string? OutProjection { get; set; }

    /// <summary>Whether Q and K pass through a rotary embedding.</summary>
    public bool Rotary { get; set; }

    /// <summary>Whether causal masking was detected.</summary>
    public bool Causal { get; set; }

    /// <summary>Sliding window of the causal mask: each query sees its last <c>Window</c> keys (0: no window).</summary>
    public long Window { get; set; }

    /// <summary>The graph input the key padding mask comes from, if any.</summary>
    public string? KeyPaddingMask { get; set; }

    /// <summary>Product of every scaling applied to the scores, Q and K.</summary>
    public double EffectiveScale { get; set; }

    /// <summary>The scale the rewritten op applies (the part not already in the Q/K it is fed).</summary>
    public double OpScale { get; set; }

    /// <summary>Head dim E, when known.</summary>
    public long? HeadDim { get; set; }

    /// <summary>Number of heads, when known.</summary>
    public long? Heads { get; set; }

    /// <summary>K/V heads (fewer than <see cref="Heads"/> for grouped-query and multi-query attention), when known.</summary>
    public long? KvHeads { get; set; }

    /// <summary>Whether heads are folded into the batch ([B·H, S, E]).</summary>
    public bool HeadsFolded { get; set; }

    /// <summary>Whether the block was rewritten to the SPT ops.</summary>
    public bool Rewritten { get; set; }

    /// <summary>Nodes the rewrite created.</summary>
    public IReadOnlyList<string> RewrittenNodes { get; set; } = [];

    /// <summary>Trainable parameters the rewrite added (codebook elements).</summary>
    public long ParametersAdded { get; set; }

    /// <summary>The codeword dim d_c of the rewritten block (fitted to the head dim unless given explicitly).</summary>
    public long? CodewordDim { get; set; }

    /// <summary>Why the block was kept dense (null when rewritten).</summary>
    public string? KeptDenseReason { get; set; }
}

/// <summary>One recognized FFN block.</summary>
public sealed class FfnBlockInfo
{
    /// <summary>FFN layer index (graph order).</summary>
    public int Layer { get; set; }

    /// <summary>relu, gelu, gelu_tanh, silu, relu2, or the gated swiglu, geglu, geglu_tanh, reglu.</summary>
    public string Activation { get; set; } = "";

    /// <summary>First linear (gate for SwiGLU), up projection (SwiGLU only), second linear.</summary>
    public string Fc1 { get; set; } = "";

    /// <inheritdoc cref="Fc1"/>
    public string? Up { get; set; }

    /// <inheritdoc cref="Fc1"/>
    public string Fc2 { get; set; } = "";

    /// <summary>Model and hidden widths.</summary>
    public long DModel { get; set; }

    /// <inheritdoc cref="DModel"/>
    public long DFf { get; set; }

    /// <summary>Whether the linears have biases.</summary>
    public bool HasBias1 { get; set; }

    /// <inheritdoc cref="HasBias1"/>
    public bool HasBias2 { get; set; }

    /// <summary>The nodes the match covered.</summary>
    public IReadOnlyList<string> MatchedNodes { get; set; } = [];

    /// <summary>Whether the block was rewritten to RoutedFFN.</summary>
    public bool Rewritten { get; set; }

    /// <summary>The RoutedFFN node.</summary>
    public string? RewrittenNode { get; set; }

    /// <summary>Trainable parameters added (router, LoRA factors).</summary>
    public long ParametersAdded { get; set; }

    /// <summary>Why the block was kept dense (null when rewritten).</summary>
    public string? KeptDenseReason { get; set; }
}

/// <summary>A candidate (a Softmax, a fused attention op, a MatMul→activation→MatMul chain) that did not match, and why.</summary>
public sealed record UnmatchedCandidate(string Kind, string Node, string OpType, string Reason);

/// <summary>What the recognition and rewrite passes found and did during one pipeline run (kept in the <see cref="PassContext"/>).</summary>
public sealed class RecognitionResults
{
    /// <summary>Attention blocks in layer order.</summary>
    public List<AttentionBlockInfo> Attention { get; } = [];

    /// <summary>FFN blocks in layer order.</summary>
    public List<FfnBlockInfo> Ffn { get; } = [];

    /// <summary>Candidates that did not match.</summary>
    public List<UnmatchedCandidate> Unmatched { get; } = [];

    /// <summary>The block record of each attention core node (filled by growth, read by the lowering).</summary>
    internal Dictionary<Node, AttentionBlockInfo> CoreInfo { get; } = [];

    /// <summary>Problems that stop recognition as a whole (unsupported opset, unknown ops).</summary>
    public List<string> Unsupported { get; } = [];

    internal void AddUnmatched(string kind, Node node, string reason) =>
        Unmatched.Add(new UnmatchedCandidate(kind, node.Name.Length > 0 ? node.Name : "<unnamed>", (node.IsDefaultDomain ? "" : node.Domain + "::") + node.OpType, reason));
}
