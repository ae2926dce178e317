using System.Text;
using System.Text.Json;

namespace Spt.Runtime.Data;

/// <summary>
/// A CSV, TSV or JSONL file read by record offsets: one pass finds where each record starts and ends (a newline
/// outside double quotes for CSV/TSV, any newline for JSONL), so a record is re-read from disk when needed and the
/// file never has to fit in memory. CSV/TSV follow RFC 4180 (a header row; fields quoted with <c>"</c>, <c>""</c>
/// inside quotes is one quote, quoted fields may hold separators and newlines).
/// </summary>
public sealed class RecordFile : IDisposable
{
    private readonly List<(long Start, int Length, int Line)> _records = [];
    private readonly FileStream _stream;
    private readonly char? _separator;

    private RecordFile(string path, char? separator)
    {
        Path = path;
        _separator = separator;
        _stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        Index();
        if (_separator is { } sep)
        {
            if (_records.Count == 0)
            {
                throw new DataException($"data file '{path}' is empty");
            }

            Columns = SplitFields(ReadText(0), sep);
            _records.RemoveAt(0);
            var duplicate = Columns.GroupBy(c => c, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
            if (duplicate is not null)
            {
                throw new DataException($"{path}: the header names column '{duplicate.Key}' twice");
            }
        }
    }

    /// <summary>The file.</summary>
    public string Path { get; }

    /// <summary>The header's column names (CSV/TSV); null for JSONL.</summary>
    public IReadOnlyList<string>? Columns { get; }

    /// <summary>Number of data records (the header not counted; blank lines skipped).</summary>
    public int Count => _records.Count;

    /// <summary>Opens <paramref name="path"/>: <c>.csv</c> comma-separated, <c>.tsv</c>/<c>.tab</c> tab-separated, else JSONL.</summary>
    public static RecordFile Open(string path)
    {
        if (Directory.Exists(path))
        {
            throw new DataException($"data path '{path}' is a directory, not a file");
        }

        if (!File.Exists(path))
        {
            throw new DataException($"data file '{path}' does not exist");
        }

        var ext = System.IO.Path.GetExtension(path).ToLowerInvariant();
        char? sep = ext switch { ".csv" => ',', ".tsv" or ".tab" => '\t', _ => null };
        return new RecordFile(path, sep);
    }

    /// <summary>Where record <paramref name="index"/> is, for messages ("line 12").</summary>
    public string Where(int index) => $"line {_records[index].Line}";

    /// <summary>
    /// The fields of record <paramref name="index"/>: column → text (CSV/TSV), or property → string value / raw JSON of
    /// a non-string value (JSONL). An empty CSV field is absent.
    /// </summary>
    public IReadOnlyDictionary<string, string> Fields(int index)
    {
        var text = ReadText(index);
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (_separator is { } sep)
        {
            var values = SplitFields(text, sep);
            if (values.Count > Columns!.Count)
            {
                throw new DataException($"{Path} {Where(index)}: {values.Count} fields, the header has {Columns.Count}");
            }

            for (var i = 0; i < values.Count; i++)
            {
                if (values[i].Length > 0)
                {
                    result[Columns[i]] = values[i];
                }
            }

            return result;
        }

        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new DataException($"{Path} {Where(index)}: expected a JSON object");
            }

            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind == JsonValueKind.Null)
                {
                    continue;
                }

                result[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : p.Value.GetRawText();
            }
        }
        catch (JsonException e)
        {
            throw new DataException($"{Path} {Where(index)}: not valid JSON ({e.Message.Split('.')[0]})", e);
        }

        return result;
    }

    /// <summary>The JSON object of record <paramref name="index"/> of a JSONL file, parsed (the caller disposes it).</summary>
    public JsonDocument Json(int index)
    {
        try
        {
            return JsonDocument.Parse(ReadText(index));
        }
        catch (JsonException e)
        {
            throw new DataException($"{Path} {Where(index)}: not valid JSON ({e.Message.Split('.')[0]})", e);
        }
    }

    /// <summary>Splits one CSV/TSV record into fields (RFC 4180 quoting).</summary>
    public static List<string> SplitFields(string record, char separator)
    {
        var fields = new List<string>();
        var field = new StringBuilder();
        var quoted = false;
        for (var i = 0; i < record.Length; i++)
        {
            var c = record[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < record.Length && record[i + 1] == '"')
                {
                    field.Append('"');
                    i++;
                }
                else if (c == '"')
                {
                    quoted = false;
                }
                else
                {
                    field.Append(c);
                }
            }
            else if (c == '"' && field.Length == 0)
            {
                quoted = true;
            }
            else if (c == separator)
            {
                fields.Add(field.ToString());
                field.Clear();
            }
            else if (c is not ('\r' or '\n'))
            {
                field.Append(c);
            }
        }

        fields.Add(field.ToString());
        return fields;
    }

    /// <inheritdoc />
    public void Dispose() => _stream.Dispose();

    private string ReadText(int raw)
    {
        var (start, length, _) = _records[raw];
        var buffer = new byte[length];
        _stream.Seek(start, SeekOrigin.Begin);
        _stream.ReadExactly(buffer);
        return Encoding.UTF8.GetString(buffer);
    }

    // One pass over the bytes: a record ends at '\n' outside quotes (quotes only count for CSV/TSV; '"' is ASCII,
    // so UTF-8 text cannot fake one). Blank records are skipped.
    private void Index()
    {
        var buffer = new byte[1 << 16];
        long offset = 0, start = 0;
        var line = 1;
        var startLine = 1;
        var quoted = false;
        var blank = true;
        int read;
        // A UTF-8 byte-order mark at the start of the file is not data.
        var bom = new byte[3];
        _stream.Seek(0, SeekOrigin.Begin);
        if (_stream.Read(bom, 0, 3) == 3 && bom[0] == 0xEF && bom[1] == 0xBB && bom[2] == 0xBF)
        {
            offset = start = 3;
        }

        _stream.Seek(offset, SeekOrigin.Begin);
        while ((read = _stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            for (var i = 0; i < read; i++, offset++)
            {
                var b = buffer[i];
                if (b == (byte)'"' && _separator is not null)
                {
                    quoted = !quoted;
                }

                if (b == (byte)'\n')
                {
                    line++;
                    if (!quoted)
                    {
                        Add(start, offset, startLine, blank);
                        start = offset + 1;
                        startLine = line;
                        blank = true;
                        continue;
                    }
                }

                if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n'))
                {
                    blank = false;
                }
            }
        }

        Add(start, offset, startLine, blank);
        if (quoted)
        {
            throw new DataException($"{Path} line {startLine}: a quoted field is not closed before the end of the file");
        }
    }

    private void Add(long start, long end, int line, bool blank)
    {
        if (!blank && end > start)
        {
            _records.Add((start, checked((int)(end - start)), line));
        }
    }
}
