using System.Text.Json;
using Spt.Ir;

namespace Spt.Passes.Tests;

/// <summary>The generated fixture models and their manifest entries.</summary>
public static class Fixtures
{
    private static readonly Lazy<string> RootDir = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "tests", "fixtures", "manifest.json")))
                return Path.Combine(dir.FullName, "tests", "fixtures");
        }
        throw new InvalidOperationException("tests/fixtures/manifest.json not found above " + AppContext.BaseDirectory);
    });

    private static readonly Lazy<Dictionary<string, JsonElement>> Entries = new(() =>
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RootDir.Value, "manifest.json")));
        return doc.RootElement.GetProperty("models").EnumerateArray()
            .ToDictionary(e => Path.GetFileName(e.GetProperty("file").GetString()!), e => e.Clone());
    });

    /// <summary>The tests/fixtures directory (models, manifest, oracles).</summary>
    public static string Root => RootDir.Value;

    /// <summary>Every fixture file name (for theories).</summary>
    public static TheoryData<string> All()
    {
        var data = new TheoryData<string>();
        foreach (var name in Entries.Value.Keys.Order(StringComparer.Ordinal))
            data.Add(name);
        return data;
    }

    /// <summary>Every fixture file name, sorted.</summary>
    public static IEnumerable<string> Names => Entries.Value.Keys.Order(StringComparer.Ordinal);

    public static JsonElement Entry(string file) => Entries.Value[file];

    public static string PathOf(string file) => Path.Combine(RootDir.Value, "models", file);

    public static Model Load(string file) => Model.Load(PathOf(file));
}
