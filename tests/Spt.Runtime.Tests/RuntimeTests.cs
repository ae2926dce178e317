using System.Text.Json;
using Spt.Ir;
using Spt.Runtime;

namespace Spt.Runtime.Tests;

public class RuntimeTests
{
    private static string FixturesRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "fixtures");
            if (File.Exists(Path.Combine(candidate, "manifest.json")))
                return candidate;
        }
        throw new DirectoryNotFoundException("tests/fixtures not found");
    }

    public static IEnumerable<object[]> ManifestEntries()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturesRoot(), "manifest.json")));
        foreach (var m in doc.RootElement.GetProperty("models").EnumerateArray())
            yield return [m.GetProperty("file").GetString()!];
    }

    [Theory]
    [MemberData(nameof(ManifestEntries))]
    public void GeneratedInputsRespectTheManifestAndRun(string file)
    {
        var root = FixturesRoot();
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "manifest.json")));
        var entry = doc.RootElement.GetProperty("models").EnumerateArray().First(m => m.GetProperty("file").GetString() == file);
        using var model = Model.Load(Path.Combine(root, file));
        var inputs = InputGenerator.Generate(model, new InputGeneratorOptions { Batch = 3, Sequence = 5, Seed = 11 });

        foreach (var spec in entry.GetProperty("inputs").EnumerateArray())
        {
            var data = inputs[spec.GetProperty("name").GetString()!];
            Assert.Equal([3L, 5L], data.Shape);
            Assert.NotNull(data.Longs);
            if (spec.TryGetProperty("range", out var range))
            {
                long lo = range[0].GetInt64(), hi = range[1].GetInt64();
                Assert.All(data.Longs!, v => Assert.InRange(v, lo, hi - 1));
                Assert.True(data.Longs!.Distinct().Count() > 3, "token ids should vary");
            }
            else
            {
                Assert.Equal("0/1", spec.GetProperty("values").GetString());
                Assert.All(data.Longs!, v => Assert.True(v is 0 or 1));
                for (int row = 0; row < 3; row++)
                    Assert.Equal(1, data.Longs![row * 5]); // every row keeps its first position
                Assert.All(data.Longs!.Take(5), v => Assert.Equal(1, v)); // first row unpadded
            }
        }

        using var runner = new OrtModelRunner(model);
        var outputs = runner.Run(inputs);
        var names = entry.GetProperty("outputs").EnumerateArray().Select(o => o.GetString()).ToList();
        Assert.Equal(names, outputs.Select(o => o.Key));
        Assert.All(outputs, o => Assert.True(o.Value.Floats!.All(float.IsFinite)));
        Assert.Equal(3, outputs[0].Value.Shape[0]);
    }

    [Fact]
    public void SameSeedSameInputsOtherSeedOtherInputs()
    {
        using var model = Model.Load(Path.Combine(FixturesRoot(), "models", "bert_mask_op17.onnx"));
        var a = InputGenerator.Generate(model, new InputGeneratorOptions { Seed = 1 });
        var b = InputGenerator.Generate(model, new InputGeneratorOptions { Seed = 1 });
        var c = InputGenerator.Generate(model, new InputGeneratorOptions { Seed = 2 });
        Assert.Equal(a["input_ids"].Longs, b["input_ids"].Longs);
        Assert.NotEqual(a["input_ids"].Longs, c["input_ids"].Longs);
        Assert.Equal([2L, 16L], a["input_ids"].Shape);
    }

    [Fact]
    public void FloatInputsAreStandardNormalAndOtherSymbolsBind()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", "heads", 400);
        b.Output(b.Op("Relu", x), "y");
        using var model = b.Build();
        var inputs = InputGenerator.Generate(model, new InputGeneratorOptions { Symbols = new Dictionary<string, long> { ["heads"] = 3 } });
        var data = inputs["x"];
        Assert.Equal([2L, 3L, 400L], data.Shape);
        double mean = data.Floats!.Average(), var = data.Floats!.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.1, 0.1);
        Assert.InRange(var, 0.85, 1.15);

        using var runner = new OrtModelRunner(model);
        var y = Assert.Single(runner.Run(inputs));
        Assert.Equal(data.Floats!.Select(v => Math.Max(v, 0f)), y.Value.Floats!);
    }

    [Fact]
    public void IntegerInputWithoutEmbeddingGetsDefaultRangeAndMaskThroughOneMinusIsAMask()
    {
        var b = new GraphBuilder(17);
        var ids = b.Input("positions", ElementType.Int64, "batch", "sequence");
        var keep = b.Input("keep", ElementType.Float, "batch", "sequence");
        var inverted = b.Op("Sub", b.Initializer(Tensor.Scalar("one", 1f)), keep);
        b.Output(b.Op("Cast", [ids], ("to", 1L)), "p").Output(inverted, "m");
        using var model = b.Build();
        Assert.Equal(InputKind.Integer, InputGenerator.Classify(model.Graph.FindValue("positions")!).Kind);
        Assert.Equal(InputKind.Mask, InputGenerator.Classify(model.Graph.FindValue("keep")!).Kind);
        var inputs = InputGenerator.Generate(model, new InputGeneratorOptions { DefaultVocab = 5 });
        Assert.All(inputs["positions"].Longs!, v => Assert.InRange(v, 0, 4));
        Assert.All(inputs["keep"].Floats!, v => Assert.True(v is 0f or 1f));
    }

    [Fact]
    public void OutputComparisonUsesMixedTolerance()
    {
        var a = TensorData.FromFloats([0.5f, 1000f, float.NaN], [3]);
        var close = TensorData.FromFloats([0.5f + 5e-5f, 1000.05f, float.NaN], [3]);
        var far = TensorData.FromFloats([0.5f + 5e-4f, 1000f, float.NaN], [3]);
        Assert.True(OutputComparison.Compare("y", a, close, 1e-4).WithinTolerance); // 0.05 <= 1e-4 * 1000
        var d = OutputComparison.Compare("y", a, far, 1e-4);
        Assert.False(d.WithinTolerance);
        Assert.InRange(d.MaxAbsDiff, 4e-4, 6e-4);
        Assert.False(OutputComparison.Compare("y", a, TensorData.FromFloats([1f, 2f], [2]), 1).ShapesMatch);
    }

    [Fact]
    public void MissingInputIsReported()
    {
        var b = new GraphBuilder(17);
        b.Output(b.Op("Relu", b.Input("x", ElementType.Float, 2)), "y");
        using var model = b.Build();
        using var runner = new OrtModelRunner(model);
        var e = Assert.Throws<ArgumentException>(() => runner.Run(new Dictionary<string, TensorData>()));
        Assert.Contains("'x'", e.Message);
    }
}
