namespace Spt.Ir.Tests;

/// <summary>Locations of test inputs and scratch space.</summary>
internal static class TestData
{
    /// <summary>Where Debian's libonnx-testdata package installs ONNX's backend test suite.</summary>
    private const string DebianBackendData = "/usr/include/onnx/backend/test/data";

    /// <summary>The suites of the backend test data that the peer suite reads.</summary>
    public static readonly string[] BackendSuites = ["node", "pytorch-converted", "pytorch-operator", "simple", "real"];

    /// <summary>Root of ONNX's backend test data (override with SPT_ONNX_TESTDATA); fails the test with instructions when absent.</summary>
    public static string BackendDataRoot()
    {
        string root = Environment.GetEnvironmentVariable("SPT_ONNX_TESTDATA") ?? DebianBackendData;
        if (!Directory.Exists(Path.Combine(root, "node")))
        {
            Assert.Fail($"ONNX backend test data not found under '{root}'. Install the Debian package libonnx-testdata " +
                        "(apt-get install libonnx-testdata) or point SPT_ONNX_TESTDATA at a copy of onnx/backend/test/data.");
        }
        return root;
    }

    /// <summary>Every <c>model.onnx</c> of the backend suites under <paramref name="root"/>, in a stable order.</summary>
    public static List<string> BackendModels(string root) => BackendSuites
        .Select(s => Path.Combine(root, s))
        .Where(Directory.Exists)
        .SelectMany(d => Directory.EnumerateFiles(d, "model.onnx", SearchOption.AllDirectories))
        .Order(StringComparer.Ordinal)
        .ToList();

    /// <summary>A fresh temporary directory, deleted when disposed.</summary>
    public static TempDir CreateTempDir() => new();

    internal sealed class TempDir : IDisposable
    {
        public TempDir()
        {
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "spt-graph-tests-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(Path);
        }

        public string Path { get; }

        public string File(string name) => System.IO.Path.Combine(Path, name);

        public void Dispose()
        {
            try
            {
                Directory.Delete(Path, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
