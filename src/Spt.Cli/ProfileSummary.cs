using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace Spt.Cli;

/// <summary>
/// Reads ONNX Runtime's per-node profiles (Chrome trace JSON, one file per session) that a bench measurement wrote
/// and sums the kernel time by op type.
/// </summary>
internal static class ProfileSummary
{
    /// <summary>
    /// Sums the <c>*_kernel_time</c> events of every profile file whose name starts with <paramref name="prefix"/>;
    /// returns the files and, per op type, the milliseconds per step, the share of all kernel time and the calls.
    /// </summary>
    public static JsonObject Summarize(string prefix, int steps)
    {
        var dir = Path.GetDirectoryName(prefix)!;
        var files = Directory.GetFiles(dir, Path.GetFileName(prefix) + "*.json").Order(StringComparer.Ordinal).ToArray();
        var byOp = new Dictionary<string, (double Us, long Calls)>(StringComparer.Ordinal);
        foreach (var file in files)
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            var events = doc.RootElement.ValueKind == JsonValueKind.Array ? doc.RootElement
                : doc.RootElement.TryGetProperty("traceEvents", out var t) ? t : default;
            if (events.ValueKind != JsonValueKind.Array)
            {
                continue;
            }

            foreach (var e in events.EnumerateArray())
            {
                if (!e.TryGetProperty("cat", out var cat) || cat.GetString() != "Node"
                    || !e.TryGetProperty("name", out var name) || name.GetString()?.EndsWith("_kernel_time", StringComparison.Ordinal) != true
                    || !e.TryGetProperty("dur", out var dur) || !e.TryGetProperty("args", out var args) || !args.TryGetProperty("op_name", out var op))
                {
                    continue;
                }

                var key = op.GetString() ?? "?";
                var (us, calls) = byOp.GetValueOrDefault(key);
                byOp[key] = (us + dur.GetDouble(), calls + 1);
            }
        }

        var total = byOp.Values.Sum(v => v.Us);
        var ops = new JsonArray();
        foreach (var (op, (us, calls)) in byOp.OrderByDescending(kv => kv.Value.Us))
        {
            ops.Add(new JsonObject
            {
                ["op"] = op,
                ["ms_per_step"] = us / 1000 / Math.Max(steps, 1),
                ["share"] = total > 0 ? us / total : 0,
                ["calls"] = calls,
            });
        }

        return new JsonObject
        {
            ["files"] = new JsonArray([.. files.Select(f => (JsonNode)f)]),
            ["steps"] = steps,
            ["kernel_ms_per_step"] = total / 1000 / Math.Max(steps, 1),
            ["by_op"] = ops,
        };
    }

    /// <summary>Prints the op types that take the most time (the top 12, the rest summed).</summary>
    public static void Print(CliContext context, string title, JsonObject summary)
    {
        var table = new Table().AddColumns("op type", "ms/step", "share", "calls").Title(
            FormattableString.Invariant($"{title}: kernel time {summary["kernel_ms_per_step"]!.GetValue<double>():0.0} ms/step"));
        var ops = summary["by_op"]!.AsArray();
        foreach (var op in ops.Take(12))
        {
            table.AddRow(op!["op"]!.GetValue<string>(),
                op["ms_per_step"]!.GetValue<double>().ToString("0.0", CultureInfo.InvariantCulture),
                op["share"]!.GetValue<double>().ToString("0.0%", CultureInfo.InvariantCulture),
                op["calls"]!.GetValue<long>().ToString(CultureInfo.InvariantCulture));
        }

        if (ops.Count > 12)
        {
            var rest = ops.Skip(12).ToList();
            table.AddRow($"({rest.Count} others)",
                rest.Sum(o => o!["ms_per_step"]!.GetValue<double>()).ToString("0.0", CultureInfo.InvariantCulture),
                rest.Sum(o => o!["share"]!.GetValue<double>()).ToString("0.0%", CultureInfo.InvariantCulture),
                rest.Sum(o => o!["calls"]!.GetValue<long>()).ToString(CultureInfo.InvariantCulture));
        }

        context.Console.Write(table);
    }
}
