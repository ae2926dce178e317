using System.Text.Json;
using Spt.Ir;
using Spt.Ir.Samples;

namespace Spt.Passes.Layering.Tests;

/// <summary>The pass-pipeline API is usable without ONNX Runtime, the native op library or BLAS.</summary>
public class LayeringTests
{
    private static JsonDocument Assets() =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "project.assets.json")));

    [Fact]
    public void RestoreOfAProjectThatReferencesOnlySptPassesHasNoOnnxRuntimePackage()
    {
        using var assets = Assets();
        var libraries = assets.RootElement.GetProperty("libraries").EnumerateObject().Select(p => p.Name).ToList();

        // The file is this project's restore: its project references are there, so an empty list cannot pass.
        Assert.Contains(libraries, l => l.StartsWith("Spt.Passes/", StringComparison.Ordinal));
        Assert.Contains(libraries, l => l.StartsWith("Spt.CustomOps/", StringComparison.Ordinal));
        Assert.Contains(libraries, l => l.StartsWith("Google.Protobuf/", StringComparison.Ordinal));
        Assert.DoesNotContain(libraries, l => l.StartsWith("Spt.Runtime/", StringComparison.Ordinal));
        Assert.DoesNotContain(libraries, l => l.StartsWith("Microsoft.ML.OnnxRuntime", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public void NothingNativeLandsBesideTheCompiler()
    {
        var native = Directory.EnumerateFiles(AppContext.BaseDirectory, "*.so", SearchOption.AllDirectories)
            .Select(Path.GetFileName)
            .ToList();
        Assert.Empty(native);
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "Spt.Passes.dll")));
    }

    [Fact]
    public void TheOptimizerRewritesAModelWithoutTheRuntime()
    {
        using var model = SampleModels.TinyDecoder(new SampleDecoderConfig(2, 32, 2, 64));
        var report = SptOptimizer.Optimize(model, new SptOptions());

        Assert.Equal(2, report.AttentionRewritten);
        Assert.Equal(2, report.FfnRewritten);
        Assert.Empty(GraphVerifier.Verify(model.Graph));
        var ops = model.Graph.Nodes.Select(n => n.OpType).ToList();
        Assert.DoesNotContain("Softmax", ops);
        Assert.Equal(2, ops.Count(o => o == "RoutedFFN"));
        Assert.Equal((long?)Spt.CustomOps.CustomOpLibrary.OpsetVersion, model.GetOpsetVersion(Spt.CustomOps.CustomOpLibrary.Domain));

        // The rewritten model survives serialization (what a compiler-only user ships to a runtime elsewhere).
        using var reloaded = Model.FromBytes(model.ToBytes());
        Assert.Empty(GraphVerifier.Verify(reloaded.Graph));
        Assert.Equal(ops.Count, reloaded.Graph.Nodes.Count());
    }
}
