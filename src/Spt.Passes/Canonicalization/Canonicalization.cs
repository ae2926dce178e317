namespace Spt.Passes.Canonicalization;

/// <summary>
/// The standard canonicalization pipeline: after it, Linear layers are <c>MatMul(x, W) [+ b]</c> with W stored
/// [in, out], exporter shape subgraphs are folded into constant Reshape targets, and no Identity, no-op Cast or
/// Reshape, inference Dropout, Gemm or duplicate subexpression is left, so recognition rules match few forms.
/// </summary>
public static class Canonicalize
{
    /// <summary>
    /// The passes, in order: Gemm splitting runs once first (it makes new Transposes and MatMuls the others then
    /// see); then a fixpoint group where each pass enables the next: removing no-ops exposes constant inputs,
    /// folding constants exposes duplicate subexpressions and dead shape subgraphs, and merging duplicates
    /// exposes more no-ops.
    /// </summary>
    /// <param name="maxRounds">Bound on fixpoint rounds.</param>
    /// <param name="maxFoldElements">Size cap for constant folding results.</param>
    public static Pipeline Standard(int maxRounds = 10, long maxFoldElements = 4096) =>
        new Pipeline("canonicalize")
            .Add(new GemmToMatMul())
            .AddFixpoint(maxRounds,
                new NoOpElimination(),
                new TransposedWeightFolding(),
                new ConstantFolding(maxFoldElements),
                new CommonSubexpressionElimination(),
                new DeadCodeElimination());
}
