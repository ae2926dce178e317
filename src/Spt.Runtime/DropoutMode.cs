using Spt.Ir;

namespace Spt.Runtime;

/// <summary>Dropout as comparisons need it: off, so that two runs of a training-mode export give one answer.</summary>
public static class DropoutMode
{
    /// <summary>
    /// Drops the <c>training_mode</c> input of every Dropout in the main graph (inference mode: identity). Returns how
    /// many nodes had one.
    /// </summary>
    public static int ToInference(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var editor = model.Graph.Edit();
        var count = 0;
        foreach (var node in model.Graph.Nodes.Where(n => n.IsDefaultDomain && n.OpType == "Dropout" && n.Inputs.Count > 2).ToList())
        {
            editor.TruncateInputs(node, 2);
            count++;
        }

        return count;
    }
}
