using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Spectre.Console;
using Spt.Ir;
using Spt.Passes;

namespace Spt.Cli;

/// <summary>
/// <c>sptc optimize MODEL.onnx -o OUT.onnx [...]</c>: recognizes attention and FFN blocks and rewrites them to the SPT
/// ops. Exit 0 on success, 3 when a rewrite was asked for and nothing matched (with the reasons), 2 on bad input.
/// </summary>
internal static class OptimizeCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<FileInfo>("MODEL") { Description = "The ONNX model to optimize" };
        var output = new Option<FileInfo>("--output", "-o") { Description = "Where to write the optimized model", Required = true };
        var rewrite = OptimizeFlags.Create();
        var exact = new Option<bool>("--exact") { Description = "Dense-equivalent configuration (all keys, no clamp, all blocks, no gate)" };
        var report = new Option<FileInfo?>("--report") { Description = "Write the report as JSON to this file" };
        var explain = new Option<bool>("--explain") { Description = "Print why each candidate did not match" };
        var seed = new Option<int>("--seed") { Description = "Seed of the new parameters (default 0)" };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON instead of the table (reasons go to stderr with --explain)" };
        var externalData = new Option<string>("--external-data")
        {
            Description = "copy: write the weights again beside the output (default); reference: the output refers to the source's unchanged external weight file (the output must be in its directory)",
            DefaultValueFactory = _ => "copy",
        };
        externalData.AcceptOnlyFromAmong("copy", "reference");
        var command = new Command("optimize", "Rewrite attention to PQ sparse attention and FFNs to routed FFNs")
        {
            model, output, exact, report, explain, seed, json, externalData,
        };
        rewrite.AddTo(command, includeSwitch: false);
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var options = rewrite.Options(parse, parse.GetValue(exact), parse.GetValue(seed));
            // Every output is checked before anything is written, and all of them appear together at the end.
            using var commit = new OutputCommit();
            var outFile = new FileInfo(commit.AddFile(parse.GetRequiredValue(output).ToString(), "output model"));
            var reportFile = parse.GetValue(report) is { } r ? commit.AddFile(r.ToString(), "report file") : null;
            // References to the source weights are relative to where the output ends up, not to its staging place.
            string? referenceHome = parse.GetValue(externalData) == "reference"
                ? Path.GetDirectoryName(Path.GetFullPath(parse.GetRequiredValue(output).ToString())) : null;
            var result = Run(parse.GetRequiredValue(model), outFile, options, referenceHome);
            bool asJson = parse.GetValue(json);
            if (asJson)
                context.Out.WriteLine(result.ToJson());
            else
                Render(context.Console, result);
            if (reportFile is not null)
                File.WriteAllText(reportFile, result.ToJson());
            commit.Commit();
            bool wanted = options.Attention == AttentionMode.Sparse || options.Ffn == FfnMode.Routed;
            bool nothing = result.AttentionRewritten == 0 && result.FfnRewritten == 0;
            if (parse.GetValue(explain) || (wanted && nothing))
                Explain(asJson ? context.Error : context.Out, result);
            if (wanted && nothing)
            {
                context.Error.WriteLine(result.NoTransformerBlocks
                    ? "sptc: nothing matched: the model has no recognizable attention or FFN block (see the reasons above)"
                    : "sptc: nothing was rewritten (see the reasons above)");
                return ExitCodes.NothingMatched;
            }
            return ExitCodes.Ok;
        }));
        return command;
    }

    /// <summary>Loads, optimizes and (when something was rewritten) saves atomically; timings go into the report.</summary>
    internal static OptimizeReport Run(FileInfo input, FileInfo output, SptOptions options, string? referenceHome = null)
    {
        var watch = Stopwatch.StartNew();
        using var loaded = ModelFiles.Load(input);
        var load = watch.Elapsed;
        var result = SptOptimizer.Optimize(loaded, options);
        result.LoadTime = load;
        if (result.AttentionRewritten > 0 || result.FfnRewritten > 0 || (options.Attention == AttentionMode.Keep && options.Ffn == FfnMode.Keep))
        {
            watch.Restart();
            loaded.Save(output.FullName, new SaveOptions { ReferenceSourceData = referenceHome != null, FinalDirectory = referenceHome });
            result.SaveTime = watch.Elapsed;
        }
        return result;
    }

    private static void Render(IAnsiConsole console, OptimizeReport r)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("sptc optimize");
        table.AddColumns("layer", "attention", "causal / mask", "scale", "attention result", "ffn", "ffn result");
        int count = Math.Max(r.Attention.Count, r.Ffn.Count);
        for (int i = 0; i < count; i++)
        {
            var a = i < r.Attention.Count ? r.Attention[i] : null;
            var f = i < r.Ffn.Count ? r.Ffn[i] : null;
            table.AddRow(
                i.ToString(CultureInfo.InvariantCulture),
                a is null ? "-" : Markup.Escape($"{a.Source} (E={a.HeadDim?.ToString(CultureInfo.InvariantCulture) ?? "?"}, H={a.Heads?.ToString(CultureInfo.InvariantCulture) ?? "?"}{(a.Rotary ? ", rotary" : "")})"),
                a is null ? "-" : Markup.Escape((a.Causal ? "causal" : "bidirectional") + (a.Window > 0 ? $" window {a.Window}" : "") + (a.KeyPaddingMask is { } m ? $" + padding({m})" : "")),
                a is null ? "-" : a.EffectiveScale.ToString("G4", CultureInfo.InvariantCulture),
                a is null ? "-" : a.Rewritten ? "[green]sparse[/]" : "[yellow]dense[/]: " + Markup.Escape(a.KeptDenseReason ?? ""),
                f is null ? "-" : Markup.Escape($"{f.Activation} {f.DModel}->{f.DFf}"),
                f is null ? "-" : f.Rewritten ? "[green]routed[/]" : "[yellow]dense[/]: " + Markup.Escape(f.KeptDenseReason ?? ""));
        }
        console.Write(table);
        var summary = FormattableString.Invariant(
            $"attention: {r.AttentionRewritten}/{r.AttentionFound} rewritten; ffn: {r.FfnRewritten}/{r.FfnFound} rewritten; {r.Unmatched.Count} unmatched candidate(s); compile {r.CompileTime.TotalMilliseconds:F0} ms");
        if (r.LoadTime is { } l)
            summary += FormattableString.Invariant($", load {l.TotalMilliseconds:F0} ms");
        if (r.SaveTime is { } s)
            summary += FormattableString.Invariant($", save {s.TotalMilliseconds:F0} ms");
        console.MarkupLine(Markup.Escape(summary));
        foreach (var u in r.Unsupported)
            console.MarkupLine("[yellow]unsupported:[/] " + Markup.Escape(u));
    }

    private static void Explain(TextWriter output, OptimizeReport r)
    {
        foreach (var u in r.Unsupported)
            output.WriteLine($"unsupported: {u}");
        foreach (var u in r.Unmatched)
            output.WriteLine($"no match ({u.Kind}) at {u.OpType} '{u.Node}': {u.Reason}");
        foreach (var a in r.Attention.Where(a => !a.Rewritten))
            output.WriteLine($"attention layer {a.Layer} kept dense: {a.KeptDenseReason}");
        foreach (var f in r.Ffn.Where(f => !f.Rewritten))
            output.WriteLine($"ffn layer {f.Layer} kept dense: {f.KeptDenseReason}");
    }
}
