using System.CommandLine;

namespace Spt.Cli;

/// <summary>The <c>sptc</c> command: parses flags, calls the libraries, prints.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        Interrupts.Install();
        return Run(args, Console.Out, Console.Error);
    }

    /// <summary>Runs sptc with the given arguments and writers; returns the exit code.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = BuildRootCommand(stdout, stderr);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // Exactly one line and exit code 2, instead of the full help text: the first problem, a count of the rest.
            var more = parse.Errors.Count > 1 ? $" (and {parse.Errors.Count - 1} more)" : "";
            stderr.WriteLine($"sptc: error: {CliContext.OneLine(parse.Errors[0].Message)}{more}; see '{string.Join(' ', CommandPath(parse))} --help'");
            return ExitCodes.BadInput;
        }

        return parse.Invoke(new InvocationConfiguration
        {
            Output = stdout,
            Error = stderr,
            EnableDefaultExceptionHandler = false,
        });
    }

    private static IEnumerable<string> CommandPath(ParseResult parse)
    {
        var names = new List<string>();
        for (var result = parse.CommandResult; result is not null; result = result.Parent as System.CommandLine.Parsing.CommandResult)
        {
            names.Insert(0, result.Command is RootCommand ? "sptc" : result.Command.Name);
        }

        return names;
    }

    internal static RootCommand BuildRootCommand(TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand(
            "sptc: compiles ONNX transformer models for cheaper fine-tuning (sparse PQ attention, routed FFN) " +
            "and fine-tunes them on ONNX Runtime.");
        root.Options.Add(CliContext.VerboseOption);
        var context = new CliContext(stdout, stderr);
        root.Subcommands.Add(InspectCommand.Create(context));
        root.Subcommands.Add(OptimizeCommand.Create(context));
        root.Subcommands.Add(VerifyCommand.Create(context));
        root.Subcommands.Add(CompileTrainingCommand.Create(context));
        root.Subcommands.Add(TrainCommand.Create(context));
        root.Subcommands.Add(ApplyAdapterCommand.Create(context));
        root.Subcommands.Add(PredictCommand.Create(context));
        root.Subcommands.Add(BenchCommand.Create(context));
        root.Subcommands.Add(BenchCommand.CreateWorker(context));
        root.Subcommands.Add(DemoCommand.Create(context));
        root.Subcommands.Add(SampleCommand.Create(context));
        root.Subcommands.Add(MpiCheckCommand.Create(context));
        OptionBounds.Attach(root);
        return root;
    }
}
