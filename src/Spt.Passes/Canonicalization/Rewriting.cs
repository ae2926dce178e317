using Spt.Ir;

namespace Spt.Passes.Canonicalization;

/// <summary>Edits shared by the canonicalization passes.</summary>
internal static class Rewriting
{
    /// <summary>
    /// The initializer behind a weight input, looking through the layout ops exporters put on weights
    /// (<c>Transpose(W)</c>, Identity, Cast); null when the value is not a (transformed) initializer.
    /// </summary>
    public static Value? WeightInitializer(Value? value)
    {
        for (var hops = 0; value is not null && hops < 4; hops++)
        {
            if (value.IsInitializer)
                return value;
            value = value.Producer is { OpType: "Transpose" or "Identity" or "Cast", Inputs.Count: 1 } p ? p.Inputs[0] : null;
        }
        return null;
    }

    /// <summary>
    /// Makes every user of <paramref name="node"/>'s output <paramref name="outputIndex"/> read
    /// <paramref name="replacement"/> instead and removes the node when nothing reads it any more. A graph output
    /// is never re-pointed (its name is the model's interface), so such a node is left alone; returns whether the
    /// edit happened.
    /// </summary>
    public static bool Bypass(GraphEditor editor, Node node, Value replacement, int outputIndex = 0)
    {
        var output = node.Outputs[outputIndex];
        if (output.IsGraphOutput)
            return false;
        for (int i = 0; i < node.Outputs.Count; i++)
        {
            if (i != outputIndex && (node.Outputs[i].Uses.Count > 0 || node.Outputs[i].IsGraphOutput))
                return false;
        }
        editor.ReplaceAllUsesWith(output, replacement);
        editor.Remove(node);
        return true;
    }

    /// <summary>
    /// Replaces <paramref name="old"/> (the single output of a node about to die) by <paramref name="replacement"/>
    /// everywhere, graph outputs included, removes the old producer, and gives the replacement the old name so the
    /// model's interface and readable names stay.
    /// </summary>
    public static void ReplaceKeepingName(GraphEditor editor, Value old, Value replacement)
    {
        string name = old.Name;
        editor.ReplaceAllUsesWith(old, replacement, replaceGraphOutputs: true);
        if (old.Producer is { } producer)
            editor.Remove(producer);
        editor.Rename(replacement, name);
    }

    /// <summary>A 2-D transpose of a float-like initializer, named <c>&lt;name&gt;_T</c> (made unique).</summary>
    public static Tensor Transpose2D(Tensor w, string name)
    {
        var a = ConstArray.From(w);
        long rows = w.Dims[0], cols = w.Dims[1];
        var t = ConstArray.Of(a.Type, [cols, rows],
            i => a.Real((int)(i % rows * cols + i / rows)),
            i => a.Int((int)(i % rows * cols + i / rows)));
        return t.ToTensor(name);
    }

    /// <summary>Records in model metadata that initializer <paramref name="derived"/> is <paramref name="original"/> transposed.</summary>
    public static void RecordTransposedWeight(Model model, string derived, string original)
    {
        const string key = TransposedWeightFolding.MetadataKey;
        int i = model.Metadata.ToList().FindIndex(kv => kv.Key == key);
        string entry = derived + "=" + original;
        if (i < 0)
            model.Metadata.Add(new(key, entry));
        else
            model.Metadata[i] = new(key, model.Metadata[i].Value + "," + entry);
    }
}
