using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Spt.Runtime.Data;

/// <summary>
/// Class names ↔ class ids of a classification dataset. Integer labels keep their values (names "0".."N-1", N =
/// the largest + 1); any other labels are sorted (ordinal) and numbered 0..N-1. The map travels with the
/// training artifact, the checkpoints and the exported model (metadata <see cref="MetadataKey"/>) so that a
/// prediction prints the names the data used.
/// </summary>
public sealed class LabelMap
{
    private readonly Dictionary<string, long> _ids;

    /// <summary>Creates a map of <paramref name="names"/> (id = position).</summary>
    public LabelMap(IReadOnlyList<string> names)
    {
        Names = names;
        _ids = new Dictionary<string, long>(StringComparer.Ordinal);
        for (var i = 0; i < names.Count; i++)
        {
            if (!_ids.TryAdd(names[i], i))
            {
                throw new DataException($"label map names '{names[i]}' twice");
            }
        }
    }

    /// <summary>Model metadata key (and file <c>labels.json</c> in artifact and checkpoint directories) holding the map.</summary>
    public const string MetadataKey = "spt.labels";

    /// <summary>File name of the map beside an artifact or checkpoint.</summary>
    public const string FileName = "labels.json";

    /// <summary>Names in id order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>Number of classes.</summary>
    public int Count => Names.Count;

    /// <summary>The map of the labels seen in a dataset (rule in the class remarks).</summary>
    public static LabelMap Build(IEnumerable<string> labels)
    {
        var distinct = labels.Distinct(StringComparer.Ordinal).ToList();
        if (distinct.Count > 0 && distinct.All(l => long.TryParse(l, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0))
        {
            var max = distinct.Max(l => long.Parse(l, CultureInfo.InvariantCulture));
            if (max > 1_000_000)
            {
                throw new DataException($"integer label {max} is too large for a class id");
            }

            return new LabelMap([.. Enumerable.Range(0, (int)max + 1).Select(i => i.ToString(CultureInfo.InvariantCulture))]);
        }

        distinct.Sort(StringComparer.Ordinal);
        return new LabelMap(distinct);
    }

    /// <summary>The id of <paramref name="label"/>; <paramref name="where"/> names the row in the error.</summary>
    public long IdOf(string label, string where) =>
        _ids.TryGetValue(label, out var id) ? id
        : _ids.TryGetValue(label.Trim(), out id) ? id
        : throw new DataException($"{where}: label '{label}' is not one of the {Count} known labels ({Preview()})");

    /// <summary>The map as JSON: <c>{"labels": [names in id order]}</c>.</summary>
    public string ToJson() => new JsonObject { ["labels"] = new JsonArray([.. Names.Select(n => (JsonNode?)JsonValue.Create(n))]) }.ToJsonString();

    /// <summary>Parses <see cref="ToJson"/>'s format.</summary>
    public static LabelMap Parse(string json, string source)
    {
        try
        {
            var names = (JsonNode.Parse(json)?["labels"] as JsonArray)?.Select(n => n!.GetValue<string>()).ToList();
            return names is { Count: > 0 } ? new LabelMap(names) : throw new DataException($"{source}: the label map has no 'labels' array");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new DataException($"{source}: the label map is not valid ({e.Message})", e);
        }
    }

    /// <summary>Reads <c>DIR/labels.json</c>, or null when there is none.</summary>
    public static LabelMap? TryLoad(string directory)
    {
        var path = System.IO.Path.Combine(directory, FileName);
        return File.Exists(path) ? Parse(File.ReadAllText(path), path) : null;
    }

    /// <summary>Writes <c>DIR/labels.json</c>.</summary>
    public void Save(string directory) => File.WriteAllText(System.IO.Path.Combine(directory, FileName), ToJson());

    private string Preview() => string.Join(", ", Names.Take(8)) + (Count > 8 ? ", ..." : "");
}
