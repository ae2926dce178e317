using System.Collections.Concurrent;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spt.Ir;
using Spt.Ir.Onnx;
using Spt.Ir.Tests;
using Spt.Passes.Canonicalization;
using Xunit.Abstractions;
using Tensor = Spt.Ir.Tensor;

namespace Spt.Passes.Tests;

/// <summary>
/// The opset upgrade on ONNX's backend test suite: every model of opset 7 to 12 is either refused with a line naming
/// the op, or upgraded to opset 13, where ORT computes the outputs ORT computes from the original (or, where ORT
/// cannot load the original, the outputs the suite ships).
/// </summary>
public sealed class OpsetUpgradeTests(ITestOutputHelper output)
{
    private enum Outcome
    {
        Ran,
        Refused,
        Skipped,
        Failed,
    }

    private sealed record Result(string Model, long Opset, Outcome Outcome, string? Reason, IReadOnlyList<string> Rewritten);

    [Fact]
    public void BackendModelsOfOpsets7To12UpgradeAndComputeTheSameOutputs()
    {
        string root = TestData.BackendDataRoot();
        var models = TestData.BackendModels(root);
        var results = new ConcurrentBag<Result>();
        Parallel.ForEach(models, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, path =>
        {
            if (Check(Path.GetRelativePath(root, Path.GetDirectoryName(path)!), path) is { } r)
                results.Add(r);
        });
        var all = results.OrderBy(r => r.Model, StringComparer.Ordinal).ToList();
        var ran = all.Where(r => r.Outcome == Outcome.Ran).ToList();
        output.WriteLine($"opset 7-12 models: {all.Count} (by opset: {string.Join(", ", all.GroupBy(r => r.Opset).OrderBy(g => g.Key).Select(g => $"{g.Key}: {g.Count()}"))}); " +
                         $"upgraded and the same in ORT: {ran.Count}, {ran.Count(r => r.Rewritten.Count > 0)} of them with rewritten nodes " +
                         $"({string.Join(", ", ran.SelectMany(r => r.Rewritten).GroupBy(o => o).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => $"{g.Key} {g.Count()}"))}); " +
                         $"refused: {all.Count(r => r.Outcome == Outcome.Refused)}; skipped: {all.Count(r => r.Outcome == Outcome.Skipped)}; failed: {all.Count(r => r.Outcome == Outcome.Failed)}");
        foreach (var r in all.Where(r => r.Outcome != Outcome.Ran))
            output.WriteLine($"  {r.Outcome.ToString().ToLowerInvariant()} {r.Model} (opset {r.Opset}): {r.Reason}");
        var failed = all.Where(r => r.Outcome == Outcome.Failed).ToList();
        Assert.True(failed.Count == 0, $"{failed.Count} models failed, first: {failed.FirstOrDefault()?.Model}: {failed.FirstOrDefault()?.Reason}");
        // The suite holds 223 such models (ONNX 1.12); all but ORT's gaps (BitShift on uint16, locales, string and
        // sequence outputs, training ops) and the opset-8 Scan must convert and run.
        Assert.True(ran.Count >= 200, $"only {ran.Count} models ran");
        Assert.True(ran.Count(r => r.Rewritten.Count > 0) >= 5, "too few models needed a rewrite");
        Assert.All(all.Where(r => r.Outcome == Outcome.Refused), r => Assert.Matches("^[A-Za-z]+ '", r.Reason!));
    }

    public static TheoryData<string> OpCases() => [.. OldForms.Keys.Order(StringComparer.Ordinal)];

    // One small model per converted form, at the opset where the old form is current; x is float [2, 3, 4, 5].
    private static readonly Dictionary<string, (int Opset, Func<GraphBuilder, Value, IReadOnlyList<Value>> Body)> OldForms = new()
    {
        ["softmax_inner_axis"] = (11, (b, x) => [b.Op("Softmax", [x], ("axis", 1L))]),
        ["softmax_default_axis"] = (9, (b, x) => [b.Op("LogSoftmax", x)]),
        ["softmax_last_axis"] = (12, (b, x) => [b.Op("Softmax", [x], ("axis", 3L))]),
        ["hardmax_inner_axis"] = (11, (b, x) => [b.Op("Hardmax", [x], ("axis", 2L))]),
        ["squeeze_unsqueeze"] = (11, (b, x) => [b.Op("Squeeze", [b.Op("Unsqueeze", [x], ("axes", new long[] { 0, -1 }))], ("axes", new long[] { 0 }))]),
        ["reduce_sum"] = (11, (b, x) => [b.Op("ReduceSum", [x], ("axes", new long[] { 1, -1 }), ("keepdims", 0L)), b.Op("ReduceSum", x)]),
        ["split"] = (11, (b, x) => b.Ops("Split", [x], 2, ("axis", 3L), ("split", new long[] { 2, 3 }))),
        ["slice_attributes"] = (9, (b, x) => [b.Op("Slice", [x], ("starts", new long[] { 1, 0 }), ("ends", new long[] { 3, 1000 }), ("axes", new long[] { 1, 3 }))]),
        ["slice_no_axes"] = (7, (b, x) => [b.Op("Slice", [x], ("starts", new long[] { 0, 1 }), ("ends", new long[] { 1, -1 }))]),
        ["topk_attribute"] = (9, (b, x) => b.Ops("TopK", [x], 2, ("k", 2L), ("axis", 2L))),
        ["clip_attributes"] = (10, (b, x) => [b.Op("Clip", [x], ("min", -0.25f), ("max", 0.5f)), b.Op("Clip", [x], ("max", 0.1f))]),
        ["pad_attributes"] = (10, (b, x) => [b.Op("Pad", [x], ("pads", new long[] { 0, 1, 0, 2, 0, 0, 1, 1 }), ("value", 1.5f)),
            b.Op("Pad", [x], ("pads", new long[] { 0, 0, 1, 1, 0, 0, 1, 1 }), ("mode", "reflect"))]),
        ["dropout_ratio"] = (10, (b, x) => [b.Op("Dropout", [x], ("ratio", 0.3f))]),
        ["upsample_7_nearest"] = (8, (b, x) => [b.Op("Upsample", [x], ("scales", new[] { 1f, 1f, 2f, 3f }))]),
        ["upsample_9_linear"] = (9, (b, x) => [b.Op("Upsample", [x, b.Initializer("scales", new[] { 1f, 1f, 2f, 2f }, 4)], ("mode", "linear"))]),
        ["resize_10"] = (10, (b, x) => [b.Op("Resize", [x, b.Initializer("scales", new[] { 1f, 1f, 1.5f, 2f }, 4)]),
            b.Op("Resize", [x, b.Initializer("down", new[] { 1f, 1f, 0.5f, 0.6f }, 4)], ("mode", "linear"))]),
        ["batchnorm_spatial"] = (7, (b, x) =>
        {
            var p = Enumerable.Range(0, 4).Select(i => b.Initializer($"bn{i}", [.. Enumerable.Range(0, 3).Select(j => 0.5f + 0.25f * ((i + j) % 3))], 3)).ToArray();
            return [b.Op("BatchNormalization", [x, p[0], p[1], p[2], p[3]], ("spatial", 1L), ("epsilon", 1e-3f))];
        }),
        ["scatter"] = (10, (b, x) => [b.Op("Scatter", [x, b.Initializer("idx", new long[] { 0, 2, 1, 1, 0, 2 }, 1, 1, 2, 3),
            b.Initializer("upd", [.. Enumerable.Range(0, 6).Select(i => (float)i)], 1, 1, 2, 3)], ("axis", 1L))]),
    };

    [Theory]
    [MemberData(nameof(OpCases))]
    public void OldFormUpgradesAndComputesWhatOrtComputesFromTheOriginal(string form)
    {
        var (opset, body) = OldForms[form];
        var b = new GraphBuilder(opset);
        var x = b.Input("x", ElementType.Float, 2, 3, 4, 5);
        var outs = body(b, x);
        for (int i = 0; i < outs.Count; i++)
            b.Output(outs[i], $"y{i}");
        using var model = b.Build();
        Assert.Empty(OpsetUpgrade.Problems(model));
        var upgraded = TestSupport.AssertSameOutputs(model, m => Assert.True(new OpsetUpgrade().Run(m, new PassContext())), tolerance: 1e-6);
        Assert.Equal(OpsetUpgrade.TargetOpset, upgraded.GetOpsetVersion(""));
        // No attribute of the old forms survives: they are inputs now (or gone).
        string[] retired = ["axes", "split", "starts", "ends", "k", "min", "max", "pads", "value", "ratio", "scales", "spatial"];
        Assert.All(upgraded.Graph.Nodes, n => Assert.DoesNotContain(n.Attributes, a => retired.Contains(a.Name)));
        Assert.DoesNotContain(upgraded.Graph.Nodes, n => n.OpType is "Upsample" or "Scatter");
        Assert.All(upgraded.Graph.Nodes.Where(n => n.OpType is "Softmax" or "LogSoftmax" or "Hardmax"), n => Assert.Equal(-1, n.GetInt("axis", 0)));
    }

    private static Result? Check(string name, string path)
    {
        Model model;
        try
        {
            model = Model.Load(path);
        }
        catch (OnnxModelException)
        {
            return null;
        }
        using (model)
        {
            if (!OpsetUpgrade.Applies(model))
                return null;
            long opset = model.GetOpsetVersion("")!.Value;
            if (OpsetUpgrade.Problems(model) is { Count: > 0 } problems)
                return new Result(name, opset, Outcome.Refused, problems[0], []);
            byte[] original = model.ToBytes();
            var context = new PassContext();
            new OpsetUpgrade().Run(model, context);
            if (model.GetOpsetVersion("") != OpsetUpgrade.TargetOpset)
                return new Result(name, opset, Outcome.Failed, "opset import not raised", []);
            var errors = GraphVerifier.Verify(model.Graph);
            if (errors.Count > 0)
                return new Result(name, opset, Outcome.Failed, "verifier: " + errors[0], []);
            var rewritten = Rewritten(original, model);
            string? problem = Compare(Path.GetDirectoryName(path)!, original, model.ToBytes(), out bool skipped);
            return new Result(name, opset, problem is null ? Outcome.Ran : skipped ? Outcome.Skipped : Outcome.Failed, problem, rewritten);
        }
    }

    // The original op types of the main-graph nodes the upgrade changed (op, attributes or inputs) or wrapped.
    private static List<string> Rewritten(byte[] original, Model upgraded)
    {
        var after = upgraded.ToProto().Graph.Node.Where(n => n.Output.Count > 0).GroupBy(n => n.Output[0]).ToDictionary(g => g.Key, g => g.First());
        return [.. ModelProto.Parser.ParseFrom(original).Graph.Node
            .Where(n => n.Output.Count > 0 && (!after.TryGetValue(n.Output[0], out var m) || !m.Equals(n)))
            .Select(n => n.OpType)];
    }

    private static string? Compare(string dir, byte[] originalBytes, byte[] upgradedBytes, out bool skipped)
    {
        skipped = true;
        var dataSets = Directory.GetDirectories(dir, "test_data_set_*").Order(StringComparer.Ordinal).ToList();
        if (dataSets.Count == 0)
            return "no test data";
        InferenceSession? reference = null;
        try
        {
            reference = new InferenceSession(originalBytes, OrtHelpers.QuietOptions());
        }
        catch (OnnxRuntimeException)
        {
            // ORT dropped some opset-7-to-12 kernels: compare with the outputs the suite ships instead.
        }
        InferenceSession upgraded;
        try
        {
            upgraded = new InferenceSession(upgradedBytes, OrtHelpers.QuietOptions());
        }
        catch (OnnxRuntimeException e)
        {
            skipped = reference is null;
            reference?.Dispose();
            return (skipped ? "ORT loads neither model: " : "ORT loads the original but not the upgraded model: ") + FirstLine(e.Message);
        }
        using (upgraded)
        using (reference)
        {
            using var model = Model.FromBytes(originalBytes);
            var inputs = model.Graph.RequiredInputs.ToList();
            if (inputs.Any(v => v.Type is not TensorType) || model.Graph.Outputs.Any(v => v.Type is not TensorType))
                return "sequence, map or optional inputs or outputs";
            foreach (string set in dataSets)
            {
                var values = new List<OrtValue>();
                try
                {
                    foreach (string f in Numbered(set, "input_"))
                        values.Add(OrtHelpers.ToOrtValue(Tensor.FromProto(TensorProto.Parser.ParseFrom(File.ReadAllBytes(f)))));
                    var names = inputs.Take(values.Count).Select(v => v.Name).ToList();
                    List<double[]?> expected;
                    if (reference is not null)
                    {
                        try
                        {
                            expected = Run(reference, names, values);
                        }
                        catch (OnnxRuntimeException e)
                        {
                            return "ORT cannot run the original: " + FirstLine(e.Message);
                        }
                    }
                    else
                    {
                        expected = [.. Numbered(set, "output_").Select(f => Values(Tensor.FromProto(TensorProto.Parser.ParseFrom(File.ReadAllBytes(f)))))];
                    }
                    List<double[]?> actual;
                    try
                    {
                        actual = Run(upgraded, names, values);
                    }
                    catch (OnnxRuntimeException e)
                    {
                        skipped = false;
                        return "ORT cannot run the upgraded model: " + FirstLine(e.Message);
                    }
                    if (expected.Count != actual.Count)
                    {
                        skipped = false;
                        return $"{actual.Count} outputs, expected {expected.Count}";
                    }
                    for (int i = 0; i < expected.Count; i++)
                    {
                        if (expected[i] is null || actual[i] is null)
                            return "an output of an element type the comparison does not read";
                        if (Mismatch(expected[i]!, actual[i]!) is { } why)
                        {
                            if (reference is not null && Mismatch(expected[i]!, Run(reference, names, values)[i]!) is not null)
                                return "nondeterministic model";
                            skipped = false;
                            return $"output {i} of {Path.GetFileName(set)}: {why}";
                        }
                    }
                }
                catch (OrtHelpers.OrtUnsupportedException e)
                {
                    return "ORT's C# API: " + e.Message;
                }
                finally
                {
                    foreach (var v in values)
                        v.Dispose();
                }
            }
            return null;
        }
    }

    private static IEnumerable<string> Numbered(string dir, string prefix) =>
        Directory.GetFiles(dir, prefix + "*.pb")
            .OrderBy(f => int.Parse(Path.GetFileNameWithoutExtension(f)[prefix.Length..], System.Globalization.CultureInfo.InvariantCulture));

    // Within the backend suite's own tolerance (rtol 1e-3, atol 1e-7), NaN matching NaN; the shape as the first elements.
    private static string? Mismatch(double[] expected, double[] actual)
    {
        if (expected.Length != actual.Length)
            return $"{actual.Length} elements (with shape), expected {expected.Length}";
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (double.IsNaN(e) && double.IsNaN(a))
                continue;
            if (e == a)
                continue;
            if (!(Math.Abs(e - a) <= 1e-7 + 1e-3 * Math.Abs(e)))
                return $"element {i}: {a} vs {e}";
        }
        return null;
    }

    private static List<double[]?> Run(InferenceSession session, IReadOnlyList<string> names, IReadOnlyList<OrtValue> inputs)
    {
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, names.ToArray(), inputs.ToArray(), session.OutputNames.ToArray());
        return [.. outputs.Select(Values)];
    }

    // Rank, dims, then the elements as doubles (null for element types not compared here).
    private static double[]? Values(OrtValue v)
    {
        if (!v.IsTensor)
            return null;
        var info = v.GetTensorTypeAndShape();
        double[]? data = info.ElementDataType switch
        {
            TensorElementType.Float => [.. v.GetTensorDataAsSpan<float>().ToArray().Select(x => (double)x)],
            TensorElementType.Double => v.GetTensorDataAsSpan<double>().ToArray(),
            TensorElementType.Float16 => [.. v.GetTensorDataAsSpan<Float16>().ToArray().Select(x => (double)(float)x)],
            TensorElementType.Int64 => [.. v.GetTensorDataAsSpan<long>().ToArray().Select(x => (double)x)],
            TensorElementType.Int32 => [.. v.GetTensorDataAsSpan<int>().ToArray().Select(x => (double)x)],
            TensorElementType.Int8 => [.. v.GetTensorDataAsSpan<sbyte>().ToArray().Select(x => (double)x)],
            TensorElementType.UInt8 => [.. v.GetTensorDataAsSpan<byte>().ToArray().Select(x => (double)x)],
            TensorElementType.Bool => [.. v.GetTensorDataAsSpan<bool>().ToArray().Select(x => x ? 1.0 : 0.0)],
            _ => null,
        };
        return data is null ? null : [info.Shape.Length, .. info.Shape.Select(d => (double)d), .. data];
    }

    private static double[]? Values(Tensor t)
    {
        if (t.ElementType is ElementType.String or ElementType.BFloat16 or ElementType.Complex64 or ElementType.Complex128)
            return null;
        return [t.Dims.Count, .. t.Dims.Select(d => (double)d), .. t.ToDoubleArray()];
    }

    private static string FirstLine(string s)
    {
        int i = s.IndexOf('\n', StringComparison.Ordinal);
        return (i < 0 ? s : s[..i]).Trim();
    }
}
