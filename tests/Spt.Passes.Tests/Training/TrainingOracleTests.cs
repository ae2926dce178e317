using System.Text.Json;
using Spt.Ir;
using Spt.Passes.Training;
using Xunit.Abstractions;

namespace Spt.Passes.Tests.Training;

/// <summary>
/// sptc's training graphs against the committed PyTorch oracle (tests/fixtures/oracle): the loss and every parameter
/// gradient at the initial weights, and a 20-step AdamW loss curve.
/// </summary>
public sealed class TrainingOracleTests(ITestOutputHelper output)
{
    public static TheoryData<string> Stems => [.. Fixtures.OracleStems];

    private static TrainingArtifacts CompileOracle(string stem, float maxGradNorm = 0)
    {
        bool lm = File.Exists(Path.Combine(Fixtures.OracleDir(stem), "labels.pb"));
        return TrainingCompiler.Compile(Fixtures.LoadModel(stem), new TrainingOptions
        {
            Loss = lm ? LossKind.CausalLm : LossKind.Mse,
            Optimizer = new AdamWOptions { MaxGradNorm = maxGradNorm },
        });
    }

    // The oracle batch, labels or target, and the initial parameters.
    private static Dictionary<string, Tensor> OracleFeeds(string stem, TrainingArtifacts art, Model source)
    {
        string dir = Fixtures.OracleDir(stem);
        var feeds = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var f in Directory.GetFiles(Path.Combine(dir, "inputs"), "*.pb"))
            feeds[Path.GetFileNameWithoutExtension(f)] = Fixtures.ReadTensor(f);
        if (File.Exists(Path.Combine(dir, "labels.pb")))
            feeds["labels"] = Fixtures.ReadTensor(Path.Combine(dir, "labels.pb"));
        else
            feeds["target"] = Fixtures.ReadTensor(Path.Combine(dir, "target.pb"));
        foreach (var p in art.Parameters)
            feeds[p.Name] = source.Graph.FindValue(p.Name)!.Initializer!;
        return feeds;
    }

    private static void ZeroAccumulators(Dictionary<string, Tensor> feeds, TrainingArtifacts art)
    {
        foreach (var p in art.Parameters.Where(p => p.Trainable))
            feeds[ArtifactContract.AccumulatorPrefix + p.Name] = Tensor.Create("", new float[p.Shape.Aggregate(1L, (a, b) => a * b)], [.. p.Shape]);
    }

    public static TheoryData<string> Opset14Stems => [.. Fixtures.OracleStems.Select(s => s.Replace("_op17", "_op14", StringComparison.Ordinal))];

    [Theory]
    [MemberData(nameof(Stems))]
    public void LossAndGradientsMatchTorchAutograd(string stem) => CheckGradients(stem, stem);

    /// <summary>The opset 14 exports (LayerNorm decomposed, axes as attributes) of the same modules, same weights.</summary>
    [Theory]
    [MemberData(nameof(Opset14Stems))]
    public void Opset14ExportsMatchTheSameOracle(string stem) => CheckGradients(stem, stem.Replace("_op14", "_op17", StringComparison.Ordinal));

    private void CheckGradients(string modelStem, string stem)
    {
        var source = Fixtures.LoadModel(modelStem);
        bool lm = File.Exists(Path.Combine(Fixtures.OracleDir(stem), "labels.pb"));
        var art = TrainingCompiler.Compile(source, new TrainingOptions { Loss = lm ? LossKind.CausalLm : LossKind.Mse });
        var feeds = OracleFeeds(stem, art, source);
        ZeroAccumulators(feeds, art);
        using var grad = new OrtRunner(art.Grad);
        var outs = grad.Run(feeds);

        float expectedLoss = Fixtures.ReadTensor(Path.Combine(Fixtures.OracleDir(stem), "loss.pb")).ToFloatArray()[0];
        float loss = outs["loss"].ToFloatArray()[0];
        Assert.Equal(loss, outs["task_loss"].ToFloatArray()[0]);
        Assert.True(Math.Abs(loss - expectedLoss) <= 1e-4 * Math.Abs(expectedLoss), $"loss {loss} vs torch {expectedLoss}");

        // Relative error per tensor: ||a - b|| / max(||b||, 1e-4 * ||all grads||), so that a gradient that is zero in
        // exact arithmetic (key biases under softmax) is judged against the model's gradient scale, not its rounding
        // noise (an absolute error up to 1e-8 of the whole gradient's norm, fp32 rounding level). Element-wise: |a - b| / (|b| + 1e-3 * max|b| + 1e-4 * max over all grads).
        var gradFiles = Directory.GetFiles(Path.Combine(Fixtures.OracleDir(stem), "grads"), "*.pb");
        Assert.Equal(gradFiles.Length, art.Parameters.Count(p => p.Trainable));
        var expectedGrads = gradFiles.ToDictionary(f => Path.GetFileNameWithoutExtension(f), f => Fixtures.ReadTensor(f).ToFloatArray());
        double globalNorm = Math.Sqrt(expectedGrads.Values.Sum(g => g.Sum(x => (double)x * x)));
        double globalMax = expectedGrads.Values.Max(g => g.Max(Math.Abs));
        double worstRel = 0, worstElem = 0;
        string worstName = "";
        foreach (var (name, expected) in expectedGrads)
        {
            var actual = outs[ArtifactContract.AccumulatorOutputPrefix + name].ToFloatArray();
            var (rel, elem) = Fixtures.Compare(actual, expected, normFloor: 1e-4 * globalNorm,
                elementFloor: 1e-3 * expected.Max(Math.Abs) + 1e-4 * globalMax);
            Assert.True(rel <= 1e-4, $"{name}: relative error {rel:E2}");
            Assert.True(elem <= 1e-3, $"{name}: element-wise error {elem:E2}");
            if (rel > worstRel)
            {
                worstRel = rel;
                worstName = name;
            }
            worstElem = Math.Max(worstElem, elem);
        }
        output.WriteLine($"{modelStem}: loss {loss:R} vs {expectedLoss:R}; max relative grad error {worstRel:E2} ({worstName}); max element-wise {worstElem:E2}");
    }

    [Theory]
    [MemberData(nameof(Stems))]
    public void AdamWFollowsTorchLossCurve(string stem)
    {
        var source = Fixtures.LoadModel(stem);
        var art = CompileOracle(stem);
        var feeds = OracleFeeds(stem, art, source);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.OracleDir(stem), "adamw.json")));
        var expected = doc.RootElement.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        double lr = doc.RootElement.GetProperty("lr").GetDouble();

        var trainable = art.Parameters.Where(p => p.Trainable).ToList();
        var state = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var p in trainable)
        {
            var zeros = Tensor.Create("", new float[p.Shape.Aggregate(1L, (a, b) => a * b)], [.. p.Shape]);
            state["m." + p.Name] = zeros;
            state["v." + p.Name] = zeros;
        }
        using var grad = new OrtRunner(art.Grad);
        using var opt = new OrtRunner(art.Optimizer);
        double worst = 0;
        for (int step = 1; step <= expected.Length; step++)
        {
            ZeroAccumulators(feeds, art);
            var outs = grad.Run(feeds);
            double loss = outs["loss"].ToFloatArray()[0];
            worst = Math.Max(worst, Math.Abs(loss - expected[step - 1]));
            var optFeeds = new Dictionary<string, Tensor>(StringComparer.Ordinal)
            {
                ["lr"] = Tensor.Scalar("", (float)lr),
                ["step"] = Tensor.Scalar("", (float)step),
                ["grad_scale"] = Tensor.Scalar("", 1f),
            };
            foreach (var p in trainable)
            {
                optFeeds[p.Name] = feeds[p.Name];
                optFeeds["grad." + p.Name] = outs[ArtifactContract.AccumulatorOutputPrefix + p.Name];
                optFeeds["m." + p.Name] = state["m." + p.Name];
                optFeeds["v." + p.Name] = state["v." + p.Name];
            }
            var updated = opt.Run(optFeeds);
            Assert.True(float.IsFinite(updated["grad_norm"].ToFloatArray()[0]));
            foreach (var p in trainable)
            {
                feeds[p.Name] = updated["new." + p.Name];
                state["m." + p.Name] = updated["new.m." + p.Name];
                state["v." + p.Name] = updated["new.v." + p.Name];
            }
        }
        output.WriteLine($"{stem}: max |loss - torch| over {expected.Length} AdamW steps = {worst:E2}");
        Assert.True(worst <= 1e-3, $"AdamW curve differs from torch by {worst:E2}");
        Assert.True(expected[^1] < expected[0]);
    }

    [Fact]
    public void ParameterRuleMatchesTorchParametersOnEveryFixture()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Fixtures.Root, "manifest.json")));
        int checkedModels = 0;
        foreach (var m in doc.RootElement.GetProperty("models").EnumerateArray())
        {
            string file = m.GetProperty("file").GetString()!;
            Model model;
            try
            {
                model = Model.Load(Path.Combine(Fixtures.Root, file));
            }
            catch (OnnxModelException)
            {
                continue;
            }
            var expected = m.GetProperty("trainable_initializers").EnumerateArray().Select(e => e.GetString()!).OrderBy(s => s, StringComparer.Ordinal);
            var actual = TrainingCompiler.SelectParameters(model).Where(p => p.Trainable).Select(p => p.Name).OrderBy(s => s, StringComparer.Ordinal);
            Assert.True(expected.SequenceEqual(actual), $"{file}: expected [{string.Join(", ", expected)}], got [{string.Join(", ", actual)}]");
            checkedModels++;
        }
        Assert.True(checkedModels >= 30, $"only {checkedModels} fixture models were checked");
    }
}
