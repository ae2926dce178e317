using Spt.Runtime.Training;

namespace Spt.Runtime.Tests;

/// <summary>Accuracy and macro-F1 against a confusion matrix worked out by hand.</summary>
public class EvalMetricsTests
{
    [Fact]
    public void Accuracy_and_macro_f1_match_the_hand_computed_confusion_matrix()
    {
        // labels 0 0 0 1 1 2 (and one ignored); predictions (argmax) 0 0 1 1 2 2.
        float[] logits =
        [
            5, 1, 0,   3, 0, 0,   0, 2, 1,   0, 4, 1,   0, 1, 3,   1, 0, 2,   9, 0, 0,
        ];
        var counts = new ClassificationCounts();
        counts.Add(logits, 3, [0, 0, 0, 1, 1, 2, -100], -100);
        Assert.Equal(4.0 / 6, counts.Accuracy!.Value, 12);
        // class 0: TP 2, FP 0, FN 1 -> 4/5; class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: TP 1, FP 1, FN 0 -> 2/3
        Assert.Equal((0.8 + 0.5 + (2.0 / 3)) / 3, counts.MacroF1!.Value, 12);
        Assert.Null(new ClassificationCounts().Accuracy);
    }

    [Fact]
    public void Metric_names_and_directions()
    {
        var r = new EvalResult(1.5, 1.2, 0.75, 0.7, null);
        Assert.Equal(1.2, r.Value("eval_loss"));
        Assert.Equal(0.75, r.Value("accuracy"));
        Assert.Null(r.Value("perplexity"));
        Assert.True(EvalResult.HigherIsBetter("macro_f1"));
        Assert.False(EvalResult.HigherIsBetter("perplexity"));
        Assert.Equal("eval_loss 1.2000, accuracy 0.7500, macro_f1 0.7000", r.ToString());
        Assert.Throws<TrainingException>(() => new TrainerOptions { BestMetric = "bleu" }.Validate());
        Assert.Throws<TrainingException>(() => new TrainerOptions { Patience = 2 }.Validate());
    }
}
