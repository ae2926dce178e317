using System.Text;
using System.Text.Json;
using Spt.Runtime.Data;

namespace Spt.Runtime.Tokenization;

/// <summary>The kind of a tokenizer file, as detected by <see cref="TextTokenizer.Open"/>.</summary>
public enum TokenizerKind
{
    /// <summary>UTF-8 bytes are the token ids (vocabulary 256); for the built-in sample model.</summary>
    ByteLevel,

    /// <summary>BERT WordPiece from a <c>vocab.txt</c> (one token per line, the line number is the id).</summary>
    WordPiece,

    /// <summary>GPT-2 byte-level BPE: <c>vocab.json</c> + <c>merges.txt</c>, or the GPT-2 data package (<c>gpt2</c>).</summary>
    Gpt2Bpe,

    /// <summary>A SentencePiece <c>.model</c> (protobuf ModelProto).</summary>
    SentencePiece,

    /// <summary>A Hugging Face <c>tokenizer.json</c>, run by HF's own Rust tokenizers library.</summary>
    HuggingFaceJson,
}

/// <summary>One encoded text (or text pair), ready to be a model input.</summary>
/// <param name="Ids">Token ids with the model's special tokens ([CLS] ... [SEP] for BERT).</param>
/// <param name="TypeIds">Segment ids (0 for the first text, 1 for the pair), same length as <paramref name="Ids"/>.</param>
public sealed record Encoding(long[] Ids, long[] TypeIds);

/// <summary>
/// Text to model token ids and back. Each kind wraps a maintained library: Microsoft.ML.Tokenizers for WordPiece,
/// GPT-2 BPE and SentencePiece; HF's tokenizers (through Tokenizers.DotNet) for <c>tokenizer.json</c>.
/// </summary>
public abstract class TextTokenizer : IDisposable
{
    /// <summary>The detected kind.</summary>
    public abstract TokenizerKind Kind { get; }

    /// <summary>What was loaded, for the run's log ("WordPiece vocab.txt, 30522 tokens, lower-cased").</summary>
    public abstract string Description { get; }

    /// <summary>Number of token ids (the model's embedding needs at least this many rows), when known.</summary>
    public abstract long? VocabularySize { get; }

    /// <summary>The id written into padding positions (their attention mask is 0).</summary>
    public abstract long PadId { get; }

    /// <summary>The end-of-text id, when the tokenizer has one (generation stops there).</summary>
    public virtual long? EndId => null;

    /// <summary>The ids of <paramref name="text"/> alone, without special tokens.</summary>
    public abstract long[] EncodePlain(string text);

    /// <summary>
    /// A model input: the text (and the optional pair) with the model's special tokens, at most
    /// <paramref name="maxLength"/> ids; a pair is cut longest-first, as transformers' default truncation does.
    /// </summary>
    public virtual Encoding Encode(string text, string? pair, int maxLength)
    {
        if (pair is not null)
        {
            throw new DataException($"the {Kind} tokenizer has no pair template: give one text field only (no text_pair)");
        }

        var ids = EncodePlain(text);
        var (prefix, suffix) = (Prefix, Suffix);
        var room = Math.Max(0, maxLength - prefix.Length - suffix.Length);
        long[] all = [.. prefix, .. ids.Take(room), .. suffix];
        return new Encoding(all, new long[all.Length]);
    }

    /// <summary>Text of <paramref name="ids"/>, special tokens left out.</summary>
    public abstract string Decode(IReadOnlyList<long> ids);

    /// <summary>Ids put before the text of a single-text input (e.g. BOS).</summary>
    protected virtual long[] Prefix => [];

    /// <summary>Ids put after the text of a single-text input (e.g. EOS).</summary>
    protected virtual long[] Suffix => [];

    /// <inheritdoc />
    public virtual void Dispose() => GC.SuppressFinalize(this);

    /// <summary>The byte-level tokenizer of the built-in sample model.</summary>
    public static TextTokenizer ByteLevel() => new ByteLevelTokenizer();

    /// <summary>
    /// Opens <paramref name="path"/>, detecting the kind from the file: <c>gpt2</c> (the GPT-2 data package),
    /// <c>bytes</c>; a JSON object with a <c>model</c> is an HF <c>tokenizer.json</c>; a JSON object of token → id is a
    /// GPT-2 <c>vocab.json</c> (with <c>merges.txt</c> beside it); a file starting with a protobuf field 1 record is a
    /// SentencePiece model; a text file of one token per line with <c>[CLS]</c>/<c>[SEP]</c> or <c>##</c> pieces is a
    /// WordPiece <c>vocab.txt</c>.
    /// </summary>
    /// <exception cref="DataException">The file is missing or is none of these.</exception>
    public static TextTokenizer Open(string path)
    {
        if (path is "gpt2")
        {
            return Gpt2Tokenizer.FromDataPackage();
        }

        if (path is "bytes" or "byte" or "byte-level")
        {
            return ByteLevel();
        }

        if (Directory.Exists(path))
        {
            foreach (var name in new[] { "tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json" })
            {
                if (File.Exists(Path.Combine(path, name)))
                {
                    return Open(Path.Combine(path, name));
                }
            }

            throw new DataException($"tokenizer directory '{path}' has no tokenizer.json, vocab.txt, tokenizer.model or vocab.json");
        }

        if (!File.Exists(path))
        {
            throw new DataException($"tokenizer file '{path}' does not exist");
        }

        var head = new byte[Math.Min(4096, new FileInfo(path).Length)];
        using (var f = File.OpenRead(path))
        {
            f.ReadExactly(head);
        }

        var text = head.SkipWhile(b => b is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t' or 0xEF or 0xBB or 0xBF).FirstOrDefault();
        if (text == (byte)'{')
        {
            return OpenJson(path);
        }

        // SentencePiece ModelProto: field 1 (pieces, length-delimited) first, then a SentencePiece message whose
        // field 1 is the piece string: bytes 0x0A <len> 0x0A <len> ...
        if (head.Length >= 4 && head[0] == 0x0A && Array.IndexOf(head, (byte)0x0A, 1, Math.Min(5, head.Length - 1)) > 0)
        {
            return SentencePieceTextTokenizer.Load(path);
        }

        if (LooksLikeWordPieceVocab(path))
        {
            return WordPieceTextTokenizer.Load(path);
        }

        throw new DataException($"'{path}' is not a tokenizer file sptc knows: expected an HF tokenizer.json, a WordPiece vocab.txt, " +
            "a GPT-2 vocab.json (+ merges.txt beside it), a SentencePiece .model, or the names gpt2 / bytes");
    }

    private static TextTokenizer OpenJson(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new DataException($"tokenizer file '{path}' is not valid JSON ({e.Message.Split('.')[0]})", e);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("model", out var model) && model.ValueKind == JsonValueKind.Object)
            {
                return HuggingFaceTokenizer.Load(path, root);
            }

            if (root.ValueKind == JsonValueKind.Object && root.EnumerateObject().Take(16).All(p => p.Value.ValueKind == JsonValueKind.Number))
            {
                var merges = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "merges.txt");
                if (!File.Exists(merges))
                {
                    throw new DataException($"'{path}' looks like a GPT-2 vocab.json, but there is no merges.txt beside it");
                }

                return Gpt2Tokenizer.FromFiles(path, merges);
            }
        }

        throw new DataException($"'{path}' is JSON but neither an HF tokenizer.json (no 'model' object) nor a GPT-2 vocab.json (token → id)");
    }

    private static bool LooksLikeWordPieceVocab(string path)
    {
        var lines = 0;
        var markers = 0;
        foreach (var line in File.ReadLines(path, System.Text.Encoding.UTF8).Take(50_000))
        {
            lines++;
            if (line.Length == 0 || line.Contains('\t') && lines < 10)
            {
                return false;
            }

            if (line is "[CLS]" or "[SEP]" or "[UNK]" or "[PAD]" || line.StartsWith("##", StringComparison.Ordinal))
            {
                markers++;
            }
        }

        return lines >= 5 && markers >= 2;
    }
}

/// <summary>UTF-8 bytes as ids 0..255 (no special tokens; padding is 0).</summary>
internal sealed class ByteLevelTokenizer : TextTokenizer
{
    public override TokenizerKind Kind => TokenizerKind.ByteLevel;

    public override string Description => "byte-level (UTF-8 bytes, 256 ids)";

    public override long? VocabularySize => Dataset.ByteVocabulary;

    public override long PadId => 0;

    public override long[] EncodePlain(string text) => [.. System.Text.Encoding.UTF8.GetBytes(text).Select(b => (long)b)];

    public override string Decode(IReadOnlyList<long> ids) =>
        System.Text.Encoding.UTF8.GetString([.. ids.Where(i => i is >= 0 and < 256).Select(i => (byte)i)]);
}
