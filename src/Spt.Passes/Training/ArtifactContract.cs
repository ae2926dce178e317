using System.Globalization;
using Spt.Ir;

namespace Spt.Passes.Training;

/// <summary>
/// The training-artifact format, written by <see cref="TrainingCompiler"/> and read by the runtime's trainer: file
/// names, the graphs' input and output names, the name prefixes of per-parameter state, and the checkpoint layout.
/// <list type="bullet">
/// <item><c>training.json</c>: the manifest (format <see cref="FormatName"/>, version <see cref="FormatVersion"/>).</item>
/// <item><c>grad.onnx</c>: data inputs + every parameter <c>&lt;p&gt;</c> + <c>grad_acc.&lt;p&gt;</c> per trainable
/// parameter → <c>loss</c>, <c>task_loss</c>, <c>grad_acc_out.&lt;p&gt;</c> (= <c>grad_acc.&lt;p&gt;</c> + d loss / d p).</item>
/// <item><c>optimizer.onnx</c>: <c>lr</c>, <c>step</c> (1-based), <c>grad_scale</c>; per trainable parameter <c>&lt;p&gt;</c>,
/// <c>grad.&lt;p&gt;</c>, <c>m.&lt;p&gt;</c>, <c>v.&lt;p&gt;</c> → <c>new.&lt;p&gt;</c>, <c>new.m.&lt;p&gt;</c>,
/// <c>new.v.&lt;p&gt;</c>, then <c>grad_norm</c>.</item>
/// <item><c>eval.onnx</c>: data inputs + every parameter → <c>loss</c>, <c>task_loss</c>, the model's outputs.</item>
/// <item><c>checkpoint/state.onnx</c>: a model of initializers only: every parameter <c>&lt;p&gt;</c>, and
/// <c>m.&lt;p&gt;</c>, <c>v.&lt;p&gt;</c> per trainable one; metadata <see cref="CheckpointFormatKey"/>,
/// <see cref="StepKey"/> and the trainer's position.</item>
/// </list>
/// </summary>
public static class ArtifactContract
{
    /// <summary>Value of the manifest's <c>format</c> key.</summary>
    public const string FormatName = "sptc-training";

    /// <summary>Manifest format version this build writes and reads.</summary>
    public const int FormatVersion = 1;

    /// <summary>The manifest's file name.</summary>
    public const string ManifestFile = "training.json";

    /// <summary>Forward + loss + backward with gradient accumulation.</summary>
    public const string GradFile = "grad.onnx";

    /// <summary>Forward + loss, Dropout in inference mode.</summary>
    public const string EvalFile = "eval.onnx";

    /// <summary>One AdamW step.</summary>
    public const string OptimizerFile = "optimizer.onnx";

    /// <summary>Directory of the initial checkpoint inside the artifact directory.</summary>
    public const string CheckpointDirectory = "checkpoint";

    /// <summary>A checkpoint's model file (in the artifact's checkpoint directory and in every run checkpoint).</summary>
    public const string CheckpointFile = "state.onnx";

    /// <summary>The initial checkpoint, relative to the artifact directory.</summary>
    public static string InitialCheckpoint => Path.Combine(CheckpointDirectory, CheckpointFile);

    /// <summary>Total loss output of grad.onnx and eval.onnx (task loss plus auxiliary terms).</summary>
    public const string Loss = "loss";

    /// <summary>Task loss output of grad.onnx and eval.onnx.</summary>
    public const string TaskLoss = "task_loss";

    /// <summary>Optimizer input: the learning rate (f32 scalar).</summary>
    public const string LearningRate = "lr";

    /// <summary>Optimizer input: the 1-based step (f32 scalar).</summary>
    public const string Step = "step";

    /// <summary>Optimizer input: the factor applied to the accumulated gradients (f32 scalar).</summary>
    public const string GradScale = "grad_scale";

    /// <summary>Optimizer output: the global norm of the scaled gradients before clipping.</summary>
    public const string GradNorm = "grad_norm";

    /// <summary>Prefix of grad.onnx's running-gradient inputs.</summary>
    public const string AccumulatorPrefix = "grad_acc.";

    /// <summary>Prefix of grad.onnx's running-gradient outputs.</summary>
    public const string AccumulatorOutputPrefix = "grad_acc_out.";

    /// <summary>Prefix of the optimizer's gradient inputs.</summary>
    public const string GradientPrefix = "grad.";

    /// <summary>Prefix of the first AdamW moment (optimizer input and checkpoint tensor).</summary>
    public const string FirstMomentPrefix = "m.";

    /// <summary>Prefix of the second AdamW moment (optimizer input and checkpoint tensor).</summary>
    public const string SecondMomentPrefix = "v.";

    /// <summary>Prefix of the optimizer's updated-state outputs.</summary>
    public const string UpdatedPrefix = "new.";

    /// <summary>Manifest loss kind of <see cref="LossKind.CausalLm"/>.</summary>
    public const string CausalLmLoss = "causal_lm";

    /// <summary>Manifest loss kind of <see cref="LossKind.Classify"/>.</summary>
    public const string ClassifyLoss = "classify";

    /// <summary>Manifest loss kind of <see cref="LossKind.Mse"/>.</summary>
    public const string MseLoss = "mse";

    /// <summary>The manifest name of a loss kind.</summary>
    public static string LossName(LossKind kind) => kind switch
    {
        LossKind.CausalLm => CausalLmLoss,
        LossKind.Classify => ClassifyLoss,
        _ => MseLoss,
    };

    /// <summary>Checkpoint metadata: the checkpoint format version (<see cref="CheckpointFormatVersion"/>).</summary>
    public const string CheckpointFormatKey = "spt.checkpoint.format";

    /// <summary>Checkpoint format version.</summary>
    public const int CheckpointFormatVersion = 1;

    /// <summary>Checkpoint metadata: optimizer steps done.</summary>
    public const string StepKey = "step";

    /// <summary>grad.onnx input of the running gradient sum of <paramref name="parameter"/>.</summary>
    public static string Accumulator(string parameter) => AccumulatorPrefix + parameter;

    /// <summary>grad.onnx output of the running gradient sum of <paramref name="parameter"/>.</summary>
    public static string AccumulatorOutput(string parameter) => AccumulatorOutputPrefix + parameter;

    /// <summary>optimizer.onnx input of the gradient of <paramref name="parameter"/>.</summary>
    public static string Gradient(string parameter) => GradientPrefix + parameter;

    /// <summary>The first AdamW moment of <paramref name="parameter"/>.</summary>
    public static string FirstMoment(string parameter) => FirstMomentPrefix + parameter;

    /// <summary>The second AdamW moment of <paramref name="parameter"/>.</summary>
    public static string SecondMoment(string parameter) => SecondMomentPrefix + parameter;

    /// <summary>optimizer.onnx output of the updated value of <paramref name="state"/> (a parameter or a moment name).</summary>
    public static string Updated(string state) => UpdatedPrefix + state;

    /// <summary>
    /// The parameter whose running gradient grad.onnx input <paramref name="input"/> carries, or null when the name
    /// is not an accumulator input.
    /// </summary>
    public static string? AccumulatedParameter(string input) =>
        input.StartsWith(AccumulatorPrefix, StringComparison.Ordinal) ? input[AccumulatorPrefix.Length..] : null;

    /// <summary>The outputs grad.onnx must have for <paramref name="trainable"/> parameters, in order.</summary>
    public static IEnumerable<string> GradOutputs(IEnumerable<string> trainable) => [Loss, TaskLoss, .. trainable.Select(AccumulatorOutput)];

    /// <summary>The outputs eval.onnx has before the model's own outputs.</summary>
    public static IReadOnlyList<string> EvalLossOutputs { get; } = [Loss, TaskLoss];

    /// <summary>The outputs optimizer.onnx must have for <paramref name="trainable"/> parameters (in order, by parameter then grad_norm).</summary>
    public static IEnumerable<string> OptimizerOutputs(IEnumerable<string> trainable) =>
        [.. trainable.SelectMany(p => new[] { Updated(p), Updated(FirstMoment(p)), Updated(SecondMoment(p)) }), GradNorm];

    /// <summary>
    /// The checkpoint model: a graph of initializers only (<paramref name="tensors"/>: parameters and moments, named
    /// by this contract), metadata <see cref="CheckpointFormatKey"/> first, then <paramref name="metadata"/> in order.
    /// The one builder of checkpoints, for the compiler's initial one and the trainer's.
    /// </summary>
    public static Model BuildCheckpoint(IEnumerable<Tensor> tensors, IEnumerable<KeyValuePair<string, string>> metadata)
    {
        var graph = new Graph("checkpoint");
        var model = new Model(graph) { IrVersion = 8, ProducerName = "sptc" };
        model.SetOpset("", 17);
        var editor = graph.Edit();
        foreach (var tensor in tensors)
        {
            editor.AddInitializer(tensor);
        }

        model.Metadata.Add(new(CheckpointFormatKey, CheckpointFormatVersion.ToString(CultureInfo.InvariantCulture)));
        foreach (var entry in metadata)
        {
            model.Metadata.Add(entry);
        }

        return model;
    }
}
