using Google.Protobuf;
using System.Globalization;
using System.Text;

namespace Spt.Cli.Tests.Fuzz;

/// <summary>
/// Runs one malformed model through <c>inspect</c>, <c>optimize</c>, <c>compile-training</c> and <c>verify</c>
/// (in-process) and records every breach of the bad-input contract: an exit code other than 0/2/3 (4 for verify:
/// outputs differ), a stack trace, an error of more than one line, a file or folder left behind by a failing command
/// (or a staging leftover after any command), or a command that does not finish in time.
/// </summary>
internal sealed class FuzzHarness
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);
    private readonly StringBuilder _problems = new();

    /// <summary>Cases run.</summary>
    public int Cases { get; private set; }

    /// <summary>Command runs.</summary>
    public int Runs { get; private set; }

    /// <summary>Runs that exited with a code outside the contract (1 is an internal error).</summary>
    public int Crashes { get; private set; }

    /// <summary>Runs that printed a stack trace.</summary>
    public int StackTraces { get; private set; }

    /// <summary>Failing runs whose error took more than one line.</summary>
    public int MultiLineErrors { get; private set; }

    /// <summary>Runs that left files or folders behind on failure (or staging leftovers at all).</summary>
    public int Leftovers { get; private set; }

    /// <summary>Runs that did not finish within the limit.</summary>
    public int Hangs { get; private set; }

    /// <summary>Runs that exited 0, 2, 3 and 4.</summary>
    public SortedDictionary<int, int> ExitCodes { get; } = [];

    /// <summary>The breaches found, one per line.</summary>
    public string Problems => _problems.ToString();

    /// <summary>Whether no breach was found.</summary>
    public bool Clean => Crashes + StackTraces + MultiLineErrors + Leftovers + Hangs == 0;

    /// <summary>Runs the four commands on the model that <paramref name="create"/> writes into a fresh folder.</summary>
    public void Run(string name, Func<string, string> create)
    {
        Cases++;
        var root = Path.Combine(Path.GetTempPath(), "sptc-fuzz-" + Guid.NewGuid().ToString("N"));
        var dir = Path.Combine(root, "case");
        Directory.CreateDirectory(dir);
        try
        {
            var model = create(dir);
            var reference = Path.Combine(root, "reference.onnx");
            File.WriteAllBytes(reference, CraftedModels.Tiny().ToByteArray());
            var outDir = Path.Combine(root, "out");
            Directory.CreateDirectory(outDir);
            Check(name, "inspect", outDir, ["inspect", model]);
            Check(name, "optimize", outDir, ["optimize", model, "-o", Path.Combine(outDir, "o.onnx"), "--report", Path.Combine(outDir, "r.json")]);
            Check(name, "compile-training", outDir, ["compile-training", model, "--out-dir", Path.Combine(outDir, "art")]);
            Check(name, "verify", outDir, ["verify", reference, model]);
            if (Directory.EnumerateFileSystemEntries(root, "*.tmp", SearchOption.AllDirectories).FirstOrDefault() is { } stray)
            {
                Leftovers++;
                Note(name, "all", $"staging leftover {stray}");
            }
        }
        finally
        {
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>The figures as a Markdown table row set.</summary>
    public string Table(string label) => string.Create(CultureInfo.InvariantCulture,
        $"| {label} | {Cases} | {Runs} | {Crashes} | {StackTraces} | {MultiLineErrors} | {Leftovers} | {Hangs} | {string.Join(", ", ExitCodes.Select(kv => $"{kv.Key}: {kv.Value}"))} |");

    /// <summary>The header of <see cref="Table"/>.</summary>
    public const string TableHeader = "| corpus | cases | command runs | crashes (exit 1 or other) | stack traces | multi-line errors | leftovers | hangs | exit codes |\n|---|---|---|---|---|---|---|---|---|";

    private void Check(string name, string command, string outDir, string[] args)
    {
        Runs++;
        foreach (var entry in Directory.EnumerateFileSystemEntries(outDir))
        {
            if (Directory.Exists(entry))
                Directory.Delete(entry, recursive: true);
            else
                File.Delete(entry);
        }

        // SPTC_FUZZ_VERBOSE=1 adds --verbose, so a breach comes with its stack trace (for debugging a seed).
        if (Environment.GetEnvironmentVariable("SPTC_FUZZ_VERBOSE") == "1")
            args = [.. args, "--verbose"];
        var task = Task.Run(() => CliRunner.Run(args));
        if (!task.Wait(Limit))
        {
            Hangs++;
            Note(name, command, "did not finish in time");
            return;
        }

        var (code, stdout, stderr) = task.Result;
        ExitCodes[code] = ExitCodes.GetValueOrDefault(code) + 1;
        var allowed = command == "verify" ? new[] { 0, 2, 3, 4 } : [0, 2, 3];
        if (!allowed.Contains(code))
        {
            Crashes++;
            Note(name, command, $"exit {code}: {stderr.Trim()}");
        }

        if (stderr.Contains("   at ", StringComparison.Ordinal) || stdout.Contains("   at ", StringComparison.Ordinal) || stderr.Contains("Exception:", StringComparison.Ordinal))
        {
            StackTraces++;
            Note(name, command, "stack trace printed");
        }

        var errorLines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Where(l => !l.StartsWith("sptc: warning:", StringComparison.Ordinal)).ToList();
        if (code is 2 && (errorLines.Count != 1 || !errorLines[0].StartsWith("sptc: error: ", StringComparison.Ordinal)))
        {
            MultiLineErrors++;
            Note(name, command, $"error in {errorLines.Count} lines: {stderr.Trim()}");
        }

        if (code is not (0 or 3 or 4) && Directory.EnumerateFileSystemEntries(outDir).Any())
        {
            Leftovers++;
            Note(name, command, $"exit {code} left {string.Join(", ", Directory.EnumerateFileSystemEntries(outDir).Select(Path.GetFileName))}");
        }
    }

    private void Note(string name, string command, string problem) => _problems.AppendLine(CultureInfo.InvariantCulture, $"{name} / {command}: {problem}");
}
