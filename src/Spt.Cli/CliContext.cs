using System.CommandLine;
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

    /// <summary>A Spectre console that writes to <see cref="Out"/> (plain text when it is not a terminal).</summary>
    public IAnsiConsole Console { get; } = AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(stdout),
        Ansi = ReferenceEquals(stdout, System.Console.Out) && !System.Console.IsOutputRedirected
            ? AnsiSupport.Detect
            : AnsiSupport.No,
        ColorSystem = ColorSystemSupport.Detect,
    });

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
        or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
        or CliUsageException or Microsoft.ML.OnnxRuntime.OnnxRuntimeException;

    private static string OneLine(string message) =>
        string.Join(' ', message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}

/// <summary>A flag or argument combination that makes no sense; reported as one line with exit code 2.</summary>
internal sealed class CliUsageException(string message) : Exception(message);
