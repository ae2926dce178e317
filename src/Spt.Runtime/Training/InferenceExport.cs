using Spt.Ir;

namespace Spt.Runtime.Training;

/// <summary>
/// The fine-tuned model for inference: the source model (the one compile-training compiled, e.g. the SPT-rewritten
/// model) with its parameter initializers replaced by trained values, written through the IR.
/// </summary>
public static class InferenceExport
{
    /// <summary>Writes <paramref name="sourceModel"/> with <paramref name="parameters"/> substituted to <paramref name="outputPath"/>.</summary>
    /// <exception cref="TrainingException">A parameter has no initializer of the same name, type and shape in the source model.</exception>
    public static void Write(string sourceModel, IEnumerable<Tensor> parameters, string outputPath, long step,
        IEnumerable<KeyValuePair<string, string>>? metadata = null)
    {
        using var model = Model.Load(sourceModel);
        var editor = model.Graph.Edit();
        foreach (var tensor in parameters)
        {
            var value = model.Graph.FindValue(tensor.Name);
            if (value?.Initializer is not { } old)
            {
                throw new TrainingException($"'{sourceModel}' has no initializer '{tensor.Name}': it is not the model the artifact was compiled from");
            }

            if (old.ElementType != tensor.ElementType || !old.Dims.SequenceEqual(tensor.Dims))
            {
                throw new TrainingException($"'{sourceModel}': initializer '{tensor.Name}' is {old.ElementType.ShortName()}[{string.Join(',', old.Dims)}], " +
                    $"the trained value {tensor.ElementType.ShortName()}[{string.Join(',', tensor.Dims)}]");
            }

            editor.SetInitializer(value, tensor);
        }

        model.Metadata.Add(new("spt.finetuned_steps", step.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        foreach (var entry in metadata ?? [])
        {
            foreach (var stale in model.Metadata.Where(kv => kv.Key == entry.Key).ToList())
            {
                model.Metadata.Remove(stale);
            }

            model.Metadata.Add(entry);
        }

        var dir = Path.GetDirectoryName(Path.GetFullPath(outputPath));
        if (dir is not null)
        {
            Directory.CreateDirectory(dir);
        }

        model.Save(outputPath);
    }

    /// <summary>Writes the source model with the parameters of checkpoint <paramref name="stateFile"/> (a state.onnx).</summary>
    public static void FromCheckpoint(string sourceModel, string stateFile, string outputPath)
    {
        using var state = Model.Load(stateFile);
        using var source = Model.Load(sourceModel);
        var names = source.Graph.Initializers.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var step = Checkpoint.ReadState(state, 0).Step;
        Write(sourceModel, state.Graph.Initializers.Where(v => names.Contains(v.Name) && v.Initializer is not null).Select(v => v.Initializer!), outputPath, step);
    }
}
