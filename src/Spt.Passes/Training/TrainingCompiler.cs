using System.Globalization;
using Spt.Ir;
using Spt.Passes.Autodiff;

namespace Spt.Passes.Training;

/// <summary>
/// Compiles an inference model into the training artifacts (<see cref="ArtifactContract"/>): <c>grad.onnx</c>
/// (forward, loss, backward and on-device gradient accumulation), <c>eval.onnx</c>, <c>optimizer.onnx</c> (AdamW),
/// the initial checkpoint and <c>training.json</c>. Every graph uses stock ONNX ops plus the spt ops only.
/// </summary>
/// <remarks>
/// Parameters and data roles: <see cref="ParameterSelection"/>. Frozen parameters are still graph inputs but get no
/// gradient work. The loss: <see cref="LossWiring"/> (labels for causal_lm, int64 [batch, label_sequence]; label for
/// classify, int64 [batch]; target for mse, shaped like the loss output). eval.onnx runs Dropout in inference mode;
/// grad.onnx keeps the model's Dropout as exported.
/// </remarks>
public static class TrainingCompiler
{
    /// <summary>Compiles and writes the artifact directory; returns the artifacts.</summary>
    public static TrainingArtifacts CompileToDirectory(Model model, string directory, TrainingOptions? options = null)
    {
        var artifacts = Compile(model, options);
        artifacts.Save(directory);
        return artifacts;
    }

    /// <summary>Compiles the training artifacts in memory (the source model is not changed).</summary>
    public static TrainingArtifacts Compile(Model model, TrainingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new TrainingOptions();
        var (work, opset) = PrepareCopy(model);

        var parameters = ParameterSelection.Select(work, options);
        var dataInputs = ParameterSelection.DataInputs(work, parameters);
        var lossOutput = options.LossOutput is { } lo
            ? work.Graph.Outputs.FirstOrDefault(v => v.Name == lo) ?? throw new OnnxModelException($"the model has no output named '{lo}'")
            : work.Graph.Outputs.FirstOrDefault() ?? throw new OnnxModelException("the model has no outputs");
        int? outputRank = new ShapeFacts(work.Graph).Rank(lossOutput);

        var paramValues = ParametersToInputs(work.Graph, parameters);
        var loss = LossWiring.Attach(work.Graph, opset, lossOutput, outputRank, dataInputs, options);
        var eval = EmitEval(work);
        var trainable = parameters.Where(p => p.Trainable).ToList();
        EmitGrad(work.Graph, loss, trainable, paramValues);
        work.Graph.Edit().PruneValueInfos();
        eval.Graph.Edit().PruneValueInfos();

        var optimizer = AdamWGraph.Build([.. trainable.Select(p => (p.Name, p.Shape))], options.Optimizer);
        var checkpoint = InitialCheckpoint(model, parameters);
        return new TrainingArtifacts(work, eval, optimizer, checkpoint, parameters, loss.Inputs, loss.Kind, lossOutput.Name, loss.PqTerms, options, model);
    }

    /// <summary>The parameters of a model (<see cref="ParameterSelection.Select"/>).</summary>
    public static IReadOnlyList<TrainingParameter> SelectParameters(Model model, TrainingOptions? options = null) =>
        ParameterSelection.Select(model, options);

    /// <summary>The data inputs of <paramref name="model"/> with their roles, as training and prediction feed them.</summary>
    public static IReadOnlyList<DataInput> DataInputsOf(Model model) => ParameterSelection.DataInputsOf(model);

    internal static string DimText(Dim d) => d.Value is { } v ? v.ToString(CultureInfo.InvariantCulture) : d.Param ?? "?";

    // A sorted copy at opset 13 or later: opsets 7-12 are upgraded to 13 (the gradient rules are written for it);
    // what cannot be converted is named.
    private static (Model Work, long Opset) PrepareCopy(Model model)
    {
        var work = Model.FromBytes(model.ToBytes(), new LoadOptions { Verify = false });
        work.Graph.Edit().SortTopologically();
        long opset = work.GetOpsetVersion("") ?? throw new OnnxModelException("the model imports no default-domain opset");
        if (Canonicalization.OpsetUpgrade.Applies(work))
        {
            if (Canonicalization.OpsetUpgrade.Problems(work) is { Count: > 0 } problems)
                throw new OnnxModelException($"the model uses opset {opset} and cannot be upgraded to 13: {problems[0]}");
            new Canonicalization.OpsetUpgrade().Run(work, new PassContext());
            opset = Canonicalization.OpsetUpgrade.TargetOpset;
        }
        if (opset < 13)
            throw new OnnxModelException($"the model uses opset {opset}; training graphs need opset {Canonicalization.OpsetUpgrade.OldestOpset} or later");
        return (work, opset);
    }

    // Parameters become graph inputs of the same names (no parameter initializers).
    private static Dictionary<string, Value> ParametersToInputs(Graph graph, IReadOnlyList<TrainingParameter> parameters)
    {
        var editor = graph.Edit();
        var values = new Dictionary<string, Value>(StringComparer.Ordinal);
        foreach (var p in parameters)
        {
            var init = graph.FindValue(p.Name)!;
            var input = editor.AddInput(graph.UniqueName(p.Name + ".input"), ParameterType(p));
            editor.ReplaceAllUsesWith(init, input, replaceGraphOutputs: true);
            if (init.IsGraphInput)
                editor.RemoveInput(init);
            editor.RemoveInitializer(init);
            editor.Rename(input, p.Name);
            values[p.Name] = input;
        }
        return values;
    }

    // eval.onnx: loss, task_loss, then the model outputs; Dropout in inference mode.
    private static Model EmitEval(Model work)
    {
        var eval = Model.FromBytes(work.ToBytes(), new LoadOptions { Verify = false });
        var ed = eval.Graph.Edit();
        var originals = eval.Graph.Outputs.ToList();
        while (eval.Graph.Outputs.Count > 0)
            ed.RemoveOutput(0);
        foreach (var name in ArtifactContract.EvalLossOutputs)
            ed.AddOutput(eval.Graph.FindValue(name)!);
        foreach (var o in originals)
            ed.AddOutput(o);
        foreach (var n in eval.Graph.Nodes.Where(n => n.IsDefaultDomain && n.OpType == "Dropout" && n.Inputs.Count > 2).ToList())
            ed.TruncateInputs(n, 2);
        return eval;
    }

    // grad.onnx: outputs loss, task_loss, grad_acc_out.* (= grad_acc.* + gradient); backward for the trainable parameters.
    private static void EmitGrad(Graph graph, AttachedLoss loss, IReadOnlyList<TrainingParameter> trainable, Dictionary<string, Value> paramValues)
    {
        var editor = graph.Edit();
        while (graph.Outputs.Count > 0)
            editor.RemoveOutput(0);
        editor.AddOutput(loss.Total);
        editor.AddOutput(loss.Task);
        var backward = new BackwardBuilder().Build(graph, loss.Total, [.. trainable.Select(p => paramValues[p.Name])]);
        foreach (var p in trainable)
        {
            var type = ParameterType(p);
            var acc = editor.AddInput(ArtifactContract.Accumulator(p.Name), type);
            var g = backward.Gradients[paramValues[p.Name]];
            var outputName = ArtifactContract.AccumulatorOutput(p.Name);
            var sum = g == null
                ? editor.AddNode("Identity", [acc], name: "grad/acc/" + p.Name, outputNames: [outputName])
                : editor.AddNode("Add", [acc, g], name: "grad/acc/" + p.Name, outputNames: [outputName]);
            sum.Outputs[0].Type = type;
            editor.AddOutput(sum.Outputs[0]);
        }
    }

    private static TensorType ParameterType(TrainingParameter p) => new(p.ElementType, [.. p.Shape.Select(d => new Dim(d))]);

    // The initial checkpoint: the source's parameter values, zero moments, step 0.
    private static Model InitialCheckpoint(Model source, IReadOnlyList<TrainingParameter> parameters)
    {
        var tensors = new List<Tensor>();
        foreach (var p in parameters)
        {
            var t = source.Graph.FindValue(p.Name)!.Initializer!;
            tensors.Add(Tensor.FromRawData(p.Name, t.ElementType, t.Dims, t.GetRawData().ToArray()));
        }
        foreach (var p in parameters.Where(p => p.Trainable))
        {
            long count = p.Shape.Aggregate(1L, (a, b) => a * b);
            tensors.Add(Tensor.Create(ArtifactContract.FirstMoment(p.Name), new float[count], [.. p.Shape]));
            tensors.Add(Tensor.Create(ArtifactContract.SecondMoment(p.Name), new float[count], [.. p.Shape]));
        }
        return ArtifactContract.BuildCheckpoint(tensors, [new(ArtifactContract.StepKey, "0")]);
    }
}
