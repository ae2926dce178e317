using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Autodiff;

namespace Spt.Passes.Training;

/// <summary>The loss attached to a model: its kind, the total and task loss outputs, the data inputs it added.</summary>
/// <param name="Kind">The task loss.</param>
/// <param name="Total">The total loss (task loss plus the weighted PQ term), named <see cref="ArtifactContract.Loss"/>.</param>
/// <param name="Task">The task loss, named <see cref="ArtifactContract.TaskLoss"/>.</param>
/// <param name="Inputs">The data inputs: the model's, then the added labels, label or target.</param>
/// <param name="PqTerms">How many PQLoss terms <paramref name="Total"/> includes.</param>
public sealed record AttachedLoss(LossKind Kind, Value Total, Value Task, IReadOnlyList<DataInput> Inputs, int PqTerms);

/// <summary>
/// Adds the labels input and the loss to a model: causal LM (int64 labels [batch, label_sequence]), classification
/// (int64 label [batch]) or MSE (a float target shaped like the loss output), plus the PQ auxiliary loss when the
/// model has spt::PQEncode nodes and the PQ weight is not 0.
/// </summary>
internal static class LossWiring
{
    /// <summary>
    /// Attaches the loss over <paramref name="output"/> (the kind from the options, else from the output's rank
    /// <paramref name="outputRank"/>: 3 causal LM, 2 classification, otherwise MSE).
    /// </summary>
    public static AttachedLoss Attach(Graph graph, long opset, Value output, int? outputRank, IReadOnlyList<DataInput> dataInputs, TrainingOptions options)
    {
        var kind = options.Loss ?? outputRank switch { 3 => LossKind.CausalLm, 2 => LossKind.Classify, _ => LossKind.Mse };
        var editor = graph.Edit();
        var e = new OpEmitter(graph, opset, "loss");
        Value taskLoss;
        var inputs = dataInputs.ToList();
        switch (kind)
        {
            case LossKind.CausalLm:
                {
                    if (outputRank is { } r && r != 3)
                        throw new OnnxModelException($"output '{output.Name}' has rank {r}; the causal-LM loss needs logits [batch, sequence, vocab]");
                    var batch = BatchDim(output);
                    var labels = editor.AddInput(graph.UniqueName("labels"), new TensorType(ElementType.Int64, [batch, new Dim("label_sequence")]));
                    inputs.Add(new DataInput(labels.Name, ElementType.Int64, [TrainingCompiler.DimText(batch), "label_sequence"], "labels"));
                    taskLoss = Losses.CausalLm(e, output, labels, options.IgnoreIndex);
                    break;
                }
            case LossKind.Classify:
                {
                    if (outputRank is { } r && r != 2 && r != 3)
                        throw new OnnxModelException($"output '{output.Name}' has rank {r}; classification needs logits [batch, classes] or [batch, sequence, classes]");
                    var batch = BatchDim(output);
                    var label = editor.AddInput(graph.UniqueName("label"), new TensorType(ElementType.Int64, [batch]));
                    inputs.Add(new DataInput(label.Name, ElementType.Int64, [TrainingCompiler.DimText(batch)], "label"));
                    taskLoss = Losses.Classification(e, output, outputRank, label, options.IgnoreIndex, options.ClassifyLastToken);
                    break;
                }
            default:
                {
                    var type = output.Type as TensorType ?? new TensorType(ElementType.Float, null);
                    if (type.ElementType != ElementType.Float)
                        throw new OnnxModelException($"output '{output.Name}' is {type.ElementType}; the MSE loss needs a float32 output");
                    var target = editor.AddInput(graph.UniqueName("target"), new TensorType(ElementType.Float, type.Shape));
                    inputs.Add(new DataInput(target.Name, ElementType.Float, type.Shape?.Select(TrainingCompiler.DimText).ToList() ?? [], "target"));
                    taskLoss = Losses.MeanSquaredError(e, output, target);
                    break;
                }
        }

        int pqTerms = 0;
        Value total = taskLoss;
        if (options.PqWeight != 0)
        {
            e.Prefix = "loss/pq";
            var pq = Losses.PQAuxiliary(e, graph);
            if (pq != null)
            {
                pqTerms = graph.Nodes.Count(AttentionOps.PQLoss.Is);
                total = e.Op("Add", taskLoss, e.Op("Mul", pq, e.Scalar(options.PqWeight)));
            }
        }

        var lossOut = editor.AddNode("Identity", [total], name: "loss/total", outputNames: [graph.UniqueName(ArtifactContract.Loss)]).Outputs[0];
        var taskOut = editor.AddNode("Identity", [taskLoss], name: "loss/task", outputNames: [graph.UniqueName(ArtifactContract.TaskLoss)]).Outputs[0];
        if (lossOut.Name != ArtifactContract.Loss || taskOut.Name != ArtifactContract.TaskLoss)
            throw new OnnxModelException($"the model already defines a value named '{ArtifactContract.Loss}' or '{ArtifactContract.TaskLoss}'");
        lossOut.Type = new TensorType(ElementType.Float, []);
        taskOut.Type = new TensorType(ElementType.Float, []);
        return new AttachedLoss(kind, lossOut, taskOut, inputs, pqTerms);
    }

    private static Dim BatchDim(Value output) => output.Shape is { Count: > 0 } s ? s[0] : new Dim("batch");
}
