using System.Globalization;

namespace Spt.Runtime.Training;

/// <summary>One evaluation over the held-out set.</summary>
/// <param name="Loss">Mean total loss.</param>
/// <param name="TaskLoss">Mean task loss (the eval loss).</param>
/// <param name="Accuracy">Share of examples whose argmax class is the label (classification).</param>
/// <param name="MacroF1">Unweighted mean over classes of 2·TP / (2·TP + FP + FN), over the classes that occur as label or prediction (classification).</param>
/// <param name="Perplexity">exp(task loss) (causal LM).</param>
public sealed record EvalResult(double Loss, double TaskLoss, double? Accuracy, double? MacroF1, double? Perplexity)
{
    /// <summary>Metric names <see cref="Value"/> knows, as <c>--best-metric</c> takes them.</summary>
    public static readonly string[] MetricNames = ["eval_loss", "accuracy", "macro_f1", "perplexity"];

    /// <summary>The value of <paramref name="metric"/>, or null when this evaluation has none.</summary>
    public double? Value(string metric) => metric switch
    {
        "eval_loss" => TaskLoss,
        "accuracy" => Accuracy,
        "macro_f1" => MacroF1,
        "perplexity" => Perplexity,
        _ => throw new TrainingException($"unknown metric '{metric}' (known: {string.Join(", ", MetricNames)})"),
    };

    /// <summary>Whether larger values of <paramref name="metric"/> are better.</summary>
    public static bool HigherIsBetter(string metric) => metric is "accuracy" or "macro_f1";

    /// <summary>"eval_loss 0.41, accuracy 0.875, macro_f1 0.870".</summary>
    public override string ToString() => string.Join(", ", new (string Name, double? V)[]
    {
        ("eval_loss", TaskLoss), ("accuracy", Accuracy), ("macro_f1", MacroF1), ("perplexity", Perplexity),
    }.Where(x => x.V is not null).Select(x => string.Create(CultureInfo.InvariantCulture, $"{x.Name} {x.V:0.0000}")));
}

/// <summary>Counts predictions against labels for accuracy and macro-F1.</summary>
public sealed class ClassificationCounts
{
    private readonly Dictionary<long, (long Tp, long Fp, long Fn)> _classes = [];
    private long _correct;
    private long _seen;

    /// <summary>Adds a batch: logits [batch, classes] (row-major) and the labels; ignored labels do not count.</summary>
    public void Add(ReadOnlySpan<float> logits, int classes, IReadOnlyList<long> labels, long ignoreIndex)
    {
        for (var b = 0; b < labels.Count; b++)
        {
            if (labels[b] == ignoreIndex)
            {
                continue;
            }

            var row = logits.Slice(b * classes, classes);
            var predicted = 0;
            for (var c = 1; c < classes; c++)
            {
                if (row[c] > row[predicted]) predicted = c;
            }

            _seen++;
            if (predicted == labels[b])
            {
                _correct++;
                Bump(predicted, tp: 1);
            }
            else
            {
                Bump(predicted, fp: 1);
                Bump(labels[b], fn: 1);
            }
        }
    }

    /// <summary>Correct / counted, or null before any example.</summary>
    public double? Accuracy => _seen == 0 ? null : (double)_correct / _seen;

    /// <summary>Mean per-class F1 over the classes seen as label or prediction, or null before any example.</summary>
    public double? MacroF1 => _classes.Count == 0 ? null
        : _classes.Values.Average(c => 2.0 * c.Tp / Math.Max(1, (2 * c.Tp) + c.Fp + c.Fn));

    private void Bump(long c, long tp = 0, long fp = 0, long fn = 0)
    {
        var (t, f, n) = _classes.GetValueOrDefault(c);
        _classes[c] = (t + tp, f + fp, n + fn);
    }
}
