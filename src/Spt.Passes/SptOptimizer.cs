using System.Diagnostics;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Canonicalization;
using Spt.Passes.Recognition;

namespace Spt.Passes;

/// <summary>Runs the SPT rewrite on a model and reports what it found and did.</summary>
public static class SptOptimizer
{
    /// <summary>Default-domain opsets the recognizers understand; opsets 7 to 12 are upgraded to 13 first.</summary>
    public const int MinOpset = 13, MaxOpset = 23;

    private static readonly HashSet<string> KnownDomains = ["", "ai.onnx", "com.microsoft", CustomOpLibrary.Domain];

    /// <summary>
    /// Optimizes <paramref name="model"/> in place. A model of opset 7 to 12 is upgraded to opset 13 first
    /// (<see cref="OpsetUpgrade"/>); one whose opset is outside [7, 23], or that holds an op the upgrade cannot
    /// convert, is left unchanged and the report says why; ops of unknown domains are named in the report and left alone.
    /// </summary>
    public static OptimizeReport Optimize(Model model, SptOptions options, PassContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        context ??= new PassContext();
        var results = context.Result<RecognitionResults>();
        var opsets = model.OpsetImports.ToDictionary(o => o.Domain.Length == 0 ? "ai.onnx" : o.Domain, o => o.Version);
        long opset = model.GetOpsetVersion("") ?? 0;
        bool supported = opset >= MinOpset && opset <= MaxOpset;
        bool upgrade = OpsetUpgrade.Applies(model);
        if (upgrade)
        {
            var problems = OpsetUpgrade.Problems(model);
            supported = problems.Count == 0;
            if (!supported)
            {
                results.Unsupported.Add($"default-domain opset {opset} cannot be upgraded to {OpsetUpgrade.TargetOpset}: {problems.Count} node(s) have no " +
                    $"conversion ({string.Join("; ", problems.Take(3))}{(problems.Count > 3 ? "; ..." : "")}); nothing was rewritten");
            }
        }
        else if (!supported)
        {
            results.Unsupported.Add($"default-domain opset {opset} is not supported (supported: {OpsetUpgrade.OldestOpset} to {MaxOpset}, " +
                $"opsets below {MinOpset} upgraded to {OpsetUpgrade.TargetOpset}); nothing was rewritten");
        }
        foreach (var group in model.Graph.Nodes.Where(n => !KnownDomains.Contains(n.Domain)).GroupBy(n => n.Domain + "::" + n.OpType))
            results.Unsupported.Add($"{group.Count()} node(s) of {group.Key} are not understood by the passes and were left as they are (first: '{group.First().Name}')");

        PipelineResult? run = null;
        var watch = Stopwatch.StartNew();
        if (supported)
        {
            run = Pipelines.Optimize(options).Run(model, context);
            if (model.Graph.Nodes.Any(n => n.Domain == CustomOpLibrary.Domain) && model.GetOpsetVersion(CustomOpLibrary.Domain) is null)
                model.SetOpset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        }
        watch.Stop();
        return new OptimizeReport(results, opsets, run?.Timings ?? [], watch.Elapsed, context.Diagnostics)
        {
            UpgradedFromOpset = upgrade && supported ? opset : null,
        };
    }
}
