using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.Ir;

namespace Spt.Cli;

/// <summary><c>sptc inspect MODEL.onnx [--json] [--dump]</c>: what a model is made of.</summary>
internal static class InspectCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<FileInfo>("MODEL") { Description = "The ONNX model to inspect" };
        var json = new Option<bool>("--json") { Description = "Print the summary as JSON, for scripts" };
        var dump = new Option<bool>("--dump") { Description = "Print a stable textual form of the whole graph" };
        var command = new Command("inspect", "Show IR version, opsets, inputs and outputs, op histogram and parameters of a model")
        {
            model, json, dump,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            using var loaded = ModelFiles.Load(parse.GetRequiredValue(model));
            if (parse.GetValue(dump))
            {
                context.Out.Write(GraphPrinter.Print(loaded));
                return ExitCodes.Ok;
            }

            var summary = ModelSummary.Of(loaded);
            if (parse.GetValue(json))
            {
                context.WriteJson(ToJson(summary));
            }
            else
            {
                Render(context.Console, summary);
            }

            return ExitCodes.Ok;
        }));
        return command;
    }

    /// <summary>The JSON form: keys ir_version, opsets, inputs, outputs, nodes, op_histogram, parameters, parameter_bytes, ...</summary>
    internal static JsonObject ToJson(ModelSummary s) => new()
    {
        ["ir_version"] = s.IrVersion,
        ["producer"] = new JsonObject { ["name"] = s.ProducerName, ["version"] = s.ProducerVersion },
        ["graph"] = s.GraphName,
        ["opsets"] = new JsonObject(s.Opsets.Select(o =>
            KeyValuePair.Create(o.Domain.Length == 0 ? "ai.onnx" : o.Domain, (JsonNode?)JsonValue.Create(o.Version)))),
        ["inputs"] = new JsonArray([.. s.Inputs.Select(ValueJson)]),
        ["outputs"] = new JsonArray([.. s.Outputs.Select(ValueJson)]),
        ["nodes"] = s.NodeCount,
        ["nodes_including_subgraphs"] = s.TotalNodeCount,
        ["op_histogram"] = new JsonObject(s.OpHistogram.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
        ["initializers"] = s.InitializerCount,
        ["parameters"] = s.ParameterCount,
        ["parameter_bytes"] = s.ParameterBytes,
        ["external_initializers"] = s.ExternalInitializerCount,
        ["external_parameter_bytes"] = s.ExternalParameterBytes,
        ["subgraphs"] = s.SubgraphCount,
        ["functions"] = s.FunctionCount,
    };

    private static JsonNode ValueJson(ValueSummary v) => new JsonObject
    {
        ["name"] = v.Name,
        ["type"] = v.Type is TensorType t ? t.ElementType.ShortName() : v.TypeText,
        ["shape"] = v.Dims is null ? null : new JsonArray([.. v.Dims.Select(d => (JsonNode?)JsonValue.Create(d))]),
    };

    private static void Render(IAnsiConsole console, ModelSummary s)
    {
        var header = new Grid().AddColumn().AddColumn();
        header.AddRow("[bold]IR version[/]", s.IrVersion.ToString(CultureInfo.InvariantCulture));
        header.AddRow("[bold]opsets[/]", Markup.Escape(string.Join(", ",
            s.Opsets.Select(o => $"{(o.Domain.Length == 0 ? "ai.onnx" : o.Domain)} {o.Version}"))));
        header.AddRow("[bold]producer[/]", Markup.Escape($"{s.ProducerName} {s.ProducerVersion}".Trim()));
        header.AddRow("[bold]nodes[/]", s.TotalNodeCount == s.NodeCount
            ? s.NodeCount.ToString(CultureInfo.InvariantCulture)
            : $"{s.NodeCount} ({s.TotalNodeCount} with {s.SubgraphCount} subgraphs)");
        header.AddRow("[bold]parameters[/]", $"{s.ParameterCount:N0} in {s.InitializerCount} initializers, " +
            $"{Bytes(s.ParameterBytes)}" + (s.ExternalInitializerCount > 0
                ? $" ({s.ExternalInitializerCount} external, {Bytes(s.ExternalParameterBytes)})"
                : ""));
        if (s.FunctionCount > 0)
        {
            header.AddRow("[bold]functions[/]", s.FunctionCount.ToString(CultureInfo.InvariantCulture));
        }

        console.Write(header);

        var io = new Table().AddColumns("", "name", "type").Border(TableBorder.Simple);
        foreach (var v in s.Inputs)
        {
            io.AddRow("input", Markup.Escape(v.Name), Markup.Escape(v.TypeText));
        }

        foreach (var v in s.Outputs)
        {
            io.AddRow("output", Markup.Escape(v.Name), Markup.Escape(v.TypeText));
        }

        console.Write(io);

        var ops = new Table().AddColumns("op", "count").Border(TableBorder.Simple);
        ops.Columns[1].RightAligned();
        foreach (var (op, count) in s.OpHistogram)
        {
            ops.AddRow(Markup.Escape(op), count.ToString(CultureInfo.InvariantCulture));
        }

        console.Write(ops);
    }

    internal static string Bytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F2} MiB",
        >= 1L << 10 => $"{bytes / (double)(1L << 10):F1} KiB",
        _ => $"{bytes} B",
    };
}
