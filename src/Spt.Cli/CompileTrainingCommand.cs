using System.CommandLine;
using Spt.Passes.Training;

namespace Spt.Cli;

/// <summary>
/// <c>sptc compile-training MODEL.onnx --out-dir DIR [--loss causal_lm|classify|mse] [--frozen REGEX] ...</c>:
/// writes the training artifacts (training.json, grad.onnx, optimizer.onnx, eval.onnx, checkpoint/state.onnx, and
/// source.onnx, the compiled model, for export) that <c>sptc train DIR</c> runs.
/// </summary>
internal static class CompileTrainingCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<FileInfo>("MODEL") { Description = "The ONNX model to compile for training" };
        var outDir = new Option<string>("--out-dir") { Description = "Directory to write the artifacts into", Required = true };
        var loss = new Option<string?>("--loss") { Description = "causal_lm, classify or mse (default: from the first output's rank)" };
        var lossOutput = new Option<string?>("--loss-output") { Description = "The model output the loss reads (default: the first)" };
        var frozen = new Option<string?>("--frozen") { Description = "Freeze parameters whose names match this regular expression" };
        var ignoreIndex = new Option<long>("--ignore-index") { Description = "Label value without loss", DefaultValueFactory = _ => -100 };
        var pqWeight = new Option<float>("--pq-weight") { Description = "Weight of the PQ codebook loss", DefaultValueFactory = _ => 0.01f };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay", DefaultValueFactory = _ => 0.01f };
        var maxGradNorm = new Option<float>("--max-grad-norm") { Description = "Global gradient-norm clipping (0: off)", DefaultValueFactory = _ => 1.0f };
        var decoderStart = new Option<long>("--decoder-start-id") { Description = "An encoder-decoder's first decoder input (the labels shifted right behind it)", DefaultValueFactory = _ => 0 };
        var command = new Command("compile-training", "Write the training graphs (forward+backward, AdamW, eval) and the initial checkpoint of a model")
        {
            model, outDir, loss, lossOutput, frozen, ignoreIndex, pqWeight, weightDecay, maxGradNorm, decoderStart,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            using var source = ModelFiles.Load(parse.GetRequiredValue(model));
            var options = new TrainingOptions
            {
                Loss = parse.GetValue(loss) is { } l ? TrainingSetup.Loss(l) : null,
                LossOutput = parse.GetValue(lossOutput),
                FrozenPattern = parse.GetValue(frozen),
                IgnoreIndex = parse.GetValue(ignoreIndex),
                PqWeight = parse.GetValue(pqWeight),
                DecoderStartId = parse.GetValue(decoderStart),
                SourceName = parse.GetRequiredValue(model).Name,
                Optimizer = new AdamWOptions { WeightDecay = parse.GetValue(weightDecay), MaxGradNorm = parse.GetValue(maxGradNorm) },
            };
            var dir = parse.GetRequiredValue(outDir);
            var manifest = TrainingSetup.Compile(source, dir, options);
            context.Out.WriteLine(FormattableString.Invariant(
                $"wrote {dir}: loss {manifest.Loss.Kind}, {manifest.Trainable.Count()} trainable / {manifest.Parameters.Count} parameters ({manifest.Trainable.Sum(p => p.ElementCount):N0} trainable values), data inputs {string.Join(", ", manifest.DataInputs.Select(d => d.Name))}"));
            return ExitCodes.Ok;
        }));
        return command;
    }
}
