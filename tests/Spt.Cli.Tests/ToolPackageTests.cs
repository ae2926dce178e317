using System.IO.Compression;
using System.Text.Json;

namespace Spt.Cli.Tests;

/// <summary>
/// sptc as a .NET tool: <c>dotnet pack</c> of Spt.Cli, <c>dotnet tool install</c> from that folder into a fresh
/// tool path, then <c>sptc</c> found on PATH rewrites and verifies a model (ONNX Runtime and the native op library
/// load from the installed package).
/// </summary>
public class ToolPackageTests
{
    private static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "SptCompiler.sln")))
                return dir.FullName;
        }

        throw new DirectoryNotFoundException($"SptCompiler.sln not found above {AppContext.BaseDirectory}");
    }

    [Fact]
    public void PackedToolInstallsIntoAFreshFolderAndRunsFromPath()
    {
        var root = RepoRoot();
        using var dir = new TempDir();
        var feed = dir.File("feed");

        // The libraries are already built (pack compiles only sptc itself for linux-x64, beside the plain build).
        var pack = CliRunner.RunProcess("dotnet", ["pack", Path.Combine(root, "src", "Spt.Cli", "Spt.Cli.csproj"), "-c", "Release", "-o", feed,
            "-v:quiet", "-nologo"], root, TimeSpan.FromMinutes(8));
        Assert.True(pack.Code == 0, pack.Out + pack.Err);
        var packages = Directory.GetFiles(feed, "*.nupkg").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        var ridPackage = Assert.Single(packages, p => p!.StartsWith("sptc.linux-x64.", StringComparison.Ordinal));
        Assert.Contains(packages, p => p!.StartsWith("sptc.0", StringComparison.Ordinal));
        using (var zip = ZipFile.OpenRead(Path.Combine(feed, ridPackage!)))
        {
            var names = zip.Entries.Select(e => Path.GetFileName(e.FullName)).ToHashSet(StringComparer.Ordinal);
            Assert.Contains("sptc.dll", names);
            Assert.Contains("libspt_customops.so", names);
            Assert.Contains("libonnxruntime.so", names);
            Assert.DoesNotContain("onnxruntime.dll", names);
        }

        // A fresh tool folder and a NuGet configuration with nothing but that feed.
        File.WriteAllText(dir.File("nuget.config"),
            $"<configuration><packageSources><clear /><add key=\"local\" value=\"{feed}\" /></packageSources></configuration>");
        var tools = dir.File("tools");
        var install = CliRunner.RunProcess("dotnet", ["tool", "install", "--tool-path", tools, "--configfile", dir.File("nuget.config"), "sptc"], dir.Path, TimeSpan.FromMinutes(2));
        Assert.True(install.Code == 0, install.Out + install.Err);
        Assert.True(File.Exists(Path.Combine(tools, "sptc")), install.Out + install.Err);

        var model = CliRunner.Fixture("opt_op17.onnx");
        var optimize = CliRunner.RunProcess("sptc", ["optimize", model, "-o", dir.File("exact.onnx"), "--exact", "--json"], dir.Path, TimeSpan.FromMinutes(1), path: tools);
        Assert.True(optimize.Code == 0, optimize.Out + optimize.Err);
        var verify = CliRunner.RunProcess("sptc", ["verify", model, dir.File("exact.onnx"), "--json"], dir.Path, TimeSpan.FromMinutes(1), path: tools);
        Assert.True(verify.Code == 0, verify.Out + verify.Err);
        using var doc = JsonDocument.Parse(verify.Out);
        Assert.True(doc.RootElement.GetProperty("passed").GetBoolean());
    }
}
