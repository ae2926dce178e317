namespace Spt.Cli.Tests;

/// <summary>The compiler's faithfulness proof, as a user runs it: optimize --exact, then verify at 1e-4.</summary>
public class ExactRewriteVerifyTests
{
    public static TheoryData<string> Fixtures()
    {
        var data = new TheoryData<string>();
        var dir = Path.GetDirectoryName(CliRunner.Fixture("opt_op17.onnx"))!;
        foreach (var file in Directory.GetFiles(dir, "*.onnx").Select(Path.GetFileName).Order(StringComparer.Ordinal))
        {
            data.Add(file!);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void ExactRewriteVerifies(string fixture)
    {
        using var dir = new TempDir();
        var output = dir.File("exact.onnx");
        // Default flags: the codeword dim fits each head dim (LLaMA's 12 gets 6); opset-11 exports are upgraded.
        var optimize = CliRunner.Run(["optimize", CliRunner.Fixture(fixture), "-o", output, "--exact"]);
        Assert.True(optimize.ExitCode == 0, optimize.Err + optimize.Out);
        Assert.Contains("rewritten", optimize.Out);

        var verify = CliRunner.Run("verify", CliRunner.Fixture(fixture), output, "--tol", "1e-4", "--seq", "8");
        Assert.True(verify.ExitCode == 0, verify.Err + verify.Out);
        Assert.Contains("within tolerance", verify.Out);
    }
}
