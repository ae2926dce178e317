using Spt.Ir;
using Spt.Runtime;

namespace Spt.Passes.Tests;

/// <summary>Fixture locations and before/after numeric comparison with ONNX Runtime.</summary>
internal static class TestSupport
{
    public static string FixturesDir => Path.Combine(Fixtures.Root, "models");

    public static string Fixture(string file) => Path.Combine(FixturesDir, file);

    public static IEnumerable<object[]> AllFixtures() =>
        Directory.GetFiles(FixturesDir, "*.onnx").Select(Path.GetFileName).Order(StringComparer.Ordinal).Select(f => new object[] { f! });

    public static IReadOnlyList<KeyValuePair<string, TensorData>> Run(Model model, IReadOnlyDictionary<string, TensorData> inputs)
    {
        // ORT's own optimizations off, so that the comparison sees our rewrite and not ORT's.
        using var runner = new OrtModelRunner(model, new RunnerOptions { Optimization = Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_DISABLE_ALL });
        return runner.Run(inputs);
    }

    /// <summary>Runs <paramref name="transform"/> on a copy of the model and checks that ORT gives the same outputs within <paramref name="tolerance"/>.</summary>
    public static Model AssertSameOutputs(Model model, Action<Model> transform, double tolerance = 1e-5, int seq = 8)
    {
        var inputs = InputGenerator.Generate(model, new InputGeneratorOptions { Batch = 2, Sequence = seq, Seed = 7 });
        var before = Run(model, inputs);
        var copy = Model.FromBytes(model.ToBytes());
        transform(copy);
        var errors = GraphVerifier.Verify(copy.Graph);
        Assert.True(errors.Count == 0, string.Join("; ", errors));
        var after = Run(Model.FromBytes(copy.ToBytes()), inputs);
        Assert.Equal(before.Select(o => o.Key), after.Select(o => o.Key));
        for (int i = 0; i < before.Count; i++)
        {
            var diff = OutputComparison.Compare(before[i].Key, before[i].Value, after[i].Value, tolerance);
            Assert.True(diff.WithinTolerance, $"output {diff.Name}: shapes match {diff.ShapesMatch}, max abs diff {diff.MaxAbsDiff:G3}");
        }
        return copy;
    }

    public static int Count(Model m, string op) => m.Graph.Nodes.Count(n => n.OpType == op);
}
