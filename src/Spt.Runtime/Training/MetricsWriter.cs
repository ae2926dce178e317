using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Spt.Runtime.Training;

/// <summary>
/// Metrics as JSONL, one object per step: <c>step</c>, <c>loss</c>, <c>task_loss</c>, <c>lr</c>, <c>grad_norm</c>,
/// <c>tokens_per_s</c>, <c>step_s</c>, and <c>eval_loss</c> (held-out task loss) on evaluation steps; a diverged run
/// ends with <c>{"step", "error"}</c>. A fresh run replaces the file; a resumed run keeps the lines up to its
/// checkpoint's step and appends.
/// </summary>
internal sealed class MetricsWriter : IDisposable
{
    private readonly string _path;
    private StreamWriter? _writer;

    public MetricsWriter(string path)
    {
        _path = Path.GetFullPath(path);
    }

    /// <summary>
    /// Opens the file for a run that starts after <paramref name="resumedStep"/>: 0 replaces the file; otherwise the
    /// lines of steps up to <paramref name="resumedStep"/> are kept (a crashed run may have logged further).
    /// </summary>
    public void Start(long resumedStep)
    {
        _writer?.Dispose();
        Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
        var kept = resumedStep > 0 && File.Exists(_path)
            ? File.ReadLines(_path).Where(l => StepOf(l) is { } s && s <= resumedStep).ToList()
            : [];
        File.WriteAllLines(_path, kept);
        _writer = new StreamWriter(_path, append: true) { AutoFlush = true };
    }

    public void Write(StepReport r)
    {
        var o = new JsonObject
        {
            ["step"] = r.Step,
            ["loss"] = Num(r.Loss),
            ["task_loss"] = Num(r.TaskLoss),
            ["lr"] = Num(r.LearningRate),
            ["grad_norm"] = Num(r.GradNorm),
            ["tokens_per_s"] = Math.Round(r.TokensPerSecond, 1),
            ["step_s"] = Math.Round(r.Seconds, 6),
        };
        if (r.EvalLoss is { } e)
        {
            o["eval_loss"] = Num(e);
        }

        if (r.Eval is { } eval)
        {
            if (eval.Accuracy is { } acc) o["eval_accuracy"] = Num(acc);
            if (eval.MacroF1 is { } f1) o["eval_macro_f1"] = Num(f1);
            if (eval.Perplexity is { } ppl) o["eval_perplexity"] = Num(ppl);
        }

        if (r.Checkpoint is { } c)
        {
            o["checkpoint"] = c;
        }

        Writer.WriteLine(o.ToJsonString());
    }

    public void WriteFailure(long step, string quantity, double value) =>
        Writer.WriteLine(new JsonObject
        {
            ["step"] = step,
            ["error"] = $"{quantity} is {value.ToString(CultureInfo.InvariantCulture)}",
        }.ToJsonString());

    public void Dispose() => _writer?.Dispose();

    private StreamWriter Writer => _writer ?? throw new InvalidOperationException("metrics writer not started");

    private static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(v) : JsonValue.Create(v.ToString(CultureInfo.InvariantCulture));

    private static long? StepOf(string line)
    {
        try
        {
            return JsonNode.Parse(line)?["step"]?.GetValue<long>();
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
