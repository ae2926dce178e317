using System.Text.Json;
using System.Text.Json.Nodes;
using Spt.Runtime.Data;
using Spt.Runtime.Tokenization;

namespace Spt.Runtime.Tests;

/// <summary>
/// Tokenizers against known ids: MiniLM's real vocab.txt (ids read off its lines by hand), HF's Rust tokenizers on
/// a tokenizer.json built from the same vocabulary (a second implementation), GPT-2 ids, a hand-made GPT-2 BPE,
/// and a SentencePiece model with ids from Google's SentencePiece.
/// </summary>
public sealed class TokenizerTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-tok-tests-" + Guid.NewGuid().ToString("N"));

    public TokenizerTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    // Line numbers (0-based) of MiniLM's vocab.txt: [CLS] 101, [SEP] 102, hello 7592, "," 1010, world 2088, "!" 999,
    // the 1996, quick 4248, brown 2829, fox 4419, jumps 14523, over 2058, lazy 13971, dog 3899, "." 1012,
    // token 19204, ##ization 3989, cafe 7668.
    [Theory]
    [InlineData("Hello, world!", new long[] { 101, 7592, 1010, 2088, 999, 102 })]
    [InlineData("The quick brown fox jumps over the lazy dog.", new long[] { 101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102 })]
    [InlineData("Tokenization", new long[] { 101, 19204, 3989, 102 })]
    [InlineData("Café", new long[] { 101, 7668, 102 })]
    public void WordPiece_vocab_gives_the_ids_of_its_lines(string text, long[] expected)
    {
        using var tokenizer = TextTokenizer.Open(TestFiles.MiniLmVocab);
        Assert.Equal(TokenizerKind.WordPiece, tokenizer.Kind);
        Assert.Contains("30522 tokens, lower-cased", tokenizer.Description);
        var encoding = tokenizer.Encode(text, null, 64);
        Assert.Equal(expected, encoding.Ids);
        Assert.All(encoding.TypeIds, t => Assert.Equal(0, t));
        Assert.Equal(0, tokenizer.PadId);
        Assert.Equal(text.ToLowerInvariant().Replace("é", "e"), tokenizer.Decode(encoding.Ids).Replace(" ,", ",").Replace(" !", "!").Replace(" .", "."));
    }

    [Fact]
    public void WordPiece_pairs_get_segments_and_longest_first_truncation()
    {
        using var tokenizer = TextTokenizer.Open(TestFiles.MiniLmVocab);
        var pair = tokenizer.Encode("hello world", "the quick brown fox jumps", 64);
        Assert.Equal(new long[] { 101, 7592, 2088, 102, 1996, 4248, 2829, 4419, 14523, 102 }, pair.Ids);
        Assert.Equal(new long[] { 0, 0, 0, 0, 1, 1, 1, 1, 1, 1 }, pair.TypeIds);
        // 8 ids: 5 for the texts; the longer pair loses tokens first (5 -> 3), then both alternate.
        var cut = tokenizer.Encode("hello world", "the quick brown fox jumps", 8);
        Assert.Equal(new long[] { 101, 7592, 2088, 102, 1996, 4248, 2829, 102 }, cut.Ids);
        Assert.Equal(new long[] { 101, 7592, 102 }, tokenizer.Encode("hello world", null, 3).Ids);
    }

    [Fact]
    public void Hf_tokenizer_json_agrees_with_the_wordpiece_library_on_the_same_vocabulary()
    {
        var vocab = File.ReadLines(TestFiles.MiniLmVocab).Select((t, i) => (t, i)).ToList();
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray([.. new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Select(t => (JsonNode)new JsonObject
            {
                ["id"] = vocab.First(v => v.t == t).i, ["content"] = t, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = true,
            })]),
            ["normalizer"] = new JsonObject { ["type"] = "BertNormalizer", ["clean_text"] = true, ["handle_chinese_chars"] = true, ["strip_accents"] = null, ["lowercase"] = true },
            ["pre_tokenizer"] = new JsonObject { ["type"] = "BertPreTokenizer" },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = JsonNode.Parse("""[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}]"""),
                ["pair"] = JsonNode.Parse("""[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}},{"Sequence":{"id":"B","type_id":1}},{"SpecialToken":{"id":"[SEP]","type_id":1}}]"""),
                ["special_tokens"] = JsonNode.Parse("""{"[CLS]":{"id":"[CLS]","ids":[101],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[102],"tokens":["[SEP]"]}}"""),
            },
            ["decoder"] = new JsonObject { ["type"] = "WordPiece", ["prefix"] = "##", ["cleanup"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "WordPiece", ["unk_token"] = "[UNK]", ["continuing_subword_prefix"] = "##", ["max_input_chars_per_word"] = 100,
                ["vocab"] = new JsonObject([.. vocab.GroupBy(v => v.t).Select(g => KeyValuePair.Create(g.Key, (JsonNode?)JsonValue.Create(g.First().i)))]),
            },
        };
        var path = Path.Combine(_root, "tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());

        using var hf = TextTokenizer.Open(path);
        using var wordPiece = TextTokenizer.Open(TestFiles.MiniLmVocab);
        Assert.Equal(TokenizerKind.HuggingFaceJson, hf.Kind);
        Assert.Contains("WordPiece", hf.Description);
        Assert.Equal(0, hf.PadId);
        foreach (var text in new[]
        {
            "Hello, world!", "The quick brown fox jumps over the lazy dog.", "Tokenization of naïve café texts",
            "sptc fine-tunes ONNX models (sparse PQ attention) at 3.5x less memory", "unaffable antidisestablishmentarianism",
        })
        {
            Assert.Equal(wordPiece.Encode(text, null, 128).Ids, hf.Encode(text, null, 128).Ids);
            Assert.Equal(wordPiece.EncodePlain(text), hf.EncodePlain(text));
        }

        Assert.Equal(new long[] { 101, 7592, 102 }, hf.Encode("hello world", null, 3).Ids);
        Assert.Equal("hello, world!", hf.Decode(hf.Encode("Hello, world!", null, 16).Ids));
    }

    [Fact]
    public void Gpt2_data_package_gives_gpt2_ids()
    {
        using var gpt2 = TextTokenizer.Open("gpt2");
        Assert.Equal(TokenizerKind.Gpt2Bpe, gpt2.Kind);
        Assert.Equal(50257, gpt2.VocabularySize);
        // GPT-2: "Hello" 15496, " world" 995, "," 11, "!" 0; <|endoftext|> 50256.
        Assert.Equal(new long[] { 15496, 995 }, gpt2.EncodePlain("Hello world"));
        Assert.Equal(new long[] { 15496, 11, 995, 0 }, gpt2.EncodePlain("Hello, world!"));
        Assert.Equal(50256, gpt2.EndId);
        const string text = "Byte-level BPE round-trips any text: naïve café, 東京, emoji 🙂.";
        Assert.Equal(text, gpt2.Decode(gpt2.EncodePlain(text)));
    }

    [Fact]
    public void Gpt2_vocab_and_merges_files_apply_the_merges_in_rank_order()
    {
        // A hand-made byte-level BPE: 'Ġ' is GPT-2's byte-to-unicode stand-in for the space byte.
        var vocab = new JsonObject
        {
            ["h"] = 0, ["e"] = 1, ["l"] = 2, ["o"] = 3, ["Ġ"] = 4, ["w"] = 5, ["r"] = 6, ["d"] = 7,
            ["he"] = 8, ["ll"] = 9, ["hell"] = 10, ["hello"] = 11, ["Ġw"] = 12, ["<|endoftext|>"] = 13,
        };
        File.WriteAllText(Path.Combine(_root, "vocab.json"), vocab.ToJsonString());
        File.WriteAllText(Path.Combine(_root, "merges.txt"), "#version: 0.2\nh e\nl l\nhe ll\nhell o\nĠ w\n");
        using var bpe = TextTokenizer.Open(Path.Combine(_root, "vocab.json"));
        Assert.Equal(TokenizerKind.Gpt2Bpe, bpe.Kind);
        Assert.Equal(14, bpe.VocabularySize);
        // "hello" merges fully (h e, l l, he ll, hell o); " world" is Ġw + o r l d (no merge for the rest).
        Assert.Equal(new long[] { 11, 12, 3, 6, 2, 7 }, bpe.EncodePlain("hello world"));
        Assert.Equal("hello world", bpe.Decode(bpe.EncodePlain("hello world")));
        Assert.Equal(13, bpe.PadId);
    }

    [Fact]
    public void SentencePiece_model_gives_the_ids_of_googles_sentencepiece()
    {
        using var sp = TextTokenizer.Open(TestFiles.Fixture("tokenizers", "tiny-sp.model"));
        Assert.Equal(TokenizerKind.SentencePiece, sp.Kind);
        using var doc = JsonDocument.Parse(File.ReadAllText(TestFiles.Fixture("tokenizers", "tiny-sp.expected.json")));
        var root = doc.RootElement;
        Assert.Equal(root.GetProperty("vocab").GetInt64(), sp.VocabularySize);
        Assert.Equal(root.GetProperty("pad").GetInt64(), sp.PadId);
        var bos = root.GetProperty("bos").GetInt64();
        foreach (var c in root.GetProperty("cases").EnumerateArray())
        {
            var text = c.GetProperty("text").GetString()!;
            long[] ids = [.. c.GetProperty("ids").EnumerateArray().Select(i => i.GetInt64())];
            Assert.Equal(ids, sp.EncodePlain(text));
            Assert.Equal([bos, .. ids], sp.Encode(text, null, 256).Ids);
            Assert.Equal(c.GetProperty("decoded").GetString(), sp.Decode(sp.Encode(text, null, 256).Ids));
        }
    }

    [Theory]
    [InlineData("notes.txt", "just some prose\nwith lines\nand more lines\nbut no tokens\nat all\n", "is not a tokenizer file sptc knows")]
    [InlineData("weird.json", "{\"a\": [1, 2]}", "neither an HF tokenizer.json")]
    [InlineData("broken.json", "{\"model\": ", "is not valid JSON")]
    [InlineData("vocab.json", "{\"a\": 0, \"b\": 1}", "no merges.txt beside it")]
    public void Unknown_tokenizer_files_are_one_line_errors(string name, string content, string expected)
    {
        var path = Path.Combine(_root, name);
        File.WriteAllText(path, content);
        var e = Assert.Throws<DataException>(() => TextTokenizer.Open(path));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
        Assert.Contains("does not exist", Assert.Throws<DataException>(() => TextTokenizer.Open(Path.Combine(_root, "missing.txt"))).Message);
    }
}
