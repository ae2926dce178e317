using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Autodiff;

namespace Spt.Passes.Training;

/// <summary>A model parameter as recorded in training.json.</summary>
/// <param name="Name">Initializer name in the source model (and input name in the graphs).</param>
/// <param name="ElementType">Element type.</param>
/// <param name="Shape">Static shape.</param>
/// <param name="Trainable">Whether it gets gradients and optimizer state.</param>
public sealed record TrainingParameter(string Name, ElementType ElementType, IReadOnlyList<long> Shape, bool Trainable);

/// <summary>A data input of the training graphs.</summary>
/// <param name="Name">Input name.</param>
/// <param name="ElementType">Element type.</param>
/// <param name="Shape">Dimensions: sizes or symbolic names.</param>
/// <param name="Role">input_ids, attention_mask, labels, label, target, or other.</param>
public sealed record DataInput(string Name, ElementType ElementType, IReadOnlyList<string> Shape, string Role);

/// <summary>What <see cref="TrainingCompiler.Compile"/> produces; <see cref="Save"/> writes the artifact directory.</summary>
public sealed class TrainingArtifacts
{
    internal TrainingArtifacts(Model grad, Model eval, Model optimizer, Model checkpoint, IReadOnlyList<TrainingParameter> parameters,
        IReadOnlyList<DataInput> dataInputs, LossKind loss, string lossOutput, int pqTerms, TrainingOptions options, Model source)
    {
        Grad = grad;
        Eval = eval;
        Optimizer = optimizer;
        Checkpoint = checkpoint;
        Parameters = parameters;
        DataInputs = dataInputs;
        Loss = loss;
        LossOutput = lossOutput;
        PqTerms = pqTerms;
        Options = options;
        _source = source;
    }

    private readonly Model _source;

    /// <summary>Forward + loss + backward (<c>grad.onnx</c>).</summary>
    public Model Grad { get; }

    /// <summary>Forward + loss (<c>eval.onnx</c>).</summary>
    public Model Eval { get; }

    /// <summary>The AdamW step (<c>optimizer.onnx</c>).</summary>
    public Model Optimizer { get; }

    /// <summary>The initial checkpoint (<c>checkpoint/state.onnx</c>).</summary>
    public Model Checkpoint { get; }

    /// <summary>Every parameter, in source initializer order.</summary>
    public IReadOnlyList<TrainingParameter> Parameters { get; }

    /// <summary>The data inputs, source inputs first, then the added label input.</summary>
    public IReadOnlyList<DataInput> DataInputs { get; }

    /// <summary>The task loss.</summary>
    public LossKind Loss { get; }

    /// <summary>The model output the loss reads.</summary>
    public string LossOutput { get; }

    /// <summary>How many PQLoss terms the total loss includes (0 without spt::PQEncode or with pq weight 0).</summary>
    public int PqTerms { get; }

    /// <summary>The options used.</summary>
    public TrainingOptions Options { get; }

    /// <summary>Writes training.json, grad.onnx, optimizer.onnx, eval.onnx and checkpoint/state.onnx into <paramref name="directory"/>.</summary>
    public void Save(string directory)
    {
        Directory.CreateDirectory(directory);
        Directory.CreateDirectory(Path.Combine(directory, TrainingCompiler.CheckpointDirectory));
        Grad.Save(Path.Combine(directory, TrainingCompiler.GradFile));
        Optimizer.Save(Path.Combine(directory, TrainingCompiler.OptimizerFile));
        Eval.Save(Path.Combine(directory, TrainingCompiler.EvalFile));
        Checkpoint.Save(Path.Combine(directory, TrainingCompiler.CheckpointDirectory, TrainingCompiler.CheckpointFile));
        string manifest = Path.Combine(directory, TrainingCompiler.ManifestFile);
        string tmp = manifest + ".tmp";
        File.WriteAllBytes(tmp, ManifestJson());
        File.Move(tmp, manifest, overwrite: true);
    }

    /// <summary>The training.json contents.</summary>
    public byte[] ManifestJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("format", "sptc-training");
            w.WriteNumber("format_version", 1);
            w.WriteStartObject("source_model");
            w.WriteString("name", Options.SourceName ?? _source.Graph.Name);
            w.WriteString("producer", _source.ProducerName);
            w.WriteNumber("opset", _source.GetOpsetVersion("") ?? 0);
            w.WriteNumber("ir_version", _source.IrVersion);
            w.WriteStartArray("outputs");
            foreach (var output in _source.Graph.Outputs)
                w.WriteStringValue(output.Name);
            w.WriteEndArray();
            w.WriteEndObject();

            w.WriteStartArray("data_inputs");
            foreach (var d in DataInputs)
            {
                w.WriteStartObject();
                w.WriteString("name", d.Name);
                w.WriteString("element_type", TypeName(d.ElementType));
                w.WriteStartArray("shape");
                foreach (var s in d.Shape)
                {
                    if (long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long n))
                        w.WriteNumberValue(n);
                    else
                        w.WriteStringValue(s);
                }
                w.WriteEndArray();
                w.WriteString("role", d.Role);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartObject("loss");
            w.WriteString("kind", Loss switch { LossKind.CausalLm => "causal_lm", LossKind.Classify => "classify", _ => "mse" });
            w.WriteString("output", LossOutput);
            w.WriteNumber("ignore_index", Options.IgnoreIndex);
            w.WriteNumber("pq_weight", Options.PqWeight);
            w.WriteNumber("pq_terms", PqTerms);
            if (Loss == LossKind.CausalLm)
                w.WriteString("labels", "labels[b, t] is the target of logits[b, t]: feed input_ids[:, 1:] (L = S - 1) or shifted labels padded with ignore_index (L = S)");
            if (Loss == LossKind.Classify)
                w.WriteString("position", Options.ClassifyLastToken ? "last" : "first");
            w.WriteEndObject();

            w.WriteStartArray("parameters");
            foreach (var p in Parameters)
            {
                w.WriteStartObject();
                w.WriteString("name", p.Name);
                w.WriteString("element_type", TypeName(p.ElementType));
                w.WriteStartArray("shape");
                foreach (var d in p.Shape)
                    w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteBoolean("trainable", p.Trainable);
                w.WriteEndObject();
            }
            w.WriteEndArray();

            w.WriteStartObject("graphs");
            w.WriteStartObject("grad");
            w.WriteString("file", TrainingCompiler.GradFile);
            w.WriteString("inputs", "data inputs, every parameter <name>, grad_acc.<name> per trainable parameter");
            w.WriteString("outputs", "loss, task_loss, grad_acc_out.<name> per trainable parameter (= grad_acc.<name> + d loss / d <name>)");
            w.WriteString("accumulator_input_prefix", TrainingCompiler.AccumulatorPrefix);
            w.WriteString("accumulator_output_prefix", TrainingCompiler.AccumulatorOutputPrefix);
            w.WriteEndObject();
            w.WriteStartObject("eval");
            w.WriteString("file", TrainingCompiler.EvalFile);
            w.WriteString("inputs", "data inputs, every parameter <name>");
            w.WriteString("outputs", "loss, task_loss, then the source model's outputs");
            w.WriteEndObject();
            w.WriteStartObject("optimizer");
            w.WriteString("file", TrainingCompiler.OptimizerFile);
            w.WriteString("inputs", "lr, step (1-based), grad_scale (f32 scalars); per trainable parameter <name>, grad.<name>, m.<name>, v.<name>");
            w.WriteString("outputs", "per trainable parameter new.<name>, new.m.<name>, new.v.<name>; then grad_norm");
            w.WriteEndObject();
            w.WriteEndObject();

            w.WriteStartObject("checkpoint");
            w.WriteString("directory", TrainingCompiler.CheckpointDirectory);
            w.WriteString("file", TrainingCompiler.CheckpointFile);
            w.WriteString("contents", "initializers only: every parameter <name>, m.<name> and v.<name> per trainable parameter; metadata step and trainer state");
            w.WriteEndObject();

            var o = Options.Optimizer;
            w.WriteStartObject("optimizer");
            w.WriteString("kind", "adamw");
            w.WriteNumber("beta1", o.Beta1);
            w.WriteNumber("beta2", o.Beta2);
            w.WriteNumber("eps", o.Epsilon);
            w.WriteNumber("weight_decay", o.WeightDecay);
            w.WriteNumber("max_grad_norm", o.MaxGradNorm);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    internal static string TypeName(ElementType t) => t switch
    {
        ElementType.Float => "float32",
        ElementType.Double => "float64",
        ElementType.Float16 => "float16",
        ElementType.BFloat16 => "bfloat16",
        ElementType.Int64 => "int64",
        ElementType.Int32 => "int32",
        ElementType.Bool => "bool",
        _ => t.ToString().ToLowerInvariant(),
    };
}

/// <summary>
/// Compiles an inference model into the training artifacts: <c>grad.onnx</c> (forward, loss, backward and on-device
/// gradient accumulation), <c>eval.onnx</c>, <c>optimizer.onnx</c> (AdamW), the initial checkpoint and
/// <c>training.json</c>. Every graph uses stock ONNX ops plus the spt ops only.
/// </summary>
/// <remarks>
/// Parameters: the names in the model's <c>spt.trainable</c> metadata (comma-separated) are the trainable ones when
/// it is present, and <c>spt.frozen</c> names are frozen parameters. Otherwise a parameter is a floating-point
/// initializer with more than one element that a MatMul, Gemm, Add, Sub, Mul, Div, LayerNormalization, Gather (as the
/// data of an embedding lookup, rank 2) or an op of another domain (spt, contrib) reads directly or through Transpose/Identity/Cast; shape constants,
/// index tensors, masks (bool) and buffers reached through other ops (rotary frequencies via Unsqueeze) are not.
/// <see cref="TrainingOptions.FrozenPattern"/> freezes matching parameters. Frozen parameters are still graph inputs
/// but get no gradient work. Data roles: of the integer inputs that index an embedding table, the one with the largest
/// table is input_ids, a table of at most 16 rows makes token_type_ids, other tables position_ids; an input named
/// decoder_input_ids is that, one whose name contains "mask" is attention_mask; others are "other" (the trainer
/// refuses them by name rather than feeding zeros). The compiler adds labels (causal_lm, int64
/// [batch, label_sequence]), label (classify, int64 [batch]) or target (mse, shaped like the loss output).
/// eval.onnx runs Dropout in inference mode; grad.onnx keeps the model's Dropout as exported.
/// </remarks>
public static class TrainingCompiler
{
    public const string ManifestFile = "training.json";
    public const string GradFile = "grad.onnx";
    public const string EvalFile = "eval.onnx";
    public const string OptimizerFile = "optimizer.onnx";
    public const string CheckpointDirectory = "checkpoint";
    public const string CheckpointFile = "state.onnx";
    public const string AccumulatorPrefix = "grad_acc.";
    public const string AccumulatorOutputPrefix = "grad_acc_out.";

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
        var work = Model.FromBytes(model.ToBytes(), new LoadOptions { Verify = false });
        work.Graph.Edit().SortTopologically();
        long opset = work.GetOpsetVersion("") ?? throw new OnnxModelException("the model imports no default-domain opset");
        if (Canonicalization.OpsetUpgrade.Applies(work))
        {
            // Opsets 7-12 are upgraded to 13 (the gradient rules are written for it); what cannot be converted is named.
            if (Canonicalization.OpsetUpgrade.Problems(work) is { Count: > 0 } problems)
                throw new OnnxModelException($"the model uses opset {opset} and cannot be upgraded to 13: {problems[0]}");
            new Canonicalization.OpsetUpgrade().Run(work, new PassContext());
            opset = Canonicalization.OpsetUpgrade.TargetOpset;
        }
        if (opset < 13)
            throw new OnnxModelException($"the model uses opset {opset}; training graphs need opset {Canonicalization.OpsetUpgrade.OldestOpset} or later");

        var parameters = SelectParameters(work, options);
        var dataInputs = DetectDataInputs(work, parameters);
        var lossOutputValue = options.LossOutput is { } lo
            ? work.Graph.Outputs.FirstOrDefault(v => v.Name == lo) ?? throw new OnnxModelException($"the model has no output named '{lo}'")
            : work.Graph.Outputs.FirstOrDefault() ?? throw new OnnxModelException("the model has no outputs");
        string lossOutput = lossOutputValue.Name;
        var facts = new ShapeFacts(work.Graph);
        int? outRank = facts.Rank(lossOutputValue);
        var kind = options.Loss ?? outRank switch { 3 => LossKind.CausalLm, 2 => LossKind.Classify, _ => LossKind.Mse };

        // Parameters become graph inputs (no parameter initializers).
        var editor = work.Graph.Edit();
        var paramValues = new Dictionary<string, Value>(StringComparer.Ordinal);
        foreach (var p in parameters)
        {
            var init = work.Graph.FindValue(p.Name)!;
            var input = editor.AddInput(work.Graph.UniqueName(p.Name + ".input"), new TensorType(p.ElementType, [.. p.Shape.Select(d => new Dim(d))]));
            editor.ReplaceAllUsesWith(init, input, replaceGraphOutputs: true);
            if (init.IsGraphInput)
                editor.RemoveInput(init);
            editor.RemoveInitializer(init);
            editor.Rename(input, p.Name);
            paramValues[p.Name] = input;
        }

        // Labels, loss, PQ term.
        var e = new OpEmitter(work.Graph, opset, "loss");
        Value taskLoss;
        var allInputs = dataInputs.ToList();
        switch (kind)
        {
            case LossKind.CausalLm:
                {
                    if (outRank is { } r && r != 3)
                        throw new OnnxModelException($"output '{lossOutput}' has rank {r}; the causal-LM loss needs logits [batch, sequence, vocab]");
                    var batch = BatchDim(lossOutputValue);
                    var labels = editor.AddInput(FreeName(work.Graph, "labels"), new TensorType(ElementType.Int64, [batch, new Dim("label_sequence")]));
                    allInputs.Add(new DataInput(labels.Name, ElementType.Int64, [DimText(batch), "label_sequence"], "labels"));
                    taskLoss = Losses.CausalLm(e, lossOutputValue, labels, options.IgnoreIndex);
                    break;
                }
            case LossKind.Classify:
                {
                    if (outRank is { } r && r != 2 && r != 3)
                        throw new OnnxModelException($"output '{lossOutput}' has rank {r}; classification needs logits [batch, classes] or [batch, sequence, classes]");
                    var batch = BatchDim(lossOutputValue);
                    var label = editor.AddInput(FreeName(work.Graph, "label"), new TensorType(ElementType.Int64, [batch]));
                    allInputs.Add(new DataInput(label.Name, ElementType.Int64, [DimText(batch)], "label"));
                    taskLoss = Losses.Classification(e, lossOutputValue, outRank, label, options.IgnoreIndex, options.ClassifyLastToken);
                    break;
                }
            default:
                {
                    var type = lossOutputValue.Type as TensorType ?? new TensorType(ElementType.Float, null);
                    if (type.ElementType != ElementType.Float)
                        throw new OnnxModelException($"output '{lossOutput}' is {type.ElementType}; the MSE loss needs a float32 output");
                    var target = editor.AddInput(FreeName(work.Graph, "target"), new TensorType(ElementType.Float, type.Shape));
                    allInputs.Add(new DataInput(target.Name, ElementType.Float, type.Shape?.Select(DimText).ToList() ?? [], "target"));
                    taskLoss = Losses.MeanSquaredError(e, lossOutputValue, target);
                    break;
                }
        }
        int pqTerms = 0;
        Value total = taskLoss;
        if (options.PqWeight != 0)
        {
            e.Prefix = "loss/pq";
            var pq = Losses.PQAuxiliary(e, work.Graph);
            if (pq != null)
            {
                pqTerms = work.Graph.Nodes.Count(n => n.Domain == CustomOpLibrary.Domain && n.OpType == "PQLoss");
                total = e.Op("Add", taskLoss, e.Op("Mul", pq, e.Scalar(options.PqWeight)));
            }
        }
        var lossOut = editor.AddNode("Identity", [total], name: "loss/total", outputNames: [FreeName(work.Graph, "loss")]).Outputs[0];
        var taskOut = editor.AddNode("Identity", [taskLoss], name: "loss/task", outputNames: [FreeName(work.Graph, "task_loss")]).Outputs[0];
        if (lossOut.Name != "loss" || taskOut.Name != "task_loss")
            throw new OnnxModelException("the model already defines a value named 'loss' or 'task_loss'");
        lossOut.Type = new TensorType(ElementType.Float, []);
        taskOut.Type = new TensorType(ElementType.Float, []);

        // eval.onnx: loss, task_loss, then the model outputs; Dropout in inference mode.
        var eval = Model.FromBytes(work.ToBytes(), new LoadOptions { Verify = false });
        {
            var ed = eval.Graph.Edit();
            var originals = eval.Graph.Outputs.ToList();
            while (eval.Graph.Outputs.Count > 0)
                ed.RemoveOutput(0);
            ed.AddOutput(eval.Graph.FindValue("loss")!);
            ed.AddOutput(eval.Graph.FindValue("task_loss")!);
            foreach (var o in originals)
                ed.AddOutput(o);
            foreach (var n in eval.Graph.Nodes.Where(n => n.IsDefaultDomain && n.OpType == "Dropout" && n.Inputs.Count > 2).ToList())
                ed.TruncateInputs(n, 2);
        }

        // grad.onnx: outputs loss, task_loss, grad_acc_out.*; backward for the trainable parameters.
        var gradEditor = editor;
        while (work.Graph.Outputs.Count > 0)
            gradEditor.RemoveOutput(0);
        gradEditor.AddOutput(lossOut);
        gradEditor.AddOutput(taskOut);
        var trainable = parameters.Where(p => p.Trainable).ToList();
        var backward = new BackwardBuilder().Build(work.Graph, lossOut, [.. trainable.Select(p => paramValues[p.Name])]);
        foreach (var p in trainable)
        {
            var type = new TensorType(p.ElementType, [.. p.Shape.Select(d => new Dim(d))]);
            var acc = gradEditor.AddInput(AccumulatorPrefix + p.Name, type);
            var g = backward.Gradients[paramValues[p.Name]];
            var sum = g == null
                ? gradEditor.AddNode("Identity", [acc], name: "grad/acc/" + p.Name, outputNames: [AccumulatorOutputPrefix + p.Name])
                : gradEditor.AddNode("Add", [acc, g], name: "grad/acc/" + p.Name, outputNames: [AccumulatorOutputPrefix + p.Name]);
            sum.Outputs[0].Type = type;
            gradEditor.AddOutput(sum.Outputs[0]);
        }
        work.Graph.Edit().PruneValueInfos();
        eval.Graph.Edit().PruneValueInfos();

        var optimizer = AdamWGraph.Build([.. trainable.Select(p => (p.Name, p.Shape))], options.Optimizer);
        var checkpoint = BuildCheckpoint(model, parameters);
        return new TrainingArtifacts(work, eval, optimizer, checkpoint, parameters, allInputs, kind, lossOutput, pqTerms, options, model);
    }

    /// <summary>
    /// Writes an inference model: <paramref name="source"/> with its parameter initializers replaced by the values
    /// in <paramref name="checkpointPath"/> (a state.onnx, or an artifact or checkpoint directory holding one).
    /// </summary>
    public static void ExportInference(Model source, string checkpointPath, string outPath)
    {
        string file = Directory.Exists(checkpointPath)
            ? File.Exists(Path.Combine(checkpointPath, CheckpointFile)) ? Path.Combine(checkpointPath, CheckpointFile) : Path.Combine(checkpointPath, CheckpointDirectory, CheckpointFile)
            : checkpointPath;
        using var state = Model.Load(file, new LoadOptions { Verify = false });
        var copy = Model.FromBytes(source.ToBytes(), new LoadOptions { Verify = false });
        var editor = copy.Graph.Edit();
        int replaced = 0;
        foreach (var init in state.Graph.Initializers)
        {
            var target = copy.Graph.FindValue(init.Name);
            if (target?.Initializer == null)
                continue;
            var t = init.Initializer!;
            if (!t.Dims.SequenceEqual(target.Initializer.Dims) || t.ElementType != target.Initializer.ElementType)
                throw new OnnxModelException($"checkpoint tensor '{init.Name}' is {t.ElementType}[{string.Join(",", t.Dims)}], the model's initializer is {target.Initializer.ElementType}[{string.Join(",", target.Initializer.Dims)}]");
            editor.SetInitializer(target, Tensor.FromRawData(init.Name, t.ElementType, t.Dims, t.GetRawData().ToArray()));
            replaced++;
        }
        if (replaced == 0)
            throw new OnnxModelException($"checkpoint '{file}' holds none of the model's initializers");
        copy.Save(outPath);
    }

    /// <summary>The parameters of a model by the rule in the class remarks, in initializer order.</summary>
    public static IReadOnlyList<TrainingParameter> SelectParameters(Model model, TrainingOptions? options = null)
    {
        options ??= new TrainingOptions();
        var graph = model.Graph;
        var trainableMeta = MetadataNames(model, "spt.trainable");
        var frozenMeta = MetadataNames(model, "spt.frozen") ?? [];
        // RoutedFFN with frozen_base = 1 computes no base-weight gradients: those weights are frozen whatever else says.
        frozenMeta.UnionWith(RoutedFfnFrozenBase(graph));
        var frozenRegex = options.FrozenPattern is { } pat ? new Regex(pat, RegexOptions.CultureInvariant) : null;
        var result = new List<TrainingParameter>();
        foreach (var v in graph.Initializers)
        {
            var t = v.Initializer!;
            bool isFloat = t.ElementType is ElementType.Float or ElementType.Float16 or ElementType.BFloat16 or ElementType.Double;
            bool listed = (trainableMeta?.Contains(v.Name) ?? false) || frozenMeta.Contains(v.Name);
            if (!isFloat || (!listed && (t.ElementCount <= 1 || !ReadAsWeight(v))))
                continue;
            bool trainable = trainableMeta != null ? trainableMeta.Contains(v.Name) : !frozenMeta.Contains(v.Name);
            if (frozenRegex?.IsMatch(v.Name) == true)
                trainable = false;
            if (trainable && t.ElementType != ElementType.Float)
                throw new OnnxModelException($"parameter '{v.Name}' is {t.ElementType}; training supports float32 parameters only");
            result.Add(new TrainingParameter(v.Name, t.ElementType, [.. t.Dims], trainable));
        }
        return result;
    }

    // The initializers behind the base-weight inputs (W1, b1, W2, b2, W3) of RoutedFFN nodes with frozen_base = 1,
    // looking through the Transpose/Identity/Cast that exporters put on weights.
    private static IEnumerable<string> RoutedFfnFrozenBase(Graph graph)
    {
        int[] baseInputs = [RoutedFfnOps.W1, RoutedFfnOps.B1, RoutedFfnOps.W2, RoutedFfnOps.B2, RoutedFfnOps.W3];
        foreach (var node in graph.Nodes)
        {
            if (node.Domain != CustomOpLibrary.Domain || node.OpType != "RoutedFFN" || node.GetInt("frozen_base", 1) != 1)
                continue;
            foreach (var i in baseInputs)
            {
                if (i < node.Inputs.Count && Canonicalization.Rewriting.WeightInitializer(node.Inputs[i]) is { } v)
                    yield return v.Name;
            }
        }
    }

    private static HashSet<string>? MetadataNames(Model model, string key)
    {
        var entry = model.Metadata.FirstOrDefault(kv => kv.Key == key);
        if (entry.Key == null)
            return null;
        return [.. entry.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
    }

    private static readonly HashSet<string> WeightReaders = ["MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "LayerNormalization", "Conv"];

    // Read as a weight directly or through Transpose/Identity/Cast.
    private static bool ReadAsWeight(Value v)
    {
        foreach (var use in v.Uses)
        {
            var n = use.Node;
            if (!n.IsDefaultDomain)
                return true; // spt and contrib ops take their weights as inputs

            if (WeightReaders.Contains(n.OpType))
                return true;
            if (n.OpType == "Gather" && use.InputIndex == 0 && v.Initializer!.Dims.Count == 2)
                return true;
            if (n.OpType is "Transpose" or "Identity" or "Cast" && ReadAsWeight(n.Outputs[0]))
                return true;
        }
        return false;
    }

    /// <summary>The data inputs of <paramref name="model"/> with their roles (rule in the class remarks), as training and prediction feed them.</summary>
    public static IReadOnlyList<DataInput> DataInputsOf(Model model) => DetectDataInputs(model, SelectParameters(model));

    private static List<DataInput> DetectDataInputs(Model model, IReadOnlyList<TrainingParameter> parameters)
    {
        var rowsOf = parameters.Where(p => p.Shape.Count == 2).ToDictionary(p => p.Name, p => p.Shape[0], StringComparer.Ordinal);
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer).ToList();
        // Integer inputs that index an embedding table (a Gather of a 2-D parameter, directly or through a Cast):
        // the one with the largest table carries the tokens, a table of at most 16 rows holds token types
        // (segments), any other table is a positions table.
        var tables = inputs.ToDictionary(v => v, v => GatheredRows(v, rowsOf));
        long largest = tables.Values.Where(r => r is not null).Select(r => r!.Value).DefaultIfEmpty(-1).Max();
        var result = new List<DataInput>();
        foreach (var v in inputs)
        {
            var type = v.Type as TensorType ?? throw new OnnxModelException($"input '{v.Name}' is not a tensor");
            bool integer = type.ElementType is ElementType.Int64 or ElementType.Int32;
            string role = tables[v] is { } rows && integer
                ? rows == largest && !NameSays(v, "position", "token_type", "segment") ? "input_ids" : rows <= 16 ? "token_type_ids" : "position_ids"
                : NameSays(v, "decoder_input_ids") ? "decoder_input_ids"
                : NameSays(v, "mask") ? "attention_mask"
                : integer && NameSays(v, "token_type", "segment") ? "token_type_ids"
                : integer && NameSays(v, "position") ? "position_ids"
                : "other";
            result.Add(new DataInput(v.Name, type.ElementType, type.Shape?.Select(DimText).ToList() ?? [], role));
        }
        return result;
    }

    private static bool NameSays(Value v, params string[] words) => words.Any(w => v.Name.Contains(w, StringComparison.OrdinalIgnoreCase));

    // Rows of the 2-D parameter table that v indexes through Gather (v itself or a Cast of it), or null.
    private static long? GatheredRows(Value v, Dictionary<string, long> rowsOf)
    {
        var indices = new List<Value> { v };
        indices.AddRange(v.Uses.Where(u => u.Node.IsDefaultDomain && u.Node.OpType == "Cast").Select(u => u.Node.Outputs[0]));
        long? rows = null;
        foreach (var index in indices)
        {
            foreach (var use in index.Uses)
            {
                if (use.Node.IsDefaultDomain && use.Node.OpType == "Gather" && use.InputIndex == 1 && use.Node.Inputs[0] is { } table
                    && Canonicalization.Rewriting.WeightInitializer(table) is { } init && rowsOf.TryGetValue(init.Name, out var r))
                {
                    rows = Math.Max(rows ?? 0, r);
                }
            }
        }
        return rows;
    }

    private static Dim BatchDim(Value output) => output.Shape is { Count: > 0 } s ? s[0] : new Dim("batch");

    private static string DimText(Dim d) => d.Value is { } v ? v.ToString(CultureInfo.InvariantCulture) : d.Param ?? "?";

    private static string FreeName(Graph g, string name) => g.UniqueName(name);

    private static Model BuildCheckpoint(Model source, IReadOnlyList<TrainingParameter> parameters)
    {
        var graph = new Graph("checkpoint");
        var model = new Model(graph) { IrVersion = 8, ProducerName = "sptc" };
        model.SetOpset("", 17);
        var ed = graph.Edit();
        foreach (var p in parameters)
        {
            var t = source.Graph.FindValue(p.Name)!.Initializer!;
            ed.AddInitializer(Tensor.FromRawData(p.Name, t.ElementType, t.Dims, t.GetRawData().ToArray()));
        }
        foreach (var p in parameters.Where(p => p.Trainable))
        {
            long count = p.Shape.Aggregate(1L, (a, b) => a * b);
            ed.AddInitializer(Tensor.Create("m." + p.Name, new float[count], [.. p.Shape]));
            ed.AddInitializer(Tensor.Create("v." + p.Name, new float[count], [.. p.Shape]));
        }
        model.Metadata.Add(new("step", "0"));
        model.Metadata.Add(new("spt.checkpoint.format", "1"));
        return model;
    }
}
