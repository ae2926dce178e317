using System.Text.Json;
using Spt.Runtime.Tokenization;

namespace Spt.Runtime.Data;

/// <summary>What a training, evaluation or prediction run wants from its data file.</summary>
public sealed record DataRequest
{
    /// <summary>The tokenizer for text fields and text files; null: byte-level text, and JSONL must carry input_ids.</summary>
    public TextTokenizer? Tokenizer { get; init; }

    /// <summary>Longest sequence; null: 128 for text, the longest line for pre-tokenized JSONL.</summary>
    public int? SequenceLength { get; init; }

    /// <summary>Text field of CSV/TSV/JSONL records.</summary>
    public string TextField { get; init; } = "text";

    /// <summary>Second text field of a pair, or null.</summary>
    public string? PairField { get; init; }

    /// <summary>Field of the class or regression target.</summary>
    public string LabelField { get; init; } = "label";

    /// <summary>What the records' label field carries.</summary>
    public TargetKind Target { get; init; } = TargetKind.None;

    /// <summary>A label map to keep (resume, eval, predict).</summary>
    public LabelMap? Labels { get; init; }

    /// <summary>Label value without loss.</summary>
    public long IgnoreIndex { get; init; } = Dataset.DefaultIgnoreIndex;

    /// <summary>The pad id of pre-tokenized JSONL (text records pad with the tokenizer's).</summary>
    public long PadId { get; init; }
}

/// <summary>
/// Opens a data file by its kind: <c>.csv</c>/<c>.tsv</c> text records; <c>.jsonl</c>/<c>.json</c>/<c>.ndjson</c>
/// pre-tokenized when the first record has <c>input_ids</c>, else text records; anything else plain text for
/// language modelling (byte-level without a tokenizer, else tokenized and cut into sequences).
/// </summary>
public static class DataFiles
{
    /// <summary>Default sequence length of text data.</summary>
    public const int DefaultTextSequence = 128;

    /// <summary>Reads <paramref name="path"/> as <paramref name="request"/> asks.</summary>
    /// <exception cref="DataException">The file is missing, empty, malformed, or lacks a field or label: one line.</exception>
    public static Dataset Load(string path, DataRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var ext = Path.GetExtension(path).ToLowerInvariant();
        var records = ext is ".csv" or ".tsv" or ".tab" || (ext is ".jsonl" or ".json" or ".ndjson" && !PreTokenized(path));
        if (records)
        {
            if (request.Target == TargetKind.Sequence)
            {
                throw new DataException($"{path} holds text records; seq2seq reads pre-tokenized JSONL: one object per line with 'input_ids' (the source) and 'labels' (the target)");
            }

            var tokenizer = request.Tokenizer ?? throw new DataException(
                $"{path} holds text records ('{request.TextField}' fields): give the model's tokenizer with --tokenizer (tokenizer.json, vocab.txt, vocab.json, .model or gpt2)");
            return TextDataset.Load(path, new TextDataOptions
            {
                Tokenizer = tokenizer,
                SequenceLength = request.SequenceLength ?? DefaultTextSequence,
                TextField = request.TextField,
                PairField = request.PairField,
                LabelField = request.LabelField,
                Target = request.Target,
                Labels = request.Labels,
                IgnoreIndex = request.IgnoreIndex,
            });
        }

        if (ext is ".jsonl" or ".json" or ".ndjson")
        {
            return Dataset.FromJsonl(path, request.SequenceLength, request.IgnoreIndex, targets: request.Target == TargetKind.Sequence, padId: request.PadId);
        }

        if (request.Target != TargetKind.None)
        {
            throw new DataException($"{path}: a plain text file carries no labels; {(request.Target == TargetKind.Class ? "classification" : "regression")} " +
                "reads CSV, TSV or JSONL records with a label field");
        }

        var seq = request.SequenceLength ?? DefaultTextSequence;
        return request.Tokenizer is null or { Kind: TokenizerKind.ByteLevel }
            ? Dataset.FromTextFile(path, seq)
            : TextDataset.LanguageModelText(path, request.Tokenizer, seq);
    }

    // Whether the first non-blank record of a JSONL file has input_ids (token data, not text).
    private static bool PreTokenized(string path)
    {
        if (!File.Exists(path))
        {
            return true; // the JSONL reader reports the missing file
        }

        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            try
            {
                using var doc = JsonDocument.Parse(line);
                return doc.RootElement.ValueKind != JsonValueKind.Object || doc.RootElement.TryGetProperty("input_ids", out _);
            }
            catch (JsonException)
            {
                return true; // the JSONL reader reports the line
            }
        }

        return true;
    }
}
