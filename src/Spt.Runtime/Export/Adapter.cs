using Spt.Ir;
using Spt.Passes;
using Spt.Passes.Training;
using Spt.Runtime.Training;

namespace Spt.Runtime.Export;

/// <summary>
/// Adapter files: only the trained parameters of a run (LoRA factors, an added head, routers, codebooks, norms —
/// whatever training.json marks trainable) in the safetensors format, with <c>__metadata__</c>
/// <c>format = sptc-adapter</c>, the base model's name and the label map. Applying one to the model it was trained
/// from (the compiled model: the artifact's source.onnx, or the same rewrite of the same base) reproduces the
/// fine-tuned model.
/// </summary>
public static class Adapter
{
    /// <summary>Metadata value of <c>format</c>.</summary>
    public const string FormatName = "sptc-adapter";

    /// <summary>Writes <paramref name="trainable"/> with <paramref name="metadata"/> (plus <c>format</c>) to <paramref name="path"/>.</summary>
    public static void Write(string path, IEnumerable<Tensor> trainable, IEnumerable<KeyValuePair<string, string>> metadata)
    {
        var meta = new Dictionary<string, string>(StringComparer.Ordinal) { ["format"] = FormatName };
        foreach (var (k, v) in metadata)
        {
            meta[k] = v;
        }

        Safetensors.Write(path, trainable, meta);
    }

    /// <summary>
    /// Writes <paramref name="modelPath"/> with the adapter's tensors in place of its initializers of the same names
    /// to <paramref name="outputPath"/> (the adapter's metadata, e.g. the label map, goes into the model metadata);
    /// with <paramref name="mergeLora"/> the LoRA factors are then folded into the base weights.
    /// </summary>
    /// <exception cref="TrainingException">Not an sptc adapter, or a tensor the model has not (or of another type or shape).</exception>
    public static string Apply(string modelPath, string adapterPath, string outputPath, bool mergeLora)
    {
        var (tensors, metadata) = Safetensors.Read(adapterPath);
        if (!metadata.TryGetValue("format", out var format) || format != FormatName)
        {
            throw new TrainingException($"'{adapterPath}' is a safetensors file but not an sptc adapter (no __metadata__ format = {FormatName})");
        }

        using var model = Model.Load(modelPath);
        var editor = model.Graph.Edit();
        foreach (var tensor in tensors)
        {
            var value = model.Graph.FindValue(tensor.Name);
            if (value?.Initializer is not { } old)
            {
                throw new TrainingException($"'{modelPath}' has no parameter '{tensor.Name}' of the adapter: apply it to the model it was trained from " +
                    "(the compiled model, e.g. the training artifact's source.onnx)");
            }

            if (old.ElementType != tensor.ElementType || !old.Dims.SequenceEqual(tensor.Dims))
            {
                throw new TrainingException($"'{modelPath}': parameter '{tensor.Name}' is {old.ElementType.ShortName()}[{string.Join(',', old.Dims)}], " +
                    $"the adapter's {tensor.ElementType.ShortName()}[{string.Join(',', tensor.Dims)}]");
            }

            editor.SetInitializer(value, tensor);
        }

        foreach (var (key, v) in metadata.Where(kv => kv.Key.StartsWith("spt.", StringComparison.Ordinal)))
        {
            foreach (var stale in model.Metadata.Where(kv => kv.Key == key).ToList())
            {
                model.Metadata.Remove(stale);
            }

            model.Metadata.Add(new(key, v));
        }

        var note = $"applied {tensors.Count} adapter tensors";
        if (mergeLora)
        {
            note += "; " + MergeLora(model);
        }

        model.Save(outputPath);
        return note;
    }

    /// <summary>Folds the LoRA factors of <paramref name="model"/> into its base weights; returns a one-line note.</summary>
    public static string MergeLora(Model model)
    {
        var pass = new LoraMergePass();
        pass.Run(model, new PassContext());
        var spt = model.Graph.AllNodes().Count(n => n.Domain == Spt.CustomOps.CustomOpLibrary.Domain);
        return $"merged {pass.Merged} LoRA factor pairs into their base weights" +
            (spt == 0 ? " (no sptc operator left: stock ONNX Runtime runs it)" : $" ({spt} sptc operators kept)");
    }

    /// <summary>Loads <paramref name="path"/>, merges its LoRA factors and saves it in place; returns the note.</summary>
    public static string MergeLoraInPlace(string path)
    {
        using var model = Model.Load(path);
        var note = MergeLora(model);
        model.Save(path);
        return note;
    }
}
