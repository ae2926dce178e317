namespace Spt.Passes.Training;

/// <summary>The task loss a training graph computes.</summary>
public enum LossKind
{
    /// <summary>Causal-LM cross-entropy over logits [B, S, V] against shifted labels [B, L] (<see cref="Losses.CausalLm"/>).</summary>
    CausalLm,
    /// <summary>Cross-entropy over logits [B, C] (or [B, S, C] at one position) against label [B].</summary>
    Classify,
    /// <summary>Mean squared error between the output and a target of the same shape.</summary>
    Mse,
}

/// <summary>AdamW hyperparameters baked into <c>optimizer.onnx</c> (the learning rate is an input).</summary>
public sealed record AdamWOptions
{
    /// <summary>First-moment decay (default 0.9).</summary>
    public float Beta1 { get; init; } = 0.9f;

    /// <summary>Second-moment decay (default 0.999).</summary>
    public float Beta2 { get; init; } = 0.999f;

    /// <summary>Added to sqrt(v̂) (default 1e-8).</summary>
    public float Epsilon { get; init; } = 1e-8f;

    /// <summary>Decoupled weight decay, applied to every trainable parameter (default 0.01).</summary>
    public float WeightDecay { get; init; } = 0.01f;

    /// <summary>Global gradient-norm clipping threshold; 0 turns clipping off (default 1.0).</summary>
    public float MaxGradNorm { get; init; } = 1.0f;
}

/// <summary>Options of <see cref="TrainingCompiler"/>.</summary>
public sealed record TrainingOptions
{
    /// <summary>The task loss; null picks one from the loss output: rank 3 → causal LM, rank 2 → classify, else MSE.</summary>
    public LossKind? Loss { get; init; }

    /// <summary>The model output the loss reads; null = the first output.</summary>
    public string? LossOutput { get; init; }

    /// <summary>Label value that does not count (default −100, as torch).</summary>
    public long IgnoreIndex { get; init; } = -100;

    /// <summary>
    /// The first decoder input of an encoder-decoder (the labels shifted right behind it), recorded in training.json
    /// for the trainer (0 = T5's pad, BART uses its EOS 2).
    /// </summary>
    public long DecoderStartId { get; init; }

    /// <summary>Classification on [B, S, C] logits scores the last position instead of the first.</summary>
    public bool ClassifyLastToken { get; init; }

    /// <summary>Weight of the PQ codebook loss Σ_layers [PQLoss(Q) + PQLoss(K)] (default 0.01; 0 leaves it out).</summary>
    public float PqWeight { get; init; } = 0.01f;

    /// <summary>Parameters whose names match this regular expression are frozen (in addition to <c>spt.frozen</c>).</summary>
    public string? FrozenPattern { get; init; }

    /// <summary>Optimizer hyperparameters.</summary>
    public AdamWOptions Optimizer { get; init; } = new();

    /// <summary>Name recorded as the source model in training.json (e.g. its file name).</summary>
    public string? SourceName { get; init; }
}
