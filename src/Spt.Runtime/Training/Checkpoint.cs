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

    /// <summary>Reads the trainer state from a checkpoint model's metadata (missing entries read as a fresh run's).</summary>
    public static TrainerState ReadState(Model model, ulong defaultSeed)
    {
        string? Get(string key) => model.Metadata.LastOrDefault(kv => kv.Key == key).Value;
        long Long(string key, long fallback) =>
            Get(key) is { } s ? long.Parse(s, NumberStyles.Integer, CultureInfo.InvariantCulture) : fallback;
        var seed = Get("data_seed") is { } seedText ? ulong.Parse(seedText, CultureInfo.InvariantCulture) : defaultSeed;
        return new TrainerState(Long("step", 0), seed, Long("data_epoch", 0), (int)Long("data_position", 0), Long("tokens_seen", 0));
    }

    /// <summary>
    /// Writes the checkpoint into <paramref name="directory"/> atomically: everything goes to a temporary sibling
    /// directory first, which is then renamed into place, so a reader sees either no directory or a complete one.
    /// An existing directory of that name is replaced.
    /// </summary>
    public static void WriteAtomically(Model model, string directory)
    {
        var full = Path.GetFullPath(directory);
        var parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{directory}' has no parent directory");
        Directory.CreateDirectory(parent);
        var tmp = Path.Combine(parent, $".tmp-{Path.GetFileName(full)}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            model.Save(Path.Combine(tmp, FileName));
            if (Directory.Exists(full))
            {
                // Move the old one aside first: Directory.Move does not replace.
                var old = Path.Combine(parent, $".old-{Path.GetFileName(full)}-{Guid.NewGuid():N}");
                Directory.Move(full, old);
                Directory.Move(tmp, full);
                Directory.Delete(old, recursive: true);
            }
            else
            {
                Directory.Move(tmp, full);
            }
        }
        catch
        {
            if (Directory.Exists(tmp))
            {
                Directory.Delete(tmp, recursive: true);
            }

            throw;
        }
    }
}

/// <summary>
/// The checkpoints of one run: <c>DIR/step-00000010/state.onnx</c>, ..., the newest <see cref="Keep"/> kept.
/// Temporary directories (<c>.tmp-*</c>) left by a crash are ignored and removed.
/// </summary>
public sealed class CheckpointStore
{
    private const string Prefix = "step-";

    /// <summary>Opens (and creates) <paramref name="directory"/>.</summary>
    public CheckpointStore(string directory, int keep)
    {
        if (keep < 1)
        {
            throw new TrainingException($"--keep must be at least 1 (got {keep})");
        }

        Directory = Path.GetFullPath(directory);
        Keep = keep;
        System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>The run's checkpoint directory.</summary>
    public string Directory { get; }

    /// <summary>How many checkpoints are kept.</summary>
    public int Keep { get; }

    /// <summary>The directory of the checkpoint of <paramref name="step"/>.</summary>
    public string PathFor(long step) => Path.Combine(Directory, Prefix + step.ToString("D8", CultureInfo.InvariantCulture));

    /// <summary>Complete checkpoints, oldest first.</summary>
    public IReadOnlyList<(long Step, string Path)> List() =>
        [.. System.IO.Directory.EnumerateDirectories(Directory, Prefix + "*")
            .Select(d => (Name: System.IO.Path.GetFileName(d), Path: d))
            .Where(d => long.TryParse(d.Name.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out _)
                        && File.Exists(System.IO.Path.Combine(d.Path, Checkpoint.FileName)))
            .Select(d => (long.Parse(d.Name.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture), d.Path))
            .OrderBy(d => d.Item1)];

    /// <summary>The newest complete checkpoint directory, or null.</summary>
    public string? Latest() => List() is { Count: > 0 } all ? all[^1].Path : null;

    /// <summary>Writes the checkpoint of <paramref name="step"/> atomically, then deletes all but the newest <see cref="Keep"/>.</summary>
    public string Save(Model checkpoint, long step)
    {
        var path = PathFor(step);
        Checkpoint.WriteAtomically(checkpoint, path);
        var all = List();
        foreach (var (_, old) in all.Take(Math.Max(0, all.Count - Keep)))
        {
            System.IO.Directory.Delete(old, recursive: true);
        }

        foreach (var stale in System.IO.Directory.EnumerateDirectories(Directory, ".tmp-*"))
        {
            if (!stale.Contains($"-{Environment.ProcessId}-", StringComparison.Ordinal))
            {
                System.IO.Directory.Delete(stale, recursive: true);
            }
        }

        return path;
    }
}
