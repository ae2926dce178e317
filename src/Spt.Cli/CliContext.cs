using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.CustomOps;
using Spt.Ir;

namespace Spt.Cli;

/// <summary>Exit codes of the sptc command.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    public const int InternalError = 1;
    public const int BadInput = 2;
    public const int NothingMatched = 3;

    /// <summary><c>sptc verify</c>: both models ran, and at least one output differs beyond the tolerance.</summary>
    public const int OutputsDiffer = 4;

    /// <summary>Training stopped because the loss or gradient norm became NaN or infinite (the last good checkpoint is kept).</summary>
    public const int Diverged = 5;

    /// <summary>
    /// <c>sptc train</c> got SIGINT or SIGTERM: it finished the step under way, wrote a checkpoint of it (with
    /// --checkpoint-dir) and stopped; <c>--resume</c> continues from there. A second signal ends the process at once.
    /// </summary>
    public const int Interrupted = 6;
}

/// <summary>
/// SIGINT and SIGTERM. Outside a graceful section the process ends as usual, after deleting the outputs it had
/// staged but not committed (so an interrupted save leaves nothing). Inside one (<see cref="Graceful"/>, used by
/// training) the first signal only cancels <see cref="Token"/>, so the loop can finish its step and checkpoint.
/// </summary>
internal static class Interrupts
{
    private static readonly CancellationTokenSource Source = new();
    private static readonly List<PosixSignalRegistration> Registrations = [];
    private static int _graceful;

    /// <summary>Cancelled by the first SIGINT/SIGTERM during a graceful section.</summary>
    public static CancellationToken Token => Source.Token;

    /// <summary>The signal that cancelled <see cref="Token"/>, if any.</summary>
    public static PosixSignal? Received { get; private set; }

    /// <summary>Installs the handlers (once, from the process entry point).</summary>
    public static void Install()
    {
        if (Registrations.Count == 0)
        {
            Registrations.Add(PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle));
            Registrations.Add(PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle));
        }
    }

    /// <summary>Starts a section in which a signal asks the work to stop instead of ending the process.</summary>
    public static IDisposable Graceful()
    {
        Interlocked.Increment(ref _graceful);
        return new Section();
    }

    private static void Handle(PosixSignalContext context)
    {
        if (Volatile.Read(ref _graceful) > 0 && !Source.IsCancellationRequested)
        {
            Received = context.Signal;
            context.Cancel = true;
            Source.Cancel();
            return;
        }

        OutputCommit.AbortAll();
    }

    private sealed class Section : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Interlocked.Decrement(ref _graceful);
            }
        }
    }
}

/// <summary>Where a command writes, and how failures become one-line messages and exit codes.</summary>
internal sealed class CliContext(TextWriter stdout, TextWriter stderr)
{
    public static readonly Option<bool> VerboseOption = new("--verbose", "-v")
    {
        Description = "Print stack traces and extra diagnostics",
        Recursive = true,
    };

    public TextWriter Out { get; } = stdout;

    public TextWriter Error { get; } = stderr;

    /// <summary>Whether <see cref="Out"/> is this process's standard output and that is a terminal.</summary>
    public bool IsTerminal { get; } = ReferenceEquals(stdout, System.Console.Out) && !System.Console.IsOutputRedirected;

    /// <summary>
    /// A Spectre console that writes to <see cref="Out"/>. On a terminal: colors and the terminal's width. Anywhere
    /// else (a pipe, a file, a test's writer): no escape sequences and no width limit, so that a table never wraps
    /// its cells at 80 columns and every row stays one line for grep and diff.
    /// </summary>
    public IAnsiConsole Console => _console ??= CreateConsole(Out, IsTerminal);

    private IAnsiConsole? _console;

    /// <summary>Line width of non-terminal output: tables take the width of their content, up to this.</summary>
    internal const int UnboundedWidth = 1 << 16;

    private static IAnsiConsole CreateConsole(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal)
        {
            console.Profile.Width = UnboundedWidth;
        }

        return console;
    }

    /// <summary>Writes a JSON document (indented) to <see cref="Out"/>: the <c>--json</c> form of a command's table.</summary>
    public void WriteJson(JsonNode node) => Out.WriteLine(node.ToJsonString(JsonOptions));

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    /// <summary>
    /// Runs a command body; user and model errors become one line on stderr and exit code 2, anything else an
    /// internal error (exit 1). Stack traces only with --verbose.
    /// </summary>
    public int Guard(ParseResult parse, Func<int> body)
    {
        var verbose = parse.GetValue(VerboseOption);
        try
        {
            return body();
        }
        catch (Spt.Runtime.Training.TrainingDivergedException e)
        {
            Error.WriteLine($"sptc: error: {OneLine(e.Message)}");
            return ExitCodes.Diverged;
        }
        catch (Exception e) when (IsUserError(e))
        {
            Error.WriteLine($"sptc: error: {OneLine(e.Message)}");
            if (verbose)
            {
                Error.WriteLine(e.ToString());
            }

            return ExitCodes.BadInput;
        }
        catch (Exception e)
        {
            Error.WriteLine($"sptc: internal error: {OneLine(e.Message)} (run with --verbose for details)");
            if (verbose)
            {
                Error.WriteLine(e.ToString());
            }

            return ExitCodes.InternalError;
        }
    }

    private static bool IsUserError(Exception e) => e is OnnxModelException or OpContractException
        or IOException or UnauthorizedAccessException
        or CliUsageException or Microsoft.ML.OnnxRuntime.OnnxRuntimeException or Spt.Runtime.Training.TrainingException;

    /// <summary>A message folded onto one line.</summary>
    public static string OneLine(string message) =>
        string.Join(' ', message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}

/// <summary>A flag or argument combination that makes no sense; reported as one line with exit code 2.</summary>
internal sealed class CliUsageException(string message) : Exception(message);
