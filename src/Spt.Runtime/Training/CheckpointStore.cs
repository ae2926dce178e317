using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spt.Ir;
using Spt.Passes.Training;

namespace Spt.Runtime.Training;

/// <summary>
/// What must not change when a run is continued: the data order (seed), the batch shape (batch, accumulate,
/// sequence length) and the compiled model (a hash of the artifact's manifest, which lists every parameter, the
/// loss and the optimizer settings).
/// </summary>
/// <param name="Seed">Seed of the data order.</param>
/// <param name="BatchSize">Sequences per micro-batch.</param>
/// <param name="Accumulate">Micro-batches per optimizer step.</param>
/// <param name="SequenceLength">Tokens per sequence.</param>
/// <param name="ArtifactHash">SHA-256 (hex) of the artifact's training.json.</param>
public sealed record RunConfig(ulong Seed, int BatchSize, int Accumulate, int SequenceLength, string ArtifactHash)
{
    /// <summary>A short hash of all fields, stored with the run.</summary>
    public string Hash => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Create(CultureInfo.InvariantCulture,
        $"{Seed}|{BatchSize}|{Accumulate}|{SequenceLength}|{ArtifactHash}"))))[..16];

    /// <summary>The hash of an artifact directory's manifest.</summary>
    public static string HashArtifact(string artifactDirectory) =>
        Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(artifactDirectory, ArtifactContract.ManifestFile))));
}

/// <summary>
/// The checkpoint directory of one run: <c>DIR/run.json</c> (the run's id and <see cref="RunConfig"/>),
/// <c>DIR/.lock</c> (held by the training process while it runs), and <c>DIR/step-00000010/</c> (<c>state.onnx</c> and
/// a copy of <c>run.json</c>), ..., of which the newest <see cref="Keep"/> of this run are kept.
/// <para>
/// The protocol: a run takes the lock before its first write, so a second process on the same directory fails with
/// one line; a fresh run refuses a directory that already holds checkpoints (continue them with a resume, or use
/// another directory); a resume checks the configuration against <c>run.json</c>; checkpoints are written through a
/// staging directory and renamed into place, and old ones are deleted by renaming them away first, so no kill leaves
/// a half-written or half-deleted <c>step-*</c> directory; what a killed process staged is removed at the next start.
/// </para>
/// </summary>
public sealed class CheckpointStore : IDisposable
{
    /// <summary>File naming the run that owns the directory (and, in each step directory, the run that wrote it).</summary>
    public const string RunFile = "run.json";

    /// <summary>The lock file held by the training process.</summary>
    public const string LockFile = ".lock";

    /// <summary>The subdirectory holding the best evaluation's checkpoint (written by the trainer with --best-metric).</summary>
    public const string BestDirectory = "best";

    private const string Prefix = "step-";
    private FileStream? _lock;
    private string? _runId;
    private bool _ownsUnlabeled;

    /// <summary>Opens (and creates) <paramref name="directory"/>; nothing is locked or written until a run begins.</summary>
    /// <exception cref="TrainingException">The path cannot be a directory, or <paramref name="keep"/> is below 1.</exception>
    public CheckpointStore(string directory, int keep)
    {
        if (keep < 1)
        {
            throw new TrainingException($"--keep must be at least 1 (got {keep})");
        }

        RequireDirectory(directory);
        Directory = Path.GetFullPath(directory);
        Keep = keep;
        System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>The run's checkpoint directory.</summary>
    public string Directory { get; }

    /// <summary>How many checkpoints are kept.</summary>
    public int Keep { get; }

    /// <summary>Whether a run began (<see cref="BeginFresh"/> or <see cref="BeginResume"/>).</summary>
    public bool Begun => _runId is not null;

    /// <summary>The id of the run that owns the directory, once begun.</summary>
    public string? RunId => _runId;

    /// <summary>
    /// Checks, before anything is compiled or written, that a run may use <paramref name="directory"/>: it is not a
    /// file, no other process holds it, and (unless <paramref name="resume"/>) it holds no checkpoints.
    /// </summary>
    /// <exception cref="TrainingException">The directory cannot be used.</exception>
    public static void Preflight(string directory, bool resume)
    {
        RequireDirectory(directory);
        var full = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(full))
        {
            return;
        }

        using (TakeLock(full))
        {
        }

        if (!resume)
        {
            RefuseExistingCheckpoints(full);
        }
    }

    /// <summary>Starts a new run: takes the lock, refuses a directory with checkpoints, writes a new <c>run.json</c>.</summary>
    /// <exception cref="TrainingException">Another process holds the directory, or it holds checkpoints.</exception>
    public void BeginFresh(RunConfig config)
    {
        Acquire();
        try
        {
            RefuseExistingCheckpoints(Directory);
            WriteRun(Guid.NewGuid().ToString("N"), config);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Continues the run of the directory: takes the lock and checks <paramref name="config"/> against <c>run.json</c>.
    /// A directory without <c>run.json</c> (none yet, or written by an older sptc) is adopted as this run's.
    /// </summary>
    /// <exception cref="TrainingException">Another process holds the directory, or the configuration differs.</exception>
    public void BeginResume(RunConfig config)
    {
        Acquire();
        try
        {
            Resume(config);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private void Resume(RunConfig config)
    {
        var path = Path.Combine(Directory, RunFile);
        if (!File.Exists(path))
        {
            _ownsUnlabeled = true;
            WriteRun(Guid.NewGuid().ToString("N"), config);
            return;
        }

        var (id, stored) = ReadRun(path);
        void Same<T>(string flag, T now, T then)
        {
            if (!EqualityComparer<T>.Default.Equals(now, then))
            {
                throw new TrainingException($"{flag} {now} differs from the run being resumed ({flag} {then}, {path}); resume with the same --seed, --batch, --accumulate and --seq");
            }
        }

        Same("--seed", config.Seed, stored.Seed);
        Same("--batch", config.BatchSize, stored.BatchSize);
        Same("--accumulate", config.Accumulate, stored.Accumulate);
        Same("--seq", config.SequenceLength, stored.SequenceLength);
        if (config.ArtifactHash != stored.ArtifactHash)
        {
            throw new TrainingException($"the compiled model differs from the run being resumed (artifact {config.ArtifactHash[..12]} vs {stored.ArtifactHash[..12]} in {path}); resume with the same model and training flags");
        }

        _runId = id;
    }

    /// <summary>The directory of the checkpoint of <paramref name="step"/>.</summary>
    public string PathFor(long step) => Path.Combine(Directory, Prefix + step.ToString("D8", CultureInfo.InvariantCulture));

    /// <summary>Complete checkpoints of this run (of any run before one began), oldest first.</summary>
    public IReadOnlyList<(long Step, string Path)> List() =>
        [.. AllComplete(Directory).Where(c => Owns(c.Path))];

    /// <summary>The newest complete checkpoint directory of this run, or null.</summary>
    public string? Latest() => List() is { Count: > 0 } all ? all[^1].Path : null;

    /// <summary>
    /// Writes the checkpoint of <paramref name="step"/> atomically, then deletes all but the newest <see cref="Keep"/>
    /// of this run. Takes the lock first when no run began (a plain store used on its own).
    /// </summary>
    public string Save(Model checkpoint, long step)
    {
        Acquire();
        var path = PathFor(step);
        var runText = _runId is not null ? File.ReadAllText(Path.Combine(Directory, RunFile)) : null;
        Checkpoint.WriteAtomically(checkpoint, path, runText is null ? null : [(RunFile, runText)]);
        var own = List();
        foreach (var (_, old) in own.Take(Math.Max(0, own.Count - Keep)))
        {
            OutputCommit.DeleteDirectory(old);
        }

        OutputCommit.RemoveStale(Directory);
        return path;
    }

    /// <summary>Releases the lock.</summary>
    public void Dispose()
    {
        _lock?.Dispose();
        _lock = null;
    }

    private void Acquire()
    {
        if (_lock is null)
        {
            _lock = TakeLock(Directory);
            OutputCommit.RemoveStale(Directory);
        }
    }

    // An exclusive lock (.NET takes flock(LOCK_EX | LOCK_NB) for FileShare.None on Unix), released when the
    // stream is closed or the process ends, however it ends.
    private static FileStream TakeLock(string directory)
    {
        var path = Path.Combine(directory, LockFile);
        try
        {
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            throw new TrainingException($"checkpoint directory '{directory}' is in use by another training process (it holds {path}): {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new TrainingException($"cannot lock checkpoint directory '{directory}': {e.Message}", e);
        }
    }

    private static void RefuseExistingCheckpoints(string directory)
    {
        var existing = AllComplete(directory);
        if (existing.Count > 0)
        {
            throw new TrainingException($"checkpoint directory '{directory}' already holds checkpoints (steps {existing[0].Step}..{existing[^1].Step}); " +
                "continue that run with --resume, or give a new --checkpoint-dir");
        }
    }

    private static void RequireDirectory(string directory)
    {
        try
        {
            FileChecks.RequireOutputDirectory(directory, "checkpoint directory");
        }
        catch (OnnxModelException e)
        {
            throw new TrainingException(e.Message, e);
        }
    }

    private static List<(long Step, string Path)> AllComplete(string directory) =>
        [.. System.IO.Directory.EnumerateDirectories(directory, Prefix + "*")
            .Select(d => (Name: System.IO.Path.GetFileName(d), Path: d))
            .Where(d => long.TryParse(d.Name.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out _)
                        && File.Exists(System.IO.Path.Combine(d.Path, Checkpoint.FileName)))
            .Select(d => (long.Parse(d.Name.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture), d.Path))
            .OrderBy(d => d.Item1)];

    private bool Owns(string stepDirectory)
    {
        if (_runId is null)
        {
            return true;
        }

        var file = Path.Combine(stepDirectory, RunFile);
        if (!File.Exists(file))
        {
            return _ownsUnlabeled;
        }

        try
        {
            return ReadRun(file).Id == _runId;
        }
        catch (TrainingException)
        {
            return false;
        }
    }

    private void WriteRun(string id, RunConfig config)
    {
        var json = new JsonObject
        {
            ["format"] = "sptc-run",
            ["version"] = 1,
            ["run_id"] = id,
            ["created"] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
            ["config_hash"] = config.Hash,
            ["config"] = new JsonObject
            {
                ["seed"] = config.Seed,
                ["batch"] = config.BatchSize,
                ["accumulate"] = config.Accumulate,
                ["seq"] = config.SequenceLength,
                ["artifact"] = config.ArtifactHash,
            },
        };
        var path = Path.Combine(Directory, RunFile);
        var temp = OutputCommit.TempSibling(path);
        try
        {
            File.WriteAllText(temp, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.Move(temp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }

            OutputCommit.Release(temp);
        }

        _runId = id;
    }

    private static (string Id, RunConfig Config) ReadRun(string path)
    {
        try
        {
            var json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new FormatException("not a JSON object");
            var c = json["config"] as JsonObject ?? throw new FormatException("no config");
            T Field<T>(JsonObject o, string key) => o[key] is { } v ? v.GetValue<T>() : throw new FormatException($"no '{key}'");
            return (Field<string>(json, "run_id"), new RunConfig(
                Field<ulong>(c, "seed"), Field<int>(c, "batch"), Field<int>(c, "accumulate"), Field<int>(c, "seq"), Field<string>(c, "artifact")));
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or IOException)
        {
            throw new TrainingException($"'{path}' is not a readable run file: {e.Message}", e);
        }
    }
}
