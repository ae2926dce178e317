using System.Collections.Concurrent;
using System.Globalization;
using System.Text.RegularExpressions;

namespace Spt.Ir;

/// <summary>
/// A set of output files and directories written all or nothing. Every target is checked when it is added
/// (before anything is written); the caller writes to the staged path each <c>Add</c> returns, inside a hidden
/// staging directory next to the target (same file system, so the final rename is atomic); <see cref="Commit"/>
/// renames everything into place. Disposing without committing, or <see cref="AbortAll"/> from a signal handler,
/// deletes the staged data, so a failure leaves nothing behind. Staging left by a killed process (its id is in the
/// name) is removed the next time a commit stages into the same directory.
/// </summary>
public sealed partial class OutputCommit : IDisposable
{
    // Temporary names: ".<target name>.sptc-<pid>-<guid>.tmp" and staging directories ".sptc-<pid>-<guid>.tmp".
    private const string Marker = ".sptc-";
    private static readonly ConcurrentDictionary<string, byte> LiveTemps = new(StringComparer.Ordinal);
    private readonly List<Entry> _entries = [];
    private readonly Dictionary<string, string> _stages = new(StringComparer.Ordinal);
    private bool _committed;

    private sealed record Entry(string Staged, string Target, bool IsDirectory);

    /// <summary>
    /// Adds an output file; returns the path to write it to. Files the writer puts next to it in the staging
    /// directory (a model's external data) are committed with it.
    /// </summary>
    /// <exception cref="OnnxModelException">The target cannot be written (see <see cref="FileChecks.RequireOutputFile"/>), or is named twice.</exception>
    public string AddFile(string target, string what = "output file")
    {
        FileChecks.RequireOutputFile(target, what);
        string full = Path.GetFullPath(target);
        RequireNew(full, target, what);
        string staged = Path.Combine(StageFor(Path.GetDirectoryName(full)!), Path.GetFileName(full));
        _entries.Add(new Entry(staged, full, false));
        return staged;
    }

    /// <summary>
    /// Adds an output directory (created empty in the staging area); returns its staged path. An existing directory
    /// is replaced on commit only when it is empty or <paramref name="replaceable"/> says it is one this tool wrote.
    /// </summary>
    /// <exception cref="OnnxModelException">The target cannot be written, or holds something else.</exception>
    public string AddDirectory(string target, string what = "output directory", Func<string, bool>? replaceable = null)
    {
        FileChecks.RequireOutputDirectory(target, what);
        string full = Path.GetFullPath(target);
        RequireNew(full, target, what);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !(replaceable?.Invoke(full) ?? false))
            throw new OnnxModelException($"{what} '{target}' exists and holds other files; give a new or empty directory");
        string staged = Path.Combine(StageFor(Path.GetDirectoryName(full)!), Path.GetFileName(full));
        Directory.CreateDirectory(staged);
        _entries.Add(new Entry(staged, full, true));
        return staged;
    }

    /// <summary>Renames every staged output into place and removes the staging directories.</summary>
    public void Commit()
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        try
        {
            foreach (var (parent, stage) in _stages)
            {
                var registered = _entries.Where(e => Path.GetDirectoryName(e.Staged) == stage).ToList();
                foreach (var e in registered.Where(e => e.IsDirectory))
                    MoveDirectoryIntoPlace(e.Staged, e.Target);
                // Files: the registered ones and what their writers put beside them.
                foreach (var file in Directory.EnumerateFiles(stage))
                    File.Move(file, Path.Combine(parent, Path.GetFileName(file)), overwrite: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OnnxModelException($"cannot move the outputs into place: {e.Message}", e);
        }
        finally
        {
            _committed = true;
            DeleteStages();
        }
    }

    /// <summary>Deletes what was staged unless <see cref="Commit"/> ran.</summary>
    public void Dispose()
    {
        if (!_committed)
        {
            _committed = true;
            DeleteStages();
        }
    }

    /// <summary>
    /// Deletes every staged output and temporary file of this process that is not committed yet; for a signal
    /// handler before the process ends.
    /// </summary>
    public static void AbortAll()
    {
        foreach (var path in LiveTemps.Keys)
            TryDelete(path);
        LiveTemps.Clear();
    }

    /// <summary>A hidden temporary name next to <paramref name="target"/>, tagged with this process's id, tracked for <see cref="AbortAll"/>.</summary>
    public static string TempSibling(string target)
    {
        string full = Path.GetFullPath(target);
        string dir = Path.GetDirectoryName(full)!;
        RemoveStale(dir);
        string temp = Path.Combine(dir, $".{Path.GetFileName(full)}{NewTag()}");
        LiveTemps.TryAdd(temp, 0);
        return temp;
    }

    /// <summary>
    /// Deletes a directory by renaming it to a temporary name first, so that a kill midway leaves no half-deleted
    /// directory under its real name (the renamed rest is removed by a later <see cref="RemoveStale"/>).
    /// </summary>
    public static void DeleteDirectory(string path)
    {
        if (!Directory.Exists(path))
            return;
        string trash = TempSibling(path);
        Directory.Move(path, trash);
        TryDelete(trash);
        Release(trash);
    }

    /// <summary>Stops tracking a temporary path (it was renamed into place or deleted).</summary>
    public static void Release(string temp) => LiveTemps.TryRemove(temp, out _);

    /// <summary>
    /// Removes staging directories and temporary files in <paramref name="directory"/> left by processes that no
    /// longer run. Returns how many were removed.
    /// </summary>
    public static int RemoveStale(string directory)
    {
        int removed = 0;
        if (!Directory.Exists(directory))
            return 0;
        try
        {
            foreach (var entry in Directory.EnumerateFileSystemEntries(directory, "*" + Marker + "*.tmp"))
            {
                var m = TagPattern().Match(Path.GetFileName(entry));
                if (!m.Success || !int.TryParse(m.Groups[1].ValueSpan, NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                    continue;
                if (pid == Environment.ProcessId || ProcessRuns(pid))
                    continue;
                TryDelete(entry);
                removed++;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A directory we cannot list has nothing of ours to clean.
        }
        return removed;
    }

    /// <summary>Whether <paramref name="name"/> is a temporary or staging name made by this class.</summary>
    public static bool IsTemporaryName(string name) => TagPattern().IsMatch(name);

    private static string NewTag() => $"{Marker}{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}-{Guid.NewGuid():N}.tmp";

    [GeneratedRegex(@"\.sptc-(\d+)-[0-9a-f]{32}\.tmp$")]
    private static partial Regex TagPattern();

    private static bool ProcessRuns(int pid) => !OperatingSystem.IsLinux() || Directory.Exists($"/proc/{pid}");

    private void RequireNew(string full, string target, string what)
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        if (_entries.Any(e => e.Target == full || FileChecks.IsWithin(full, e.Target) || FileChecks.IsWithin(e.Target, full)))
            throw new OnnxModelException($"{what} '{target}' is also named as another output");
    }

    private string StageFor(string parent)
    {
        if (!_stages.TryGetValue(parent, out var stage))
        {
            RemoveStale(parent);
            stage = Path.Combine(parent, NewTag());
            try
            {
                Directory.CreateDirectory(stage);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new OnnxModelException($"cannot write into '{parent}': {e.Message}", e);
            }
            LiveTemps.TryAdd(stage, 0);
            _stages.Add(parent, stage);
        }
        return stage;
    }

    private static void MoveDirectoryIntoPlace(string staged, string target)
    {
        if (!Directory.Exists(target))
        {
            Directory.Move(staged, target);
            return;
        }
        // Directory.Move does not replace: move the old one aside (a temporary name), then delete it.
        string old = TempSibling(target);
        Directory.Move(target, old);
        Directory.Move(staged, target);
        TryDelete(old);
        Release(old);
    }

    private void DeleteStages()
    {
        foreach (var stage in _stages.Values)
        {
            TryDelete(stage);
            Release(stage);
        }
        _stages.Clear();
    }

    private static void TryDelete(string path)
    {
        try
        {
            if (Directory.Exists(path) && !File.GetAttributes(path).HasFlag(FileAttributes.ReparsePoint))
                Directory.Delete(path, recursive: true);
            else if (File.Exists(path))
                File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover carries this process's id and is removed by a later RemoveStale.
        }
    }
}
