using System.Globalization;
using Spt.Ir;
using Spt.Passes.Training;

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
    public const string FileName = ArtifactContract.CheckpointFile;

    /// <summary>Format version written in <c>spt.checkpoint.format</c>.</summary>
    public const int FormatVersion = ArtifactContract.CheckpointFormatVersion;

    /// <summary>Builds the checkpoint model from named tensors and the trainer state.</summary>
    public static Model Build(IEnumerable<Tensor> tensors, TrainerState state, IEnumerable<KeyValuePair<string, string>>? extra = null) =>
        ArtifactContract.BuildCheckpoint(tensors,
        [
            new(ArtifactContract.StepKey, state.Step.ToString(CultureInfo.InvariantCulture)),
            new(DataSeedKey, state.DataSeed.ToString(CultureInfo.InvariantCulture)),
            new(DataEpochKey, state.DataEpoch.ToString(CultureInfo.InvariantCulture)),
            new(DataPositionKey, state.DataPosition.ToString(CultureInfo.InvariantCulture)),
            new(TokensSeenKey, state.TokensSeen.ToString(CultureInfo.InvariantCulture)),
            .. extra ?? [],
        ]);

    private const string DataSeedKey = "data_seed";
    private const string DataEpochKey = "data_epoch";
    private const string DataPositionKey = "data_position";
    private const string TokensSeenKey = "tokens_seen";

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

        var seedText = Get(DataSeedKey);
        var seed = defaultSeed;
        if (seedText is not null && !ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out seed))
        {
            throw new TrainingException($"checkpoint metadata '{DataSeedKey}' is '{seedText}', not an unsigned integer");
        }

        return new TrainerState(Long(ArtifactContract.StepKey, 0, int.MaxValue), seed, Long(DataEpochKey, 0), (int)Long(DataPositionKey, 0, int.MaxValue), Long(TokensSeenKey, 0));
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

    /// <summary>
    /// Loads a checkpoint file into the resident state; returns the trainer state it records (missing data seed:
    /// <paramref name="defaultSeed"/>).
    /// </summary>
    /// <exception cref="CheckpointUnreadableException">The file cannot be read or does not fit the artifact.</exception>
    internal static TrainerState LoadInto(string stateFile, ResidentState resident, ulong defaultSeed)
    {
        try
        {
            using var model = Model.Load(stateFile);
            var state = ReadState(model, defaultSeed);
            var tensors = model.Graph.Initializers.Where(v => v.Initializer is not null)
                .ToDictionary(v => v.Name, v => v.Initializer!, StringComparer.Ordinal);
            resident.Load(tensors, stateFile);
            return state;
        }
        catch (Exception e) when (e is OnnxModelException or TrainingException)
        {
            throw new CheckpointUnreadableException($"{stateFile}: {e.Message}", e);
        }
    }

    /// <summary>The resident state as a checkpoint model, with the trainer state and the LR schedule in its metadata.</summary>
    internal static Model Build(ResidentState resident, TrainerState state, LrSchedule schedule, IEnumerable<KeyValuePair<string, string>>? extra = null) =>
        Build(resident.CheckpointTensors(), state,
        [
            new("lr_schedule", schedule.Kind.ToString().ToLowerInvariant()),
            new("lr_peak", schedule.BaseLr.ToString("R", CultureInfo.InvariantCulture)),
            new("lr_warmup", schedule.WarmupSteps.ToString(CultureInfo.InvariantCulture)),
            new("lr_total_steps", schedule.TotalSteps.ToString(CultureInfo.InvariantCulture)),
            .. extra ?? [],
        ]);
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
