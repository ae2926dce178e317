using System.Text.Json;
using Spt.Ir;

namespace Spt.Cli.Tests;

/// <summary>
/// Output that is not a terminal (a pipe, a file, a test's writer): tables keep every row on one line whatever its
/// width, and every command that prints a table has a <c>--json</c> form that parses.
/// </summary>
public class TableOutputTests
{
    // Longer than any terminal default: a wrapping console would cut it over several lines.
    private static readonly string LongName = "encoder_hidden_states_" + string.Concat(Enumerable.Repeat("very_long_segment_", 8)) + "end";

    private static string LongNameModel(TempDir dir)
    {
        var b = new GraphBuilder(17);
        var x = b.Input(LongName, ElementType.Float, "batch", "features");
        b.Output(b.Op("Relu", x), "activated_" + LongName);
        var path = dir.File("long.onnx");
        b.Build().Save(path);
        return path;
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    // Box-drawing borders: top, row, separator and bottom lines of a table.
    private static bool IsTableLine(string line) => line.Length > 0 && "┌│├└╭╰".Contains(line[0], StringComparison.Ordinal);

    private static bool IsRow(string line) => line.StartsWith('│');

    /// <summary>Every line of a table has the same width: no cell was wrapped onto a continuation line.</summary>
    private static void AssertRectangular(IEnumerable<string> tableLines)
    {
        Assert.NotEmpty(tableLines);
        var widths = tableLines.Select(l => l.TrimEnd('\r').Length).Distinct().ToList();
        Assert.True(widths.Count == 1, $"table lines differ in width ({string.Join(", ", widths)}): a cell wrapped");
    }

    [Fact]
    public void InspectKeepsALongNameOnOneLine()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = CliRunner.Run("inspect", LongNameModel(dir));
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        Assert.Contains(Lines(stdout), l => l.Contains(LongName, StringComparison.Ordinal) && l.Contains("input", StringComparison.Ordinal));
        Assert.Contains(Lines(stdout), l => l.Contains("activated_" + LongName, StringComparison.Ordinal));
        Assert.DoesNotContain('\u001b', stdout);
    }

    [Fact]
    public void OptimizeTableRowsAreOneLineEachAndJsonParses()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = CliRunner.Run("optimize", CliRunner.Fixture("opt_op17.onnx"), "-o", dir.File("spt.onnx"));
        Assert.Equal(0, code);
        var table = Lines(stdout).Where(IsTableLine).ToList();
        AssertRectangular(table);
        // Header + one row per layer (2 layers), nothing continued on extra lines; the table is wider than 80 columns.
        var rows = table.Where(IsRow).ToList();
        Assert.Equal(1 + 2, rows.Count);
        Assert.True(rows[0].Length > 80, $"the table is {rows[0].Length} wide");
        Assert.Contains(Lines(stdout), l => l.StartsWith("attention: 2/2 rewritten; ffn: 2/2 rewritten;", StringComparison.Ordinal) && l.Contains("save", StringComparison.Ordinal));

        var json = CliRunner.Run("optimize", CliRunner.Fixture("opt_op17.onnx"), "-o", dir.File("spt2.onnx"), "--json");
        Assert.Equal(0, json.ExitCode);
        using var doc = JsonDocument.Parse(json.Out);
        Assert.Equal(2, doc.RootElement.GetProperty("attention").GetProperty("rewritten").GetInt32());
        Assert.Equal(2, doc.RootElement.GetProperty("layers").GetArrayLength());
    }

    [Fact]
    public void VerifyJsonParsesAndMatchesTheExitCode()
    {
        using var dir = new TempDir();
        var model = CliRunner.Fixture("opt_op17.onnx");
        Assert.Equal(0, CliRunner.Run("optimize", model, "-o", dir.File("exact.onnx"), "--exact").ExitCode);

        var (code, stdout, _) = CliRunner.Run("verify", model, dir.File("exact.onnx"), "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.True(doc.RootElement.GetProperty("passed").GetBoolean());
        var output = Assert.Single(doc.RootElement.GetProperty("outputs").EnumerateArray());
        Assert.True(output.GetProperty("max_abs_diff").GetDouble() <= 1e-4);

        var table = CliRunner.Run("verify", model, dir.File("exact.onnx"));
        AssertRectangular(Lines(table.Out).Where(IsTableLine));
    }

    [Fact]
    public void DemoJsonIsAllThatGoesToStdout()
    {
        var (code, stdout, stderr) = CliRunner.Run("demo", "--steps", "6", "--batch", "4", "--seq", "64", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var models = doc.RootElement.GetProperty("models").EnumerateArray().ToList();
        Assert.Equal(["dense", "SPT"], models.Select(m => m.GetProperty("name").GetString()));
        Assert.All(models, m => Assert.True(m.GetProperty("trainable_parameters").GetInt64() > 0));
        // The progress lines went to stderr.
        Assert.Contains("exact check:", stderr);
    }

    [Fact]
    public void RedirectedStdoutOfTheRealProcessIsUnwrapped()
    {
        using var dir = new TempDir();
        var model = LongNameModel(dir);
        var (code, stdout, stderr) = CliRunner.RunProcess("dotnet", [Path.Combine(AppContext.BaseDirectory, "sptc.dll"), "inspect", model],
            dir.Path, TimeSpan.FromMinutes(1));
        Assert.True(code == 0, stderr);
        Assert.Contains(Lines(stdout), l => l.Contains(LongName, StringComparison.Ordinal));
        Assert.DoesNotContain('\u001b', stdout);
    }
}
