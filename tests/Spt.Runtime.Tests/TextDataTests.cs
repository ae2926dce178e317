using Spt.Runtime.Data;
using Spt.Runtime.Tokenization;

namespace Spt.Runtime.Tests;

/// <summary>Text records (CSV, TSV, JSONL) through a real tokenizer: fields, label maps, targets, pairs, errors, length buckets.</summary>
public sealed class TextDataTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "spt-text-tests-" + Guid.NewGuid().ToString("N"));
    private readonly TextTokenizer _tokenizer = TextTokenizer.Open(TestFiles.MiniLmVocab);

    public TextDataTests() => Directory.CreateDirectory(_root);

    public void Dispose()
    {
        _tokenizer.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    private string Write(string name, string text)
    {
        var path = Path.Combine(_root, name);
        File.WriteAllText(path, text);
        return path;
    }

    private Dataset Load(string path, TargetKind target = TargetKind.Class, int seq = 16, string? pair = null, LabelMap? labels = null) =>
        DataFiles.Load(path, new DataRequest { Tokenizer = _tokenizer, SequenceLength = seq, Target = target, PairField = pair, Labels = labels });

    [Fact]
    public void Csv_with_string_labels_builds_a_sorted_label_map_and_unpadded_examples()
    {
        // A quoted field holds the separator, a doubled quote and a line break; the file starts with a BOM.
        var path = Write("d.csv", "\uFEFFtext,label\n\"Hello, world!\",greeting\nthe dog,animal\n\n\"the \"\"lazy\"\"\ndog\",animal\n");
        var data = Load(path);
        Assert.Equal(3, data.Count);
        Assert.True(data.Ragged);
        Assert.Equal(["animal", "greeting"], data.Labels!.Names);
        Assert.Equal(new long[] { 101, 7592, 1010, 2088, 999, 102 }, data.Examples[0].InputIds);
        Assert.Equal(1, data.Examples[0].Label);
        Assert.Equal(0, data.Examples[1].Label);
        Assert.Equal(new long[] { 101, 1996, 3899, 102 }, data.Examples[1].InputIds);
        // the " lazy " dog: the quote is a token (1000) of its own
        Assert.Equal(new long[] { 101, 1996, 1000, 13971, 1000, 3899, 102 }, data.Examples[2].InputIds);
        Assert.Equal("line 5", data.Examples[2].Where);
        Assert.Equal([6, 4, 7], data.Lengths);
        Assert.Equal(8, data.BatchLength([0, 1, 2]));
        Assert.Equal(0, data.PadId);
    }

    [Fact]
    public void Tsv_pairs_jsonl_integer_labels_and_regression_targets()
    {
        var pairs = Load(Write("p.tsv", "text\tb\tlabel\nhello world\tthe quick brown fox jumps\t1\n"), pair: "b", seq: 64) ;
        Assert.Equal(new long[] { 101, 7592, 2088, 102, 1996, 4248, 2829, 4419, 14523, 102 }, pairs.Examples[0].InputIds);
        Assert.Equal(new long[] { 0, 0, 0, 0, 1, 1, 1, 1, 1, 1 }, pairs.Examples[0].TokenTypeIds);
        Assert.Equal(["0", "1"], pairs.Labels!.Names);

        var jsonl = Load(Write("j.jsonl", "{\"text\": \"hello\", \"label\": 2}\n{\"text\": \"world\", \"label\": 0}\n"));
        Assert.Equal(["0", "1", "2"], jsonl.Labels!.Names);
        Assert.Equal(2, jsonl.Examples[0].Label);

        var regression = Load(Write("r.csv", "text,label\nhello,0.25\nworld,-3e2\n"), TargetKind.Float);
        Assert.Equal([0.25f], regression.Examples[0].Target!);
        Assert.Equal([-300f], regression.Examples[1].Target!);
        Assert.Null(regression.Labels);
    }

    [Fact]
    public void Long_texts_are_truncated_and_a_given_label_map_is_kept()
    {
        var map = new LabelMap(["b", "a"]);
        var data = Load(Write("t.csv", "text,label\nthe quick brown fox jumps over the lazy dog,a\n"), seq: 5, labels: map);
        Assert.Equal(new long[] { 101, 1996, 4248, 2829, 102 }, data.Examples[0].InputIds);
        Assert.Equal(1, data.Examples[0].Label);
        Assert.Same(map, data.Labels);
        var e = Assert.Throws<DataException>(() => Load(Write("u.csv", "text,label\nhi,c\n"), labels: map));
        Assert.Contains("line 2: label 'c' is not one of the 2 known labels (b, a)", e.Message);
    }

    [Theory]
    [InlineData("m.csv", "text,label\nhello,x\nworld,\n", "m.csv line 3: no 'label' value; every record needs one for classification")]
    [InlineData("n.csv", "body,label\nhello,x\n", "no column 'text' (the header has body, label); choose the columns with --text-field")]
    [InlineData("o.jsonl", "{\"text\": \"hi\", \"label\": 1}\n{\"body\": \"hi\", \"label\": 1}\n", "o.jsonl line 2: no 'text' field (the record has body, label)")]
    [InlineData("e.csv", "text,label\n", "has no records (only a header)")]
    [InlineData("f.csv", "", "is empty")]
    [InlineData("q.csv", "text,label\n\"open,x\n", "a quoted field is not closed")]
    [InlineData("w.csv", "text,label\nhi,x,extra\n", "3 fields, the header has 2")]
    [InlineData("g.txt", "some plain text", "a plain text file carries no labels")]
    public void Bad_text_data_is_one_line_naming_the_row(string name, string content, string expected)
    {
        var e = Assert.Throws<DataException>(() => Load(Write(name, content)));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void Regression_targets_must_be_numbers_and_text_records_need_a_tokenizer()
    {
        Assert.Contains("line 2: 'label' is 'big', not a number",
            Assert.Throws<DataException>(() => Load(Write("r.csv", "text,label\nhi,big\n"), TargetKind.Float)).Message);
        Assert.Contains("give the model's tokenizer with --tokenizer",
            Assert.Throws<DataException>(() => DataFiles.Load(Write("x.csv", "text,label\nhi,1\n"), new DataRequest { Target = TargetKind.Class })).Message);
    }

    [Fact]
    public void Language_model_text_is_tokenized_and_cut_into_sequences()
    {
        var data = DataFiles.Load(Write("lm.txt", "the quick brown fox\njumps over the lazy dog."), new DataRequest { Tokenizer = _tokenizer, SequenceLength = 4 });
        Assert.Equal(2, data.Count); // 10 word pieces -> 2 sequences of 4 (the last 2 dropped)
        Assert.Equal(new long[] { 1996, 4248, 2829, 4419 }, data.Examples[0].InputIds);
        Assert.Equal(new long[] { 14523, 2058, 1996, 13971 }, data.Examples[1].InputIds);
        Assert.Equal(data.Examples[0].InputIds, data.Examples[0].Labels);
    }

    [Fact]
    public void Length_buckets_keep_a_seeded_permutation_sorted_within_windows()
    {
        int[] lengths = [.. Enumerable.Range(0, 40).Select(i => (i * 7919) % 23)];
        var order = new DataOrder(40, seed: 3, lengths: lengths, bucket: 10);
        var epoch = order.Next(40);
        Assert.Equal(Enumerable.Range(0, 40), epoch.Order());
        for (var w = 0; w < 4; w++)
        {
            var window = epoch.Skip(w * 10).Take(10).Select(i => lengths[i]).ToArray();
            Assert.Equal(window.Order(), window);
        }

        // The windows hold the same examples as the plain permutation's windows (only their order changes), and the
        // order is a function of the seed and epoch: a resumed order continues identically.
        var plain = DataOrder.Permutation(40, 3, 0);
        for (var w = 0; w < 4; w++)
            Assert.Equal(plain.Skip(w * 10).Take(10).Order(), epoch.Skip(w * 10).Take(10).Order());
        var resumed = new DataOrder(40, 3, epoch: 0, position: 25, lengths: lengths, bucket: 10);
        Assert.Equal(epoch.Skip(25), resumed.Next(15));
    }
}
