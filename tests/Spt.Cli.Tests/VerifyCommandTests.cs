using Spt.Ir;
using Spt.Passes.Canonicalization;

namespace Spt.Cli.Tests;

public class VerifyCommandTests
{
    [Fact]
    public void FixtureAgainstItselfPasses()
    {
        var model = CliRunner.Fixture("bert_mask_op17.onnx");
        var (code, stdout, stderr) = CliRunner.Run("verify", model, model, "--seq", "8");
        Assert.Equal(ExitCodes.Ok, code);
        Assert.Equal("", stderr);
        Assert.Contains("last_hidden_state", stdout);
        Assert.Contains("pass", stdout);
    }

    [Fact]
    public void CanonicalizedFixturePasses()
    {
        using var dir = new TempDir();
        using var model = Model.Load(CliRunner.Fixture("gpt2_op14.onnx"));
        Canonicalize.Standard().Run(model);
        model.Save(dir.File("canon.onnx"));
        var (code, stdout, _) = CliRunner.Run("verify", CliRunner.Fixture("gpt2_op14.onnx"), dir.File("canon.onnx"), "--tol", "1e-5", "--seed", "3");
        Assert.Equal(ExitCodes.Ok, code);
        Assert.Contains("all 1 outputs within tolerance", stdout);
    }

    [Fact]
    public void PerturbedWeightFailsWithOutputsDiffer()
    {
        using var dir = new TempDir();
        using var model = Model.Load(CliRunner.Fixture("opt_op17.onnx"));
        var bias = model.Graph.Initializers.First(v => v.Name.EndsWith("fc2.bias", StringComparison.Ordinal));
        var values = bias.Initializer!.ToFloatArray();
        values[0] += 0.01f;
        model.Graph.Edit().SetInitializer(bias, Tensor.Create(bias.Name, values, values.Length));
        model.Save(dir.File("perturbed.onnx"));

        var (code, stdout, stderr) = CliRunner.Run("verify", CliRunner.Fixture("opt_op17.onnx"), dir.File("perturbed.onnx"));
        Assert.Equal(ExitCodes.OutputsDiffer, code);
        Assert.Equal("", stderr);
        Assert.Contains("FAIL", stdout);

        // A looser tolerance accepts the same change.
        Assert.Equal(ExitCodes.Ok, CliRunner.Run("verify", CliRunner.Fixture("opt_op17.onnx"), dir.File("perturbed.onnx"), "--tol", "1").ExitCode);
    }

    [Fact]
    public void MissingFileIsOneLineAndExitTwo()
    {
        var (code, stdout, stderr) = CliRunner.Run("verify", CliRunner.Fixture("opt_op17.onnx"), "/nonexistent/model.onnx");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Equal("", stdout);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.Contains("does not exist", stderr);
    }

    [Fact]
    public void ModelsWithDifferentOutputsAreBadInput()
    {
        var (code, _, stderr) = CliRunner.Run("verify", CliRunner.Fixture("opt_op17.onnx"), CliRunner.Fixture("mha_op17.onnx"));
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.Contains("missing from the optimized model", stderr);
        Assert.DoesNotContain("   at ", stderr);
    }

    [Fact]
    public void NegativeToleranceIsBadInput()
    {
        var model = CliRunner.Fixture("opt_op17.onnx");
        var (code, _, stderr) = CliRunner.Run("verify", model, model, "--tol", "-1");
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("--tol", stderr);
    }
}
