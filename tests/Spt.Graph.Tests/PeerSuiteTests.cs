using System.Collections.Concurrent;
using System.Diagnostics;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Spt.Ir.Onnx;
using Xunit.Abstractions;

namespace Spt.Ir.Tests;

/// <summary>
/// Acceptance: every model of ONNX's backend test suite is read, written and read again without
/// loss, and ONNX Runtime computes the same outputs from the rewritten model as from the original.
/// </summary>
public sealed class PeerSuiteTests(ITestOutputHelper output)
{
    private enum Outcome
    {
        Ran,
        Skipped,
        Failed,
    }

    private sealed record Result(string Model, Outcome Outcome, bool RoundTripped, bool FileIdentical, string? Reason);

    [Fact]
    public void BackendTestModelsRoundTripLosslesslyAndRunIdentically()
    {
        string root = TestData.BackendDataRoot();
        var models = TestData.BackendModels(root);
        Assert.NotEmpty(models);

        var watch = Stopwatch.StartNew();
        var results = new ConcurrentBag<Result>();
        Parallel.ForEach(models, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, path =>
        {
            string name = Path.GetRelativePath(root, Path.GetDirectoryName(path)!);
            results.Add(Check(name, path));
        });
        watch.Stop();

        var all = results.OrderBy(r => r.Model, StringComparer.Ordinal).ToList();
        int loaded = all.Count(r => r.Reason?.StartsWith("load:", StringComparison.Ordinal) != true);
        output.WriteLine($"models: {all.Count}, loaded: {loaded}, round-tripped losslessly: {all.Count(r => r.RoundTripped)} " +
                         $"(byte-identical to the file: {all.Count(r => r.FileIdentical)}), ran in ORT with identical outputs: {all.Count(r => r.Outcome == Outcome.Ran)}, " +
                         $"skipped: {all.Count(r => r.Outcome == Outcome.Skipped)}, failed: {all.Count(r => r.Outcome == Outcome.Failed)}  ({watch.Elapsed.TotalSeconds:F1} s)");
        foreach (var group in all.Where(r => r.Outcome == Outcome.Skipped).GroupBy(r => ReasonKind(r.Reason!)).OrderByDescending(g => g.Count()))
        {
            output.WriteLine($"  skipped {group.Count(),4}: {group.Key}");
            foreach (var r in group)
                output.WriteLine($"      {r.Model}: {r.Reason}");
        }
        var failed = all.Where(r => r.Outcome == Outcome.Failed).ToList();
        foreach (var r in failed)
            output.WriteLine($"  FAILED {r.Model}: {r.Reason}");
        Assert.True(failed.Count == 0, $"{failed.Count} models failed, first: {failed.FirstOrDefault()?.Model}: {failed.FirstOrDefault()?.Reason}");
    }

    // Groups reasons such as "ort-load: ... (op X)" by their kind prefix.
    private static string ReasonKind(string reason)
    {
        int colon = reason.IndexOf(':', StringComparison.Ordinal);
        return colon < 0 ? reason : reason[..colon];
    }

    private static Result Check(string name, string path)
    {
        byte[] fileBytes = File.ReadAllBytes(path);
        var original = ModelProto.Parser.ParseFrom(fileBytes);

        Model model;
        try
        {
            model = Model.Load(path);
        }
        catch (OnnxModelException e)
        {
            return new Result(name, Outcome.Failed, false, false, "load: " + e.Message);
        }

        byte[] written;
        using (model)
            written = model.ToBytes();
        var reread = ModelProto.Parser.ParseFrom(written);
        if (!original.Equals(reread) || !original.ToByteArray().AsSpan().SequenceEqual(written))
            return new Result(name, Outcome.Failed, false, false, "round trip changed the model: " + FirstDifference(original, reread));
        using (var again = Model.FromBytes(written))
        {
            if (!again.ToBytes().AsSpan().SequenceEqual(written))
                return new Result(name, Outcome.Failed, false, false, "second round trip changed the model");
        }
        bool identical = fileBytes.AsSpan().SequenceEqual(written);

        string? problem = CompareInOrt(Path.GetDirectoryName(path)!, fileBytes, written, out bool skipped);
        var outcome = problem == null ? Outcome.Ran : skipped ? Outcome.Skipped : Outcome.Failed;
        return new Result(name, outcome, true, identical, problem);
    }

    private static string FirstDifference(ModelProto a, ModelProto b)
    {
        if (!a.Graph.Equals(b.Graph))
        {
            for (int i = 0; i < Math.Min(a.Graph.Node.Count, b.Graph.Node.Count); i++)
            {
                if (!a.Graph.Node[i].Equals(b.Graph.Node[i]))
                    return $"node {i}: {a.Graph.Node[i]} vs {b.Graph.Node[i]}";
            }
            var ga = a.Graph.Clone();
            var gb = b.Graph.Clone();
            ga.Node.Clear();
            gb.Node.Clear();
            return $"graph: {Truncate(ga.ToString())} vs {Truncate(gb.ToString())}";
        }
        var ma = a.Clone();
        var mb = b.Clone();
        ma.Graph = null;
        mb.Graph = null;
        return $"model: {Truncate(ma.ToString())} vs {Truncate(mb.ToString())} (equal as messages: {a.Equals(b)})";
    }

    private static string Truncate(string s) => s.Length > 600 ? s[..600] + "..." : s;

    /// <summary>Null when ORT gives identical outputs; otherwise the reason, and whether it is a skip (ORT limitation) or a failure.</summary>
    private static string? CompareInOrt(string dir, byte[] originalBytes, byte[] writtenBytes, out bool skipped)
    {
        skipped = true;
        InferenceSession originalSession;
        try
        {
            originalSession = new InferenceSession(originalBytes, OrtHelpers.QuietOptions());
        }
        catch (OnnxRuntimeException e)
        {
            return "ort-load: ORT cannot load the original model: " + FirstLine(e.Message);
        }
        using (originalSession)
        {
            InferenceSession writtenSession;
            try
            {
                writtenSession = new InferenceSession(writtenBytes, OrtHelpers.QuietOptions());
            }
            catch (OnnxRuntimeException e)
            {
                skipped = false;
                return "ORT loads the original but not the rewritten model: " + FirstLine(e.Message);
            }
            using (writtenSession)
            {
                var dataSets = Directory.GetDirectories(dir, "test_data_set_*").Order(StringComparer.Ordinal).ToList();
                if (dataSets.Count == 0)
                    return "no-data: no test_data_set directory";
                using var model = Model.FromBytes(originalBytes);
                var inputs = model.Graph.RequiredInputs.ToList();
                if (inputs.Any(v => v.Type is not TensorType))
                    return "non-tensor-input: the model takes sequence, map or optional inputs";
                foreach (string set in dataSets)
                {
                    var files = Directory.GetFiles(set, "input_*.pb")
                        .OrderBy(f => int.Parse(Path.GetFileNameWithoutExtension(f)["input_".Length..], System.Globalization.CultureInfo.InvariantCulture))
                        .ToList();
                    var values = new List<OrtValue>();
                    try
                    {
                        foreach (string f in files)
                            values.Add(OrtHelpers.ToOrtValue(Tensor.FromProto(TensorProto.Parser.ParseFrom(File.ReadAllBytes(f)))));
                        var names = inputs.Take(values.Count).Select(v => v.Name).ToList();
                        List<object> expected;
                        try
                        {
                            expected = OrtHelpers.Run(originalSession, names, values);
                        }
                        catch (OnnxRuntimeException e)
                        {
                            return "ort-run: ORT cannot run the original model: " + FirstLine(e.Message);
                        }
                        List<object> actual;
                        try
                        {
                            actual = OrtHelpers.Run(writtenSession, names, values);
                        }
                        catch (OnnxRuntimeException e)
                        {
                            skipped = false;
                            return "ORT runs the original but not the rewritten model: " + FirstLine(e.Message);
                        }
                        if (!expected.SequenceEqual(actual))
                        {
                            // Random ops (RandomNormal, Bernoulli, Dropout in training mode) differ between any two runs.
                            var rerun = OrtHelpers.Run(originalSession, names, values);
                            if (!rerun.SequenceEqual(expected))
                                return "nondeterministic: the original model's outputs differ between runs";
                            skipped = false;
                            return $"outputs differ in {Path.GetFileName(set)}";
                        }
                    }
                    catch (OrtHelpers.OrtUnsupportedException e)
                    {
                        return "ort-csharp: " + e.Message;
                    }
                    catch (OnnxModelException e)
                    {
                        return "input-data: " + e.Message;
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
    }

    private static string FirstLine(string s)
    {
        int i = s.IndexOf('\n', StringComparison.Ordinal);
        return (i < 0 ? s : s[..i]).Trim();
    }
}
