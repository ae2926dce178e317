using Spt.Ir;
using Spt.Runtime.Data;

namespace Spt.Runtime.Tests;

/// <summary>Data loading: byte tokens, JSONL, shuffling, splits and the one-line errors for bad data.</summary>
public sealed class TrainingDataTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-data-tests-" + Guid.NewGuid().ToString("N"));

    public TrainingDataTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Write(string name, string text)
    {
        var path = Path.Combine(_root, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Seq2seq_jsonl_targets_keep_their_own_length_and_ids_pad_with_the_pad_id()
    {
        var path = Write("pairs.jsonl", "{\"input_ids\": [5, 6, 7], \"labels\": [8, 9, 10, 11, 12]}\n{\"input_ids\": [5, 6, 7, 8, 9, 10], \"labels\": [8]}\n");
        var data = DataFiles.Load(path, new DataRequest { Target = TargetKind.Sequence, PadId = 3 });
        Assert.Equal(6, data.SequenceLength);  // the longest source or target
        Assert.Equal(3, data.PadId);
        Assert.Equal(new long[] { 5, 6, 7, 3, 3, 3 }, data.Examples[0].InputIds);
        Assert.Equal(new long[] { 1, 1, 1, 0, 0, 0 }, data.Examples[0].AttentionMask);
        Assert.Equal(new long[] { 8, 9, 10, 11, 12, -100 }, data.Examples[0].Labels);
        Assert.Equal(new long[] { 8, -100, -100, -100, -100, -100 }, data.Examples[1].Labels);

        // Without targets a label sequence must still match its ids; with targets it must be there.
        var e = Assert.Throws<DataException>(() => DataFiles.Load(path, new DataRequest()));
        Assert.Contains("line 1: 'labels' has 5 entries, 'input_ids' 3", e.Message);
        var noTarget = Write("sources.jsonl", "{\"input_ids\": [5, 6]}\n");
        e = Assert.Throws<DataException>(() => DataFiles.Load(noTarget, new DataRequest { Target = TargetKind.Sequence }));
        Assert.EndsWith("line 1: no 'labels' (the target sequence a seq2seq model learns)", e.Message);
        var tooLong = Write("long.jsonl", "{\"input_ids\": [5], \"labels\": [1, 2, 3, 4, 5]}\n");
        e = Assert.Throws<DataException>(() => DataFiles.Load(tooLong, new DataRequest { Target = TargetKind.Sequence, SequenceLength = 4 }));
        Assert.Contains("a target of 5 tokens, longer than the sequence length 4", e.Message);
    }

    [Fact]
    public void Text_becomes_utf8_byte_tokens_in_consecutive_chunks()
    {
        var data = Dataset.Load(Write("a.txt", "abcdefghij\u00e9"), 4);
        Assert.Equal(DataFormat.Text, data.Format);
        Assert.Equal(3, data.Count);  // 12 bytes ("é" is 2) -> 3 chunks of 4
        Assert.Equal(new long[] { 'a', 'b', 'c', 'd' }, data.Examples[0].InputIds);
        Assert.Equal(new long[] { 'i', 'j', 0xC3, 0xA9 }, data.Examples[2].InputIds);
        Assert.Equal(data.Examples[1].InputIds, data.Examples[1].Labels);
        Assert.All(data.Examples, e => Assert.All(e.AttentionMask, m => Assert.Equal(1, m)));
    }

    [Fact]
    public void Jsonl_is_padded_with_masks_and_ignored_labels()
    {
        var path = Write("d.jsonl", "{\"input_ids\": [5, 6, 7], \"label\": 1}\n\n{\"input_ids\": [1, 2], \"attention_mask\": [1, 0], \"labels\": [9, 8], \"label\": 0}\n");
        var data = Dataset.Load(path, null);
        Assert.Equal(3, data.SequenceLength);
        Assert.Equal(new long[] { 1, 2, 0 }, data.Examples[1].InputIds);
        Assert.Equal(new long[] { 1, 0, 0 }, data.Examples[1].AttentionMask);
        Assert.Equal(new long[] { 9, 8, -100 }, data.Examples[1].Labels);
        Assert.Equal(new long[] { 5, 6, 7 }, data.Examples[0].Labels);
        Assert.Equal(1, data.Examples[0].Label);
        Assert.Equal("line 3", data.Examples[1].Where);
        Assert.True(data.HasExplicitMask);
    }

    [Theory]
    [InlineData("{\"input_ids\": [1, 2, 3, 4, 5]}\n", "line 1: 5 tokens, longer than the sequence length 4")]
    [InlineData("{\"tokens\": [1]}\n", "line 1: no 'input_ids'")]
    [InlineData("{\"input_ids\": [1, \"a\"]}\n", "'input_ids' holds \"a\", not an integer")]
    [InlineData("{\"input_ids\": [1, 2], \"labels\": [1]}\n", "'labels' has 1 entries, 'input_ids' 2")]
    [InlineData("{\"input_ids\": [1]}\n{oops\n", "line 2: not valid JSON")]
    [InlineData("\n\n", "is empty")]
    public void Bad_jsonl_is_a_one_line_error_naming_the_line(string content, string expected)
    {
        var e = Assert.Throws<DataException>(() => Dataset.Load(Write("bad.jsonl", content), 4));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void Empty_and_missing_files_are_refused()
    {
        Assert.Contains("is empty", Assert.Throws<DataException>(() => Dataset.Load(Write("e.txt", ""), 8)).Message);
        Assert.Contains("does not exist", Assert.Throws<DataException>(() => Dataset.Load(Path.Combine(_root, "nope.txt"), 8)).Message);
        Assert.Contains("fewer than one sequence", Assert.Throws<DataException>(() => Dataset.Load(Write("s.txt", "abc"), 8)).Message);
    }

    [Fact]
    public void Shuffling_is_deterministic_per_seed_and_resumable_from_its_position()
    {
        var a = new DataOrder(50, seed: 3);
        var b = new DataOrder(50, seed: 3);
        var c = new DataOrder(50, seed: 4);
        var first = Enumerable.Range(0, 30).Select(_ => a.Next(7)).ToList();  // 210 examples: crosses 4 epochs
        Assert.Equal(first, Enumerable.Range(0, 30).Select(_ => b.Next(7)).ToList());
        Assert.NotEqual(first[0], c.Next(7));

        // Every epoch is a permutation, and epochs differ.
        var epoch0 = DataOrder.Permutation(50, 3, 0);
        Assert.Equal(Enumerable.Range(0, 50), epoch0.Order());
        Assert.NotEqual(epoch0, DataOrder.Permutation(50, 3, 1));

        // Resuming from (epoch, position) continues the same sequence.
        var straight = new DataOrder(50, seed: 3);
        for (var i = 0; i < 9; i++) straight.Next(7);
        var resumed = new DataOrder(50, 3, straight.Epoch, straight.Position);
        Assert.Equal(straight.Next(40), resumed.Next(40));
    }

    [Fact]
    public void The_eval_split_is_the_tail()
    {
        var data = Dataset.FromText(new string('x', 100), 10);
        var (train, eval) = data.Split(0.2);
        Assert.Equal(8, train.Count);
        Assert.Equal(2, eval.Count);
        Assert.Same(data.Examples[8], eval.Examples[0]);
        Assert.Equal(0, data.Split(0).Eval.Count);
    }

    [Fact]
    public void Model_limits_come_from_the_embedding_and_positions_tables()
    {
        var b = new GraphBuilder(17);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        var pos = b.Input("position_ids", ElementType.Int64, "batch", "sequence");
        var types = b.Input("token_type_ids", ElementType.Int64, "batch", "sequence");
        var wte = b.Initializer("wte", new float[50 * 4], 50, 4);
        var wpe = b.Initializer("wpe", new float[16 * 4], 16, 4);
        var tte = b.Initializer("tte", new float[2 * 4], 2, 4);
        var x = b.Op("Add", b.Op("Add", b.Op("Gather", wte, ids), b.Op("Gather", wpe, pos)), b.Op("Gather", tte, types));
        b.Output(x, "hidden");
        using var model = b.Build();
        var limits = ModelLimits.Of(model.Graph);
        Assert.Equal(50, limits.Vocabulary);
        Assert.Equal("wte", limits.EmbeddingTable);
        Assert.Equal(16, limits.MaxPositions);
        Assert.Equal("wpe", limits.PositionsTable);

        var tooLong = Dataset.FromText(new string('a', 64), 32);
        var e = Assert.Throws<DataException>(() => tooLong.Validate(limits));
        Assert.Equal("sequence length 32 is longer than the model's positions table 'wpe' (16 rows); use --seq 16 or less", e.Message);

        var bytes = Dataset.FromText(new string('a', 16), 16);  // 'a' = 97 >= 50
        e = Assert.Throws<DataException>(() => bytes.Validate(limits));
        Assert.Contains("token id 97 is outside the model's vocabulary of 50 (embedding 'wte'); byte-level text needs a vocabulary of 256", e.Message);

        var labels = Dataset.Load(Write("c.jsonl", "{\"input_ids\": [1, 2], \"label\": 3}\n"), null);
        e = Assert.Throws<DataException>(() => labels.Validate(limits with { Classes = 2 }));
        Assert.Contains("label 3 is outside the model's 2 classes", e.Message);
    }

    [Fact]
    public void The_embedded_corpus_is_a_few_kilobytes_of_ascii_text()
    {
        var text = EmbeddedCorpus.Text;
        Assert.InRange(text.Length, 4000, 20000);
        Assert.All(text, ch => Assert.True(ch < 128));
    }
}
