using System.Globalization;
using Spt.Ir;

namespace Spt.Runtime.Training;

/// <summary>Where the trainer was when a checkpoint was written (stored as model metadata_props).</summary>
/// <param name="Step">Optimizer steps done.</param>
/// <param name="DataSeed">Shuffling seed.</param>
/// <param name="DataEpoch">Epoch of the data order.</param>
/// <param name="DataPosition">Examples of that epoch's permutation already consumed.</param>
/// <param name="TokensSeen">Training tokens consumed so far.</param>
public sealed record TrainerState(long Step, ulong DataSeed, long DataEpoch, int DataPosition, long TokensSeen)
{
    /// <summary>The state of a fresh run.</summary>
    public static TrainerState Initial(ulong seed) => new(0, seed, 0, 0, 0);
}

/// <summary>
/// The checkpoint format: an ONNX model file <c>state.onnx</c> whose graph holds only initializers: every parameter
/// <c>&lt;name&gt;</c>, and for each trainable one the AdamW moments <c>m.&lt;name&gt;</c> and <c>v.&lt;name&gt;</c>
/// (absent moments read as zeros, as in a fresh run). Model metadata_props:
/// <c>spt.checkpoint.format</c> = 1, <c>step</c>, <c>data_seed</c>, <c>data_epoch</c>, <c>data_position</c>,
/// <c>tokens_seen</c>, plus free-form entries (<c>lr_schedule</c>, <c>loss</c>, ...). Written through the IR
/// (<see cref="Model.Save(string, SaveOptions?)"/>, external data when over 2 GB).
/// </summary>
public static class Checkpoint
{
    /// <summary>The model file's name inside a checkpoint directory.</summary>
    public const string FileName = "state.onnx";

    /// <summary>Format version written in <c>spt.checkpoint.format</c>.</summary>
    public const int FormatVersion = 1;

    /// <summary>Name of the first AdamW moment of parameter <paramref name="name"/>.</summary>
    public static string M(string name) => "m." + name;

    /// <summary>Name of the second AdamW moment of parameter <paramref name="name"/>.</summary>
    public static string V(string name) => "v." + name;

    /// <summary>Builds the checkpoint model from named tensors and the trainer state.</summary>
    public static Model Build(IEnumerable<Tensor> tensors, TrainerState state, IEnumerable<KeyValuePair<string, string>>? extra = null)
    {
        var graph = new Graph("checkpoint");
        var model = new Model(graph) { IrVersion = 8, ProducerName = "sptc" };
        model.SetOpset("", 17);
        var editor = graph.Edit();
        foreach (var tensor in tensors)
        {
            editor.AddInitializer(tensor);
        }

        var meta = model.Metadata;
        meta.Add(new("spt.checkpoint.format", FormatVersion.ToString(CultureInfo.InvariantCulture)));
        meta.Add(new("step", state.Step.ToString(CultureInfo.InvariantCulture)));
        meta.Add(new("data_seed", state.DataSeed.ToString(CultureInfo.InvariantCulture)));
        meta.Add(new("data_epoch", state.DataEpoch.ToString(CultureInfo.InvariantCulture)));
        meta.Add(new("data_position", state.DataPosition.ToString(CultureInfo.InvariantCulture)));
        meta.Add(new("tokens_seen", state.TokensSeen.ToString(CultureInfo.InvariantCulture)));
        foreach (var kv in extra ?? [])
        {
            meta.Add(kv);
        }

        return model;
    }

    /// <summary>
    /// Reads the trainer state from a checkpoint model's metadata (missing entries read as a fresh run's); values
    /// that are not numbers or are out of range (a negative step, ...) make the checkpoint unusable.
    /// </summary>
    /// <exception cref="TrainingException">An entry is malformed.</exception>
    public static TrainerState ReadState(Model model, ulong defaultSeed)
    {
        string? Get(string key) => model.Metadata.LastOrDefault(kv => kv.Key == key).Value;
        long Long(string key, long fallback, long max = long.MaxValue)
        {
            if (Get(key) is not { } s)
            {
                return fallback;
            }

            if (!long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var v) || v > max)
            {
                throw new TrainingException($"checkpoint metadata '{key}' is '{s}', not an integer in [0, {max}]");
            }

            return v;
        }

        var seedText = Get("data_seed");
        var seed = defaultSeed;
        if (seedText is not null && !ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out seed))
        {
            throw new TrainingException($"checkpoint metadata 'data_seed' is '{seedText}', not an unsigned integer");
        }

        return new TrainerState(Long("step", 0, int.MaxValue), seed, Long("data_epoch", 0), (int)Long("data_position", 0, int.MaxValue), Long("tokens_seen", 0));
    }

    /// <summary>
    /// Writes the checkpoint into <paramref name="directory"/> atomically: everything goes to a staging directory
    /// first, which is then renamed into place (<see cref="OutputCommit"/>), so a reader sees either no directory or
    /// a complete one, and a failure or signal leaves nothing. An existing directory of that name is replaced.
    /// </summary>
    public static void WriteAtomically(Model model, string directory, IEnumerable<(string Name, string Text)>? extraFiles = null)
    {
        var full = Path.GetFullPath(directory);
        Directory.CreateDirectory(Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{directory}' has no parent directory"));
        using var commit = new OutputCommit();
        var staged = commit.AddDirectory(full, "checkpoint directory", replaceable: _ => true);
        model.Save(Path.Combine(staged, FileName));
        foreach (var (name, text) in extraFiles ?? [])
        {
            File.WriteAllText(Path.Combine(staged, name), text);
        }

        commit.Commit();
    }
}


/// <summary>A checkpoint file that cannot be read: truncated, corrupt, missing a parameter, or with malformed metadata.</summary>
public sealed class CheckpointUnreadableException : TrainingException
{
    /// <summary>Creates the exception with a one-line message and its cause.</summary>
    public CheckpointUnreadableException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
