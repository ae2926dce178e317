using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Removes nodes none of whose outputs is used or is a graph output (walking backwards, so whole dead chains go
/// in one run), initializers nothing reads (unless they are also graph inputs), and value_info entries of values
/// that no longer exist.
/// </summary>
public sealed class DeadCodeElimination : IPass
{
    /// <inheritdoc />
    public string Name => "dead-code-elimination";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        var editor = g.Edit();
        bool changed = false;
        foreach (var node in g.Nodes.Reverse().ToList())
        {
            if (node.Outputs.All(o => o.Uses.Count == 0 && !o.IsGraphOutput))
            {
                editor.Remove(node);
                changed = true;
            }
        }
        foreach (var init in g.Initializers.ToList())
        {
            if (!init.IsGraphInput && !init.IsGraphOutput && init.Uses.Count == 0)
            {
                editor.RemoveInitializer(init);
                changed = true;
            }
        }
        changed |= editor.PruneValueInfos() > 0;
        return changed;
    }
}
