using System.Globalization;
using Spt.Runtime.Tokenization;

namespace Spt.Runtime.Data;

/// <summary>What the records of a text dataset carry besides the text.</summary>
public enum TargetKind
{
    /// <summary>Nothing: language modelling on the text (labels = the tokens).</summary>
    None,

    /// <summary>A class per record (integers or names; see <see cref="LabelMap"/>).</summary>
    Class,

    /// <summary>A float per record (regression).</summary>
    Float,

    /// <summary>
    /// A target token sequence per record, of its own length (seq2seq: the decoder learns it; its inputs are the
    /// target shifted right). Pre-tokenized JSONL only, as <c>labels</c>.
    /// </summary>
    Sequence,
}

/// <summary>How <see cref="TextDataset.Load"/> reads a CSV, TSV or JSONL file of text records.</summary>
public sealed record TextDataOptions
{
    /// <summary>Turns the text into token ids.</summary>
    public required TextTokenizer Tokenizer { get; init; }

    /// <summary>Longest sequence (special tokens included); longer texts are truncated.</summary>
    public int SequenceLength { get; init; } = 128;

    /// <summary>The field holding the text.</summary>
    public string TextField { get; init; } = "text";

    /// <summary>The field holding the second text of a pair (null: single texts).</summary>
    public string? PairField { get; init; }

    /// <summary>The field holding the class or the regression target.</summary>
    public string LabelField { get; init; } = "label";

    /// <summary>What the label field carries.</summary>
    public TargetKind Target { get; init; } = TargetKind.Class;

    /// <summary>A map to use instead of building one (a resumed run, evaluation or prediction); labels outside it are errors.</summary>
    public LabelMap? Labels { get; init; }

    /// <summary>Label value of positions without loss (LM padding).</summary>
    public long IgnoreIndex { get; init; } = Dataset.DefaultIgnoreIndex;
}

/// <summary>
/// Text records (CSV/TSV with a header, or JSONL objects) to examples. One pass over the file checks every record
/// (text field present, label present and readable), builds the label map and records each example's token count;
/// the examples themselves are tokenized from the file when the trainer asks for them, so a file larger than memory
/// trains with memory for one batch plus a few integers per record. Examples are unpadded: batches are padded to
/// their longest member and, with <see cref="DataOrder"/>'s length buckets, hold examples of similar length.
/// </summary>
public static class TextDataset
{
    /// <summary>Reads <paramref name="path"/>; the tokenizer and the fields come from <paramref name="options"/>.</summary>
    /// <exception cref="DataException">A missing field or label, an unreadable label, or no records: one line naming the row.</exception>
    public static Dataset Load(string path, TextDataOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.SequenceLength < 2)
        {
            throw new DataException($"sequence length {options.SequenceLength} is too short (at least 2 tokens)");
        }

        var file = RecordFile.Open(path);
        try
        {
            return Read(file, options);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static Dataset Read(RecordFile file, TextDataOptions options)
    {
        if (file.Count == 0)
        {
            throw new DataException($"data file '{file.Path}' has no records{(file.Columns is null ? "" : " (only a header)")}");
        }

        if (file.Columns is { } columns)
        {
            foreach (var field in new[] { options.TextField, options.PairField }.Concat(options.Target == TargetKind.None ? [] : [options.LabelField]))
            {
                if (field is not null && !columns.Contains(field))
                {
                    throw new DataException($"{file.Path}: no column '{field}' (the header has {string.Join(", ", columns)}); " +
                        "choose the columns with --text-field, --pair-field and --label-field");
                }
            }
        }

        var lengths = new int[file.Count];
        var raw = options.Target == TargetKind.None ? null : new string[file.Count];
        for (var i = 0; i < file.Count; i++)
        {
            var fields = file.Fields(i);
            var (text, pair) = Texts(file, i, fields, options);
            if (raw is not null)
            {
                if (!fields.TryGetValue(options.LabelField, out var label) || label.Trim().Length == 0)
                {
                    throw new DataException($"{file.Path} {file.Where(i)}: no '{options.LabelField}' value; every record needs one for " +
                        (options.Target == TargetKind.Class ? "classification" : "regression"));
                }

                raw[i] = label.Trim();
            }

            lengths[i] = options.Tokenizer.Encode(text, pair, options.SequenceLength).Ids.Length;
        }

        LabelMap? map = null;
        long[]? classes = null;
        float[]? targets = null;
        if (options.Target == TargetKind.Class)
        {
            map = options.Labels ?? LabelMap.Build(raw!);
            classes = [.. raw!.Select((l, i) => map.IdOf(l, $"{file.Path} {file.Where(i)}"))];
        }
        else if (options.Target == TargetKind.Float)
        {
            targets = [.. raw!.Select((l, i) => float.TryParse(l, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && float.IsFinite(v)
                ? v
                : throw new DataException($"{file.Path} {file.Where(i)}: '{options.LabelField}' is '{l}', not a number (regression needs float targets)"))];
        }

        var examples = new LazyExamples(file.Count, i =>
        {
            var (text, pair) = Texts(file, i, file.Fields(i), options);
            var encoding = options.Tokenizer.Encode(text, pair, options.SequenceLength);
            var mask = new long[encoding.Ids.Length];
            Array.Fill(mask, 1L);
            return new Example(encoding.Ids, mask, options.Target == TargetKind.None ? encoding.Ids : null, classes?[i], file.Where(i))
            {
                TokenTypeIds = encoding.TypeIds,
                Target = targets is null ? null : [targets[i]],
            };
        });
        return new Dataset(examples, options.SequenceLength, file.Path, DataFormat.Records, hasExplicitMask: true)
        {
            Ragged = true,
            PadId = options.Tokenizer.PadId,
            Labels = map,
            Lengths = lengths,
        };
    }

    /// <summary>
    /// A plain text file for language modelling: tokenized a line at a time (streamed), the ids concatenated and cut
    /// into sequences of <paramref name="sequenceLength"/> (the last partial one dropped), as transformers'
    /// <c>group_texts</c> does. Only the ids are kept (4 bytes a token), not the text.
    /// </summary>
    public static Dataset LanguageModelText(string path, TextTokenizer tokenizer, int sequenceLength)
    {
        if (sequenceLength < 2)
        {
            throw new DataException($"sequence length {sequenceLength} is too short (at least 2 tokens are needed for a next-token loss)");
        }

        if (!File.Exists(path))
        {
            throw new DataException(Directory.Exists(path) ? $"data path '{path}' is a directory, not a file" : $"data file '{path}' does not exist");
        }

        var ids = new List<int>();
        var first = true;
        foreach (var line in File.ReadLines(path))
        {
            // Line breaks are text too: each line after the first is tokenized with its leading newline.
            ids.AddRange(tokenizer.EncodePlain(first ? line : "\n" + line).Select(i => checked((int)i)));
            first = false;
        }

        if (ids.Count == 0)
        {
            throw new DataException($"data file '{path}' is empty");
        }

        var count = ids.Count / sequenceLength;
        if (count == 0)
        {
            throw new DataException($"data file '{path}' has {ids.Count} tokens, fewer than one sequence of {sequenceLength} (lower --seq)");
        }

        var examples = new Example[count];
        for (var i = 0; i < count; i++)
        {
            long[] chunk = [.. ids.GetRange(i * sequenceLength, sequenceLength).Select(x => (long)x)];
            var mask = new long[sequenceLength];
            Array.Fill(mask, 1L);
            examples[i] = new Example(chunk, mask, chunk, null, $"tokens {i * sequenceLength}..{((i + 1) * sequenceLength) - 1}");
        }

        return new Dataset(examples, sequenceLength, path, DataFormat.Text, hasExplicitMask: false) { PadId = tokenizer.PadId };
    }

    private static (string Text, string? Pair) Texts(RecordFile file, int i, IReadOnlyDictionary<string, string> fields, TextDataOptions options)
    {
        if (!fields.TryGetValue(options.TextField, out var text))
        {
            throw new DataException($"{file.Path} {file.Where(i)}: no '{options.TextField}' field" +
                (file.Columns is null ? $" (the record has {string.Join(", ", fields.Keys)}); choose it with --text-field" : ""));
        }

        string? pair = null;
        if (options.PairField is { } p && !fields.TryGetValue(p, out pair))
        {
            throw new DataException($"{file.Path} {file.Where(i)}: no '{p}' field (the text pair)");
        }

        return (text, pair);
    }

    /// <summary>Examples made on demand from a record index (the most recent one kept, as batches revisit it).</summary>
    private sealed class LazyExamples(int count, Func<int, Example> make) : IReadOnlyList<Example>
    {
        private int _lastIndex = -1;
        private Example? _last;

        public Example this[int index]
        {
            get
            {
                ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)count, nameof(index));
                if (index != _lastIndex)
                {
                    _last = make(index);
                    _lastIndex = index;
                }

                return _last!;
            }
        }

        public int Count => count;

        public IEnumerator<Example> GetEnumerator()
        {
            for (var i = 0; i < count; i++)
            {
                yield return this[i];
            }
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }
}
