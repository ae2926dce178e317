namespace Spt.Runtime.Data;

/// <summary>
/// A small English corpus (about 7 KB of plain ASCII prose written for this project, free to use) shipped inside the
/// assembly, for the demo and the learning tests.
/// </summary>
public static class EmbeddedCorpus
{
    private static readonly Lazy<string> Cached = new(() =>
    {
        using var stream = typeof(EmbeddedCorpus).Assembly.GetManifestResourceStream("Spt.Runtime.Data.corpus.txt")
            ?? throw new InvalidOperationException("the embedded corpus is missing from Spt.Runtime");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    });

    /// <summary>The corpus text.</summary>
    public static string Text => Cached.Value;
}
