using System.Diagnostics;
using System.Globalization;
using Xunit.Abstractions;

namespace Spt.Cli.Tests.Fuzz;

/// <summary>
/// The bad-input corpus through inspect, optimize, compile-training and verify: every crafted model, and seeded
/// mutations of the fixture models. CI runs a sample (SPTC_FUZZ_MUTATIONS, default 100); <c>eng/fuzz.sh</c> runs the
/// full corpus and writes the figures table (SPTC_FUZZ_REPORT).
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    private static readonly string[] Fixtures =
    [
        "gpt2_op17.onnx", "mha_op17.onnx", "ffn_relu_op17.onnx", "encoder_layer_gelu_op14.onnx", "llama_op17.onnx",
        "bert_mask_op17.onnx", "ort_attention_mask_op17.onnx", "onnx_attention_op23.onnx", "ffn_gelu_tanh_op14.onnx", "opt_op17.onnx",
    ];

    private static int Setting(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : fallback;

    [Fact]
    public void The_corpus_has_at_least_60_crafted_cases_with_distinct_names()
    {
        Assert.True(CraftedModels.All.Count >= 60, $"{CraftedModels.All.Count} crafted cases");
        Assert.Equal(CraftedModels.All.Count, CraftedModels.All.Select(c => c.Name).Distinct().Count());
    }

    [Fact]
    public void The_mutator_is_deterministic_and_changes_the_model()
    {
        var bytes = File.ReadAllBytes(CliRunner.Fixture(Fixtures[0]));
        for (int seed = 0; seed < 20; seed++)
        {
            var a = ModelMutator.Mutate(bytes, seed);
            var b = ModelMutator.Mutate(bytes, seed);
            Assert.Equal(a.Bytes, b.Bytes);
            Assert.Equal(a.Description, b.Description);
        }

        Assert.True(Enumerable.Range(0, 20).Count(s => !ModelMutator.Mutate(bytes, s).Bytes.AsSpan().SequenceEqual(bytes)) >= 18);
    }

    [Fact]
    public void Crafted_models_keep_the_bad_input_contract()
    {
        var harness = new FuzzHarness();
        var watch = Stopwatch.StartNew();
        foreach (var c in CraftedModels.All)
        {
            harness.Run(c.Name, c.Create);
        }

        Report("crafted", harness, watch.Elapsed);
        Assert.True(harness.Clean, harness.Problems);
        Assert.True(harness.ExitCodes.GetValueOrDefault(2) >= CraftedModels.All.Count, "each crafted model is refused by at least one command");
    }

    [Fact]
    public void Mutated_fixture_models_keep_the_bad_input_contract()
    {
        int count = Setting("SPTC_FUZZ_MUTATIONS", 100);
        int first = Setting("SPTC_FUZZ_SEED", 0);
        var fixtures = Fixtures.Select(f => File.ReadAllBytes(CliRunner.Fixture(f))).ToArray();
        var harness = new FuzzHarness();
        var watch = Stopwatch.StartNew();
        for (int seed = first; seed < first + count; seed++)
        {
            var fixture = Fixtures[seed % Fixtures.Length];
            var mutated = ModelMutator.Mutate(fixtures[seed % fixtures.Length], seed);
            harness.Run($"seed {seed} ({fixture}: {mutated.Description})", dir =>
            {
                var path = Path.Combine(dir, "m.onnx");
                File.WriteAllBytes(path, mutated.Bytes);
                return path;
            });
        }

        Report("mutated", harness, watch.Elapsed);
        Assert.True(harness.Clean, harness.Problems);
    }

    private void Report(string label, FuzzHarness harness, TimeSpan elapsed)
    {
        output.WriteLine(FuzzHarness.TableHeader);
        output.WriteLine(harness.Table(label));
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{elapsed.TotalSeconds:F1} s"));
        if (Environment.GetEnvironmentVariable("SPTC_FUZZ_REPORT") is { Length: > 0 } report)
        {
            File.AppendAllText(report, harness.Table(label) + string.Create(CultureInfo.InvariantCulture, $" {elapsed.TotalSeconds:F0} s\n"));
        }
    }
}
