using System.Globalization;
using Spt.Ir;

namespace Spt.Passes.Training;

/// <summary>
/// The fine-tuned model for inference: the source model (the one compile-training compiled, e.g. the SPT-rewritten
/// model) with its parameter initializers replaced by trained values.
/// </summary>
public static class InferenceExport
{
    /// <summary>Metadata key of the number of fine-tuning steps behind the exported values.</summary>
    public const string FinetunedStepsKey = "spt.finetuned_steps";

    /// <summary>
    /// Substitutes <paramref name="parameters"/> for the initializers of the same names in <paramref name="model"/>
    /// (in place), sets <see cref="FinetunedStepsKey"/> = <paramref name="step"/> and <paramref name="metadata"/>
    /// (replacing entries of the same keys). <paramref name="sourceLabel"/> names the model in messages.
    /// </summary>
    /// <exception cref="OnnxModelException">A parameter has no initializer of the same name, type and shape.</exception>
    public static void SetParameters(Model model, string sourceLabel, IEnumerable<Tensor> parameters, long step,
        IEnumerable<KeyValuePair<string, string>>? metadata = null)
    {
        var editor = model.Graph.Edit();
        foreach (var tensor in parameters)
        {
            var value = model.Graph.FindValue(tensor.Name);
            if (value?.Initializer is not { } old)
            {
                throw new OnnxModelException($"'{sourceLabel}' has no initializer '{tensor.Name}': it is not the model the artifact was compiled from");
            }

            if (old.ElementType != tensor.ElementType || !old.Dims.SequenceEqual(tensor.Dims))
            {
                throw new OnnxModelException($"'{sourceLabel}': initializer '{tensor.Name}' is {old.ElementType.ShortName()}[{string.Join(',', old.Dims)}], " +
                    $"the trained value {tensor.ElementType.ShortName()}[{string.Join(',', tensor.Dims)}]");
            }

            editor.SetInitializer(value, Tensor.FromRawData(tensor.Name, tensor.ElementType, tensor.Dims, tensor.GetRawData().ToArray()));
        }

        List<KeyValuePair<string, string>> entries = [new(FinetunedStepsKey, step.ToString(CultureInfo.InvariantCulture)), .. metadata ?? []];
        foreach (var entry in entries)
        {
            foreach (var stale in model.Metadata.Where(kv => kv.Key == entry.Key).ToList())
            {
                model.Metadata.Remove(stale);
            }

            model.Metadata.Add(entry);
        }
    }

    /// <summary>
    /// Writes <paramref name="source"/> with the parameter values of a checkpoint to <paramref name="outputPath"/>:
    /// <paramref name="checkpointPath"/> is a state.onnx, or a checkpoint or artifact directory holding one. The
    /// checkpoint's tensors that are not initializers of the source (the AdamW moments) are left out.
    /// </summary>
    /// <exception cref="OnnxModelException">The checkpoint holds none of the source's initializers, or one does not fit.</exception>
    public static void FromCheckpoint(Model source, string checkpointPath, string outputPath)
    {
        var file = Directory.Exists(checkpointPath)
            ? File.Exists(Path.Combine(checkpointPath, ArtifactContract.CheckpointFile))
                ? Path.Combine(checkpointPath, ArtifactContract.CheckpointFile)
                : Path.Combine(checkpointPath, ArtifactContract.InitialCheckpoint)
            : checkpointPath;
        using var state = Model.Load(file, new LoadOptions { Verify = false });
        var names = source.Graph.Initializers.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var tensors = state.Graph.Initializers.Where(v => names.Contains(v.Name) && v.Initializer is not null).Select(v => v.Initializer!).ToList();
        if (tensors.Count == 0)
            throw new OnnxModelException($"checkpoint '{file}' holds none of the model's initializers");
        var stepText = state.Metadata.LastOrDefault(kv => kv.Key == ArtifactContract.StepKey).Value;
        var step = long.TryParse(stepText, NumberStyles.None, CultureInfo.InvariantCulture, out var s) ? s : 0;
        using var copy = Model.FromBytes(source.ToBytes(), new LoadOptions { Verify = false });
        SetParameters(copy, file, tensors, step);
        copy.Save(outputPath);
    }
}
