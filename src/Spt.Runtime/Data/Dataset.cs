using Spt.Ir;
using System.Text;
using System.Text.Json;

namespace Spt.Runtime.Data;

/// <summary>One training example: a token sequence padded to the dataset's sequence length.</summary>
/// <param name="InputIds">Token ids, length = the dataset's sequence length (padding is 0).</param>
/// <param name="AttentionMask">1 for real tokens, 0 for padding.</param>
/// <param name="Labels">Per-token labels (padding and ignored positions hold the ignore index), or null.</param>
/// <param name="Label">The class of the sequence, or null.</param>
/// <param name="Where">Where the example came from, for messages (e.g. "line 12" or "bytes 0..127").</param>
public sealed record Example(long[] InputIds, long[] AttentionMask, long[]? Labels, long? Label, string Where)
{
    /// <summary>Segment ids (0 first text, 1 the pair), same length as <see cref="InputIds"/>; null: all 0.</summary>
    public long[]? TokenTypeIds { get; init; }

    /// <summary>Regression targets of the sequence (one float per model output value), or null.</summary>
    public float[]? Target { get; init; }
}

/// <summary>The kind of data file.</summary>
public enum DataFormat
{
    /// <summary>Plain text, tokenized byte-level (UTF-8 bytes are the token ids, vocabulary 256).</summary>
    Text,

    /// <summary>One JSON object per line with <c>input_ids</c> (+ <c>attention_mask</c>, <c>labels</c> or <c>label</c>).</summary>
    Jsonl,

    /// <summary>CSV, TSV or JSONL records with text fields, tokenized by a <see cref="Tokenization.TextTokenizer"/>.</summary>
    Records,
}

/// <summary>
/// A list of fixed-length examples read from a data file. Text files are byte-level tokenized and cut into
/// consecutive chunks of the sequence length (the last partial chunk is dropped; labels = input ids, the causal-LM
/// loss shifts them). JSONL lines are padded to the sequence length (pad id 0, mask 0, label positions set to the
/// ignore index); a line longer than the sequence length is an error, not silently truncated.
/// </summary>
public sealed class Dataset
{
    internal Dataset(IReadOnlyList<Example> examples, int sequenceLength, string source, DataFormat format, bool hasExplicitMask)
    {
        Examples = examples;
        SequenceLength = sequenceLength;
        Source = source;
        Format = format;
        HasExplicitMask = hasExplicitMask;
    }

    /// <summary>The examples, in file order.</summary>
    public IReadOnlyList<Example> Examples { get; }

    /// <summary>Length of every example.</summary>
    public int SequenceLength { get; }

    /// <summary>The data file (for messages).</summary>
    public string Source { get; }

    /// <summary>Text or JSONL.</summary>
    public DataFormat Format { get; }

    /// <summary>Whether the file gave attention masks (or padding made them non-trivial).</summary>
    public bool HasExplicitMask { get; }

    /// <summary>Number of examples.</summary>
    public int Count => Examples.Count;

    /// <summary>
    /// Examples are unpadded (each at most <see cref="SequenceLength"/> tokens): a batch is padded to its longest
    /// example (<see cref="BatchLength"/>) with <see cref="PadId"/>.
    /// </summary>
    public bool Ragged { get; init; }

    /// <summary>The token id of padding positions.</summary>
    public long PadId { get; init; }

    /// <summary>The class names of a classification dataset (ids are positions), or null.</summary>
    public LabelMap? Labels { get; init; }

    /// <summary>Token count of each example (for length-bucketed batches); null when all have <see cref="SequenceLength"/>.</summary>
    public IReadOnlyList<int>? Lengths { get; init; }

    /// <summary>
    /// The padded length of a batch of <paramref name="indices"/>: the longest example rounded up to a multiple of 8
    /// (fewer distinct shapes for ORT), at most <see cref="SequenceLength"/>; <see cref="SequenceLength"/> for
    /// padded data.
    /// </summary>
    public int BatchLength(IReadOnlyList<int> indices)
    {
        if (!Ragged || Lengths is null)
        {
            return SequenceLength;
        }

        var longest = indices.Max(i => Lengths[i]);
        return Math.Min(SequenceLength, (longest + 7) / 8 * 8);
    }

    /// <summary>The vocabulary of byte-level text tokens.</summary>
    public const int ByteVocabulary = 256;

    /// <summary>Default ignore index of label positions that carry no loss.</summary>
    public const long DefaultIgnoreIndex = -100;

    /// <summary>Reads <paramref name="path"/>: <c>.jsonl</c>/<c>.json</c> as JSONL, anything else as byte-level text.</summary>
    /// <param name="path">The data file.</param>
    /// <param name="sequenceLength">Sequence length; null for JSONL means the longest line.</param>
    /// <param name="ignoreIndex">Label value of positions without loss.</param>
    public static Dataset Load(string path, int? sequenceLength, long ignoreIndex = DefaultIgnoreIndex)
    {
        var ext = Path.GetExtension(path).ToLowerInvariant();
        return ext is ".jsonl" or ".json" or ".ndjson"
            ? FromJsonl(path, sequenceLength, ignoreIndex)
            : FromTextFile(path, sequenceLength ?? throw new DataException($"{path}: text data needs a sequence length (--seq)"));
    }

    /// <summary>Byte-level text: UTF-8 bytes become token ids 0..255, cut into chunks of <paramref name="sequenceLength"/>.</summary>
    public static Dataset FromTextFile(string path, int sequenceLength)
    {
        var bytes = ReadNonEmpty(path);
        return FromBytes(bytes, sequenceLength, path);
    }

    /// <summary>Byte-level text from memory (e.g. an embedded corpus).</summary>
    public static Dataset FromText(string text, int sequenceLength, string source = "text") =>
        FromBytes(Encoding.UTF8.GetBytes(text), sequenceLength, source);

    private static Dataset FromBytes(byte[] bytes, int sequenceLength, string source)
    {
        if (sequenceLength < 2)
        {
            throw new DataException($"sequence length {sequenceLength} is too short (at least 2 tokens are needed for a next-token loss)");
        }

        if (bytes.Length == 0)
        {
            throw new DataException($"data file '{source}' is empty");
        }

        var count = bytes.Length / sequenceLength;
        if (count == 0)
        {
            throw new DataException($"data file '{source}' has {bytes.Length} bytes, fewer than one sequence of {sequenceLength} tokens (lower --seq)");
        }

        var examples = new Example[count];
        for (var i = 0; i < count; i++)
        {
            var ids = new long[sequenceLength];
            for (var t = 0; t < sequenceLength; t++)
            {
                ids[t] = bytes[(i * sequenceLength) + t];
            }

            var mask = new long[sequenceLength];
            Array.Fill(mask, 1L);
            examples[i] = new Example(ids, mask, ids, null, $"bytes {i * sequenceLength}..{((i + 1) * sequenceLength) - 1}");
        }

        return new Dataset(examples, sequenceLength, source, DataFormat.Text, hasExplicitMask: false);
    }

    /// <summary>
    /// <paramref name="count"/> sequences of uniformly random token ids below <paramref name="vocabulary"/> (seeded), for
    /// benchmarks; labels are the ids themselves.
    /// </summary>
    public static Dataset Synthetic(int count, int sequenceLength, long vocabulary, ulong seed)
    {
        var state = seed;
        var examples = new Example[count];
        for (var i = 0; i < count; i++)
        {
            var ids = new long[sequenceLength];
            for (var t = 0; t < sequenceLength; t++)
            {
                state = (state * 6364136223846793005UL) + 1442695040888963407UL;
                ids[t] = (long)((state >> 33) % (ulong)vocabulary);
            }

            var mask = new long[sequenceLength];
            Array.Fill(mask, 1L);
            examples[i] = new Example(ids, mask, ids, 0, $"synthetic {i}");
        }

        return new Dataset(examples, sequenceLength, "synthetic", DataFormat.Jsonl, hasExplicitMask: false);
    }

    /// <summary>JSONL: one object per line with <c>input_ids</c> and optionally <c>attention_mask</c>, <c>labels</c>, <c>label</c>.</summary>
    /// <remarks>
    /// With <paramref name="targets"/> (seq2seq), every line needs <c>labels</c>, the target sequence, which may be
    /// longer or shorter than <c>input_ids</c>; ids and labels are each padded to the sequence length (the longer of
    /// the two longest when not given). Ids are padded with <paramref name="padId"/>, which also fills a decoder's
    /// inputs past the end of its target.
    /// </remarks>
    public static Dataset FromJsonl(string path, int? sequenceLength, long ignoreIndex = DefaultIgnoreIndex, bool targets = false, long padId = 0)
    {
        ReadNonEmpty(path);
        var rows = new List<(long[] Ids, long[]? Mask, long[]? Labels, long? Label, int Line)>();
        var lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            try
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                {
                    throw new DataException($"{path} line {lineNo}: expected a JSON object");
                }

                if (!root.TryGetProperty("input_ids", out var idsElement))
                {
                    throw new DataException($"{path} line {lineNo}: no 'input_ids'");
                }

                var ids = Ints(idsElement, path, lineNo, "input_ids");
                if (ids.Length == 0)
                {
                    throw new DataException($"{path} line {lineNo}: 'input_ids' is empty");
                }

                var mask = root.TryGetProperty("attention_mask", out var m) ? Ints(m, path, lineNo, "attention_mask") : null;
                var labels = root.TryGetProperty("labels", out var l) ? Ints(l, path, lineNo, "labels") : null;
                long? label = root.TryGetProperty("label", out var c) ? Int(c, path, lineNo, "label") : null;
                if (mask is not null && mask.Length != ids.Length)
                {
                    throw new DataException($"{path} line {lineNo}: 'attention_mask' has {mask.Length} entries, 'input_ids' {ids.Length}");
                }

                if (targets && (labels is null || labels.Length == 0))
                {
                    throw new DataException($"{path} line {lineNo}: no 'labels' (the target sequence a seq2seq model learns)");
                }

                if (!targets && labels is not null && labels.Length != ids.Length)
                {
                    throw new DataException($"{path} line {lineNo}: 'labels' has {labels.Length} entries, 'input_ids' {ids.Length}");
                }

                rows.Add((ids, mask, labels, label, lineNo));
            }
            catch (JsonException e)
            {
                throw new DataException($"{path} line {lineNo}: not valid JSON ({e.Message.Split('.')[0]})", e);
            }
        }

        if (rows.Count == 0)
        {
            throw new DataException($"data file '{path}' has no examples (only blank lines)");
        }

        var seq = sequenceLength ?? rows.Max(r => Math.Max(r.Ids.Length, targets ? r.Labels!.Length : 0));
        var examples = new Example[rows.Count];
        var padded = false;
        for (var i = 0; i < rows.Count; i++)
        {
            var (ids, mask, labels, label, line) = rows[i];
            if (ids.Length > seq)
            {
                throw new DataException($"{path} line {line}: {ids.Length} tokens, longer than the sequence length {seq} (raise --seq or shorten the line)");
            }

            if (targets && labels!.Length > seq)
            {
                throw new DataException($"{path} line {line}: a target of {labels.Length} tokens, longer than the sequence length {seq} (raise --seq or shorten the line)");
            }

            padded |= ids.Length < seq || mask is not null;
            var pIds = new long[seq];
            Array.Fill(pIds, padId);
            var pMask = new long[seq];
            var pLabels = new long[seq];
            Array.Fill(pLabels, ignoreIndex);
            ids.CopyTo(pIds, 0);
            for (var t = 0; t < ids.Length; t++)
            {
                pMask[t] = mask?[t] ?? 1;
                if (!targets)
                    pLabels[t] = labels?[t] ?? (pMask[t] != 0 ? ids[t] : ignoreIndex);
            }

            if (targets)
            {
                labels!.CopyTo(pLabels, 0);
                padded = true;
            }

            examples[i] = new Example(pIds, pMask, pLabels, label, $"line {line}");
        }

        return new Dataset(examples, seq, path, DataFormat.Jsonl, padded) { PadId = padId };
    }

    /// <summary>
    /// Splits off the last <paramref name="evalFraction"/> of the examples (at least one when there are two or more)
    /// as a held-out set; the tail, not a random pick, so that no training chunk overlaps an eval chunk's text.
    /// </summary>
    public (Dataset Train, Dataset Eval) Split(double evalFraction)
    {
        if (evalFraction <= 0 || Count < 2)
        {
            return (this, Slice(0, 0));
        }

        var evalCount = Math.Clamp((int)Math.Round(Count * evalFraction), 1, Count - 1);
        return (Slice(0, Count - evalCount), Slice(Count - evalCount, evalCount));
    }

    /// <summary>Examples <paramref name="start"/>..start+count-1 as a dataset (a view: streamed data stays on disk).</summary>
    public Dataset Slice(int start, int count) =>
        new(new ListSlice<Example>(Examples, start, count), SequenceLength, Source, Format, HasExplicitMask)
        {
            Ragged = Ragged,
            PadId = PadId,
            Labels = Labels,
            Lengths = Lengths is null ? null : new ListSlice<int>(Lengths, start, count),
        };

    /// <summary>
    /// Checks the examples against a model: every token id inside the vocabulary, the sequence length within the
    /// positions table, class labels below the number of classes (each check only where the limit is known).
    /// </summary>
    /// <exception cref="DataException">The first violation, in one line.</exception>
    /// <param name="limits">What the model accepts.</param>
    /// <param name="tokenLabelIgnoreIndex">
    /// When per-token labels feed the loss (causal LM): the label value without loss; every other label must be a token
    /// id of the vocabulary too. Null: per-token labels are not checked.
    /// </param>
    public void Validate(ModelLimits limits, long? tokenLabelIgnoreIndex = null)
    {
        var longest = Ragged && Lengths is { Count: > 0 } ? Lengths.Max() : SequenceLength;
        if (limits.MaxPositions is { } positions && longest > positions)
        {
            throw new DataException($"sequence length {longest} is longer than the model's positions table " +
                $"'{limits.PositionsTable}' ({positions} rows); use --seq {positions} or less");
        }

        if (limits.Vocabulary is { } vocab)
        {
            foreach (var example in Examples)
            {
                for (var t = 0; t < example.InputIds.Length; t++)
                {
                    var id = example.InputIds[t];
                    if (id < 0 || id >= vocab)
                    {
                        var hint = Format == DataFormat.Text
                            ? $"; byte-level text needs a vocabulary of {ByteVocabulary} (bytes are not remapped): use a model with {ByteVocabulary}+ embedding rows or a JSONL file of input_ids"
                            : "";
                        throw new DataException($"{Source} {example.Where}: token id {id} is outside the model's vocabulary of {vocab} " +
                            $"(embedding '{limits.EmbeddingTable}'){hint}");
                    }
                }

                foreach (var label in tokenLabelIgnoreIndex is { } ignore ? example.Labels ?? [] : [])
                {
                    if (label != tokenLabelIgnoreIndex && (label < 0 || label >= vocab))
                    {
                        throw new DataException($"{Source} {example.Where}: label {label} is outside the model's vocabulary of {vocab} " +
                            $"(and is not the ignore index {tokenLabelIgnoreIndex})");
                    }
                }
            }
        }

        if (limits.Classes is { } classes)
        {
            foreach (var example in Examples)
            {
                if (example.Label is { } label && (label < 0 || label >= classes))
                {
                    throw new DataException($"{Source} {example.Where}: label {label} is outside the model's {classes} classes");
                }
            }
        }
    }

    private static byte[] ReadNonEmpty(string path)
    {
        if (Directory.Exists(path))
        {
            throw new DataException($"data path '{path}' is a directory, not a file");
        }

        if (!File.Exists(path))
        {
            throw new DataException($"data file '{path}' does not exist");
        }

        // A FIFO or device would block or never end.
        if (FileChecks.Kind(path) is var kind and not PathKind.File)
        {
            throw new DataException($"data file '{path}' {FileChecks.Describe(kind)}");
        }

        var bytes = File.ReadAllBytes(path);
        if (bytes.Length == 0 || bytes.All(b => b is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t'))
        {
            throw new DataException($"data file '{path}' is empty");
        }

        return bytes;
    }

    private static long[] Ints(JsonElement e, string path, int line, string key)
    {
        if (e.ValueKind != JsonValueKind.Array)
        {
            throw new DataException($"{path} line {line}: '{key}' is not an array of integers");
        }

        var result = new long[e.GetArrayLength()];
        var i = 0;
        foreach (var item in e.EnumerateArray())
        {
            result[i++] = Int(item, path, line, key);
        }

        return result;
    }

    private static long Int(JsonElement e, string path, int line, string key) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out var v)
            ? v
            : throw new DataException($"{path} line {line}: '{key}' holds {e.GetRawText()}, not an integer");
}

/// <summary>A read-only window onto a list.</summary>
internal sealed class ListSlice<T>(IReadOnlyList<T> list, int start, int count) : IReadOnlyList<T>
{
    public T this[int index] => (uint)index < (uint)count ? list[start + index] : throw new ArgumentOutOfRangeException(nameof(index));

    public int Count => count;

    public IEnumerator<T> GetEnumerator()
    {
        for (var i = 0; i < count; i++)
        {
            yield return list[start + i];
        }
    }

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
}

/// <summary>A data file that cannot be used: empty, malformed, or not fitting the model. The message is one line.</summary>
public sealed class DataException : Spt.Runtime.Training.TrainingException
{
    /// <summary>Creates the exception.</summary>
    public DataException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
