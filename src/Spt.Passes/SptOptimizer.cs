using System.Diagnostics;
using Spt.Ir;
using Spt.Passes.Recognition;

namespace Spt.Passes;

/// <summary>Runs the SPT rewrite on a model and reports what it found and did.</summary>
public static class SptOptimizer
{
    /// <summary>Default-domain opsets the recognizers understand.</summary>
    public const int MinOpset = 13, MaxOpset = 23;

    private static readonly HashSet<string> KnownDomains = ["", "ai.onnx", "com.microsoft", "spt"];

    /// <summary>
    /// Optimizes <paramref name="model"/> in place. A model whose opset is outside [13, 23] is left unchanged and
    /// the report says why; ops of unknown domains are named in the report and left alone.
    /// </summary>
    public static OptimizeReport Optimize(Model model, SptOptions options, PassContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        context ??= new PassContext();
        var results = context.Result<RecognitionResults>();
        var opsets = model.OpsetImports.ToDictionary(o => o.Domain.Length == 0 ? "ai.onnx" : o.Domain, o => o.Version);
        long opset = model.GetOpsetVersion("") ?? 0;
        if (opset < MinOpset || opset > MaxOpset)
            results.Unsupported.Add($"default-domain opset {opset} is not supported (supported: {MinOpset} to {MaxOpset}); nothing was rewritten");
        foreach (var group in model.Graph.Nodes.Where(n => !KnownDomains.Contains(n.Domain)).GroupBy(n => n.Domain + "::" + n.OpType))
            results.Unsupported.Add($"{group.Count()} node(s) of {group.Key} are not understood by the passes and were left as they are (first: '{group.First().Name}')");

        PipelineResult? run = null;
        var watch = Stopwatch.StartNew();
        if (opset >= MinOpset && opset <= MaxOpset)
        {
            run = Pipelines.Optimize(options).Run(model, context);
            if (model.Graph.Nodes.Any(n => n.Domain == "spt") && model.GetOpsetVersion("spt") is null)
                model.SetOpset("spt", 1);
        }
        watch.Stop();
        return new OptimizeReport(results, opsets, run?.Timings ?? [], watch.Elapsed, context.Diagnostics);
    }
}
