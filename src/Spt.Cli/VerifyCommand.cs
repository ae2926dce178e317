using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.Runtime;

namespace Spt.Cli;

/// <summary>
/// <c>sptc verify ORIGINAL.onnx OPTIMIZED.onnx [--tol T] [--seed S] [--batch B] [--seq S]</c>: runs both models in
/// ONNX Runtime (sptc's custom operators registered where a model uses them) on the same generated inputs and
/// compares every output by name. An element a (original) and b (optimized) agree when
/// |a - b| ≤ tol · max(1, |a|). Exit codes: 0 every output agrees; 4 (<see cref="ExitCodes.OutputsDiffer"/>) some
/// output differs or has another shape; 2 bad input (a missing file, inputs or outputs that do not correspond by
/// name, a model ORT rejects).
/// </summary>
internal static class VerifyCommand
{
    public static Command Create(CliContext context)
    {
        var original = new Argument<FileInfo>("ORIGINAL") { Description = "The reference model" };
        var optimized = new Argument<FileInfo>("OPTIMIZED") { Description = "The model to check against it" };
        var tol = new Option<double>("--tol") { Description = "Tolerance: |a - b| <= tol * max(1, |a|)", DefaultValueFactory = _ => 1e-4 };
        var seed = new Option<int>("--seed") { Description = "Seed of the generated inputs", DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch") { Description = "Size of batch-like symbolic dimensions", DefaultValueFactory = _ => 2 };
        var seq = new Option<int>("--seq") { Description = "Size of sequence-like symbolic dimensions", DefaultValueFactory = _ => 16 };
        var json = new Option<bool>("--json") { Description = "Print the comparison as JSON instead of the table" };
        var command = new Command("verify", "Run two models on the same generated inputs (Dropout off in both) and compare their outputs")
        {
            original, optimized, tol, seed, batch, seq, json,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            double tolerance = parse.GetValue(tol);
            if (!(tolerance >= 0))
                throw new CliUsageException($"--tol must be a non-negative number, got {tolerance}");
            if (parse.GetValue(batch) < 1 || parse.GetValue(seq) < 1)
                throw new CliUsageException("--batch and --seq must be at least 1");

            using var reference = ModelFiles.Load(parse.GetRequiredValue(original));
            using var candidate = ModelFiles.Load(parse.GetRequiredValue(optimized));
            // A training-mode export draws new dropout masks on every run: compare with dropout off in both.
            DropoutMode.ToInference(reference);
            DropoutMode.ToInference(candidate);
            var options = new InputGeneratorOptions { Batch = parse.GetValue(batch), Sequence = parse.GetValue(seq), Seed = parse.GetValue(seed) };
            var inputs = InputGenerator.Generate(reference, options);

            var referenceInputs = reference.Graph.RequiredInputs.Select(v => v.Name).Order(StringComparer.Ordinal).ToList();
            var candidateInputs = candidate.Graph.RequiredInputs.Select(v => v.Name).Order(StringComparer.Ordinal).ToList();
            if (!referenceInputs.SequenceEqual(candidateInputs))
                throw new CliUsageException($"the models take different inputs: [{string.Join(", ", referenceInputs)}] vs [{string.Join(", ", candidateInputs)}]");
            var referenceOutputs = reference.Graph.Outputs.Select(v => v.Name).ToList();
            var candidateOutputs = candidate.Graph.Outputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
            var missing = referenceOutputs.Where(n => !candidateOutputs.Contains(n)).ToList();
            if (missing.Count > 0)
                throw new CliUsageException($"outputs of the original missing from the optimized model: {string.Join(", ", missing)}");

            List<KeyValuePair<string, TensorData>> expected, actual;
            using (var runner = new OrtModelRunner(reference))
                expected = [.. runner.Run(inputs)];
            using (var runner = new OrtModelRunner(candidate))
                actual = [.. runner.Run(inputs)];
            var actualByName = actual.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);

            var diffs = expected.Select(e => OutputComparison.Compare(e.Key, e.Value, actualByName[e.Key], tolerance)).ToList();
            if (parse.GetValue(json))
                context.WriteJson(ToJson(diffs, tolerance));
            else
                Render(context.Console, diffs, tolerance);
            return diffs.All(d => d.WithinTolerance) ? ExitCodes.Ok : ExitCodes.OutputsDiffer;
        }));
        return command;
    }

    /// <summary>
    /// The JSON form: <c>tolerance</c>, <c>passed</c>, <c>failed</c> and per output <c>name</c>, <c>shape</c>,
    /// <c>shapes_match</c>, <c>max_abs_diff</c>, <c>max_rel_diff</c> (null when infinite or NaN) and <c>within_tolerance</c>.
    /// </summary>
    internal static JsonObject ToJson(IReadOnlyList<OutputDiff> diffs, double tolerance) => new()
    {
        ["tolerance"] = tolerance,
        ["passed"] = diffs.All(d => d.WithinTolerance),
        ["failed"] = diffs.Count(d => !d.WithinTolerance),
        ["outputs"] = new JsonArray([.. diffs.Select(d => (JsonNode)new JsonObject
        {
            ["name"] = d.Name,
            ["shape"] = new JsonArray([.. d.Shape.Select(x => (JsonNode?)JsonValue.Create(x))]),
            ["shapes_match"] = d.ShapesMatch,
            ["max_abs_diff"] = Finite(d.MaxAbsDiff),
            ["max_rel_diff"] = Finite(d.MaxRelDiff),
            ["within_tolerance"] = d.WithinTolerance,
        })]),
    };

    private static JsonNode? Finite(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    private static void Render(IAnsiConsole console, IReadOnlyList<OutputDiff> diffs, double tolerance)
    {
        var table = new Table().AddColumns("output", "shape", "max abs diff", "max rel diff", "result");
        foreach (var d in diffs)
        {
            table.AddRow(
                Markup.Escape(d.Name),
                Markup.Escape("[" + string.Join(",", d.Shape) + "]" + (d.ShapesMatch ? "" : " (shape differs)")),
                Format(d.MaxAbsDiff),
                Format(d.MaxRelDiff),
                d.WithinTolerance ? "[green]pass[/]" : "[red]FAIL[/]");
        }
        console.Write(table);
        int failed = diffs.Count(d => !d.WithinTolerance);
        console.MarkupLine(failed == 0
            ? $"all {diffs.Count} outputs within tolerance {Format(tolerance)}"
            : $"[red]{failed} of {diffs.Count} outputs differ[/] beyond tolerance {Format(tolerance)}");
    }

    private static string Format(double v) => double.IsPositiveInfinity(v) ? "inf" : v.ToString("G3", CultureInfo.InvariantCulture);
}
