using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ScottPlot;

namespace Spt.Cli;

/// <summary>One plotted curve: a metrics field and its (step, value) points.</summary>
internal sealed record PlotSeries(string Name, bool RightAxis, IReadOnlyList<(double Step, double Value)> Points);

/// <summary>
/// Loss and metric curves of a run, drawn with ScottPlot from its metrics JSONL (so a resumed run plots its whole
/// history): training <c>loss</c> and <c>eval_loss</c> on the left axis; <c>eval_accuracy</c>, <c>eval_macro_f1</c>
/// and <c>eval_perplexity</c> on the right. Lines without a finite value for a field (the failure line, non-finite
/// numbers written as strings) are skipped for it.
/// </summary>
internal static class MetricsPlot
{
    /// <summary>Fields on the loss axis, then fields on the metric axis, in legend order.</summary>
    public static readonly string[] LossFields = ["loss", "eval_loss"], MetricFields = ["eval_accuracy", "eval_macro_f1", "eval_perplexity"];

    /// <summary>Pixel size of the image (SVG user units for SVG).</summary>
    public const int Width = 900, Height = 540;

    /// <summary>The plot file of <paramref name="metricsPath"/>: the same name with the format's extension (m.jsonl -> m.png).</summary>
    public static string PathFor(string metricsPath, string format) => Path.ChangeExtension(metricsPath, format);

    /// <summary>The curves in <paramref name="metricsPath"/> (fields with at least one point).</summary>
    public static IReadOnlyList<PlotSeries> Read(string metricsPath)
    {
        var points = LossFields.Concat(MetricFields).ToDictionary(f => f, _ => new List<(double, double)>());
        foreach (var line in File.ReadLines(metricsPath))
        {
            JsonObject? o;
            try
            {
                o = JsonNode.Parse(line) as JsonObject;
            }
            catch (JsonException)
            {
                continue;
            }

            if (o?["step"] is not JsonValue stepValue || !stepValue.TryGetValue<double>(out var step))
            {
                continue;
            }

            foreach (var (field, list) in points)
            {
                if (o[field] is JsonValue v && v.TryGetValue<double>(out var value) && double.IsFinite(value))
                {
                    list.Add((step, value));
                }
            }
        }

        return [.. points.Where(p => p.Value.Count > 0).Select(p => new PlotSeries(p.Key, MetricFields.Contains(p.Key), p.Value))];
    }

    /// <summary>
    /// Draws the curves of <paramref name="metricsPath"/> into <paramref name="plotPath"/> (PNG or SVG by
    /// <paramref name="format"/>); returns what was drawn. The file is written whole or not at all.
    /// </summary>
    public static IReadOnlyList<PlotSeries> Write(string metricsPath, string plotPath, string format, string title)
    {
        var series = Read(metricsPath);
        using var plot = new Plot();
        foreach (var s in series)
        {
            var xs = s.Points.Select(p => p.Step).ToArray();
            var ys = s.Points.Select(p => p.Value).ToArray();
            var curve = plot.Add.Scatter(xs, ys);
            curve.LegendText = s.Name;
            curve.MarkerSize = s.Points.Count > 60 ? 0 : 4;
            if (s.RightAxis)
            {
                curve.Axes.YAxis = plot.Axes.Right;
            }
        }

        plot.Title(title);
        plot.Axes.Bottom.Label.Text = "step";
        plot.Axes.Left.Label.Text = "loss";
        if (series.Any(s => s.RightAxis))
        {
            bool perplexity = series.Any(s => s.Name == "eval_perplexity");
            plot.Axes.Right.Label.Text = perplexity ? "eval metric (perplexity)" : "eval metric";
            if (!perplexity)
            {
                plot.Axes.AutoScale();
                plot.Axes.SetLimitsY(0, 1.05, plot.Axes.Right); // accuracy and macro-F1 on their whole range
            }
        }

        plot.ShowLegend(Alignment.UpperRight);
        var temp = plotPath + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        try
        {
            if (format == "svg")
            {
                File.WriteAllText(temp, plot.GetSvgXml(Width, Height));
            }
            else
            {
                File.WriteAllBytes(temp, plot.GetImageBytes(Width, Height, ImageFormat.Png));
            }

            File.Move(temp, plotPath, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }

        return series;
    }
}
