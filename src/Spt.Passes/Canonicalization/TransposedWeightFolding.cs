using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// <c>MatMul(x, Transpose(W))</c> with W a 2-D initializer (the exporter's Linear on a 3-D input) becomes
/// <c>MatMul(x, W_T)</c> with a new initializer <c>&lt;W&gt;_T</c> = Wᵀ, of any size. The original W is removed once
/// nothing else reads it (by <see cref="DeadCodeElimination"/>). Every derived initializer is recorded in model
/// metadata under <see cref="MetadataKey"/> as <c>derived=original</c> pairs, comma-separated, so the weight stays
/// identifiable (e.g. against a torch state_dict).
/// </summary>
public sealed class TransposedWeightFolding : IPass
{
    /// <summary>Model metadata key listing <c>derived=original</c> pairs of transposed weight initializers.</summary>
    public const string MetadataKey = "spt.transposed_weights";

    /// <inheritdoc />
    public string Name => "transposed-weight-folding";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        var editor = g.Edit();
        bool changed = false;
        foreach (var t in g.Nodes.Where(n => n.OpType == "Transpose" && n.IsDefaultDomain).ToList())
        {
            var w = t.Inputs[0];
            if (w?.Initializer is not { Dims.Count: 2 } tensor || w.IsGraphInput || !ConstArray.IsSupported(tensor.ElementType))
                continue;
            var perm = t.GetInts("perm");
            if (perm is not null && !perm.SequenceEqual([1L, 0L]))
                continue;
            var output = t.Outputs[0];
            if (output.IsGraphOutput || output.Uses.Count == 0 || output.Uses.Any(u => u.Node.OpType != "MatMul" || u.InputIndex != 1))
                continue;
            string name = g.UniqueName(w.Name + "_T");
            var transposed = editor.AddInitializer(Rewriting.Transpose2D(tensor, name));
            Rewriting.RecordTransposedWeight(model, name, w.Name);
            editor.ReplaceAllUsesWith(output, transposed);
            editor.Remove(t);
            changed = true;
        }
        return changed;
    }
}
