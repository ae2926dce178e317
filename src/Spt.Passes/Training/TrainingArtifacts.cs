using System.Globalization;
using System.Text.Json;
using Spt.Ir;

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
        Directory.CreateDirectory(Path.Combine(directory, ArtifactContract.CheckpointDirectory));
        Grad.Save(Path.Combine(directory, ArtifactContract.GradFile));
        Optimizer.Save(Path.Combine(directory, ArtifactContract.OptimizerFile));
        Eval.Save(Path.Combine(directory, ArtifactContract.EvalFile));
        Checkpoint.Save(Path.Combine(directory, ArtifactContract.CheckpointDirectory, ArtifactContract.CheckpointFile));
        string manifest = Path.Combine(directory, ArtifactContract.ManifestFile);
        string tmp = manifest + ".tmp";
        File.WriteAllBytes(tmp, ManifestJson());
        File.Move(tmp, manifest, overwrite: true);
    }

    /// <summary>The training.json contents.</summary>
    public byte[] ManifestJson()
    {
        const string N = "<name>";
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("format", ArtifactContract.FormatName);
            w.WriteNumber("format_version", ArtifactContract.FormatVersion);
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
            w.WriteString("kind", ArtifactContract.LossName(Loss));
            w.WriteString("output", LossOutput);
            w.WriteNumber("ignore_index", Options.IgnoreIndex);
            w.WriteNumber("pq_weight", Options.PqWeight);
            w.WriteNumber("pq_terms", PqTerms);
            w.WriteNumber("decoder_start_id", Options.DecoderStartId);
            if (Loss == LossKind.CausalLm)
                w.WriteString("labels", "labels[b, t] is the target of logits[b, t]: feed input_ids[:, 1:] (L = S - 1) or shifted labels padded with ignore_index (L = S); " +
                    "with a decoder input (seq2seq), the target sequence itself, and decoder_input_ids = decoder_start_id, labels[:, :-1]");
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
            w.WriteString("file", ArtifactContract.GradFile);
            w.WriteString("inputs", $"data inputs, every parameter {N}, {ArtifactContract.Accumulator(N)} per trainable parameter");
            w.WriteString("outputs", $"{ArtifactContract.Loss}, {ArtifactContract.TaskLoss}, {ArtifactContract.AccumulatorOutput(N)} per trainable parameter (= {ArtifactContract.Accumulator(N)} + d loss / d {N})");
            w.WriteString("accumulator_input_prefix", ArtifactContract.AccumulatorPrefix);
            w.WriteString("accumulator_output_prefix", ArtifactContract.AccumulatorOutputPrefix);
            w.WriteEndObject();
            w.WriteStartObject("eval");
            w.WriteString("file", ArtifactContract.EvalFile);
            w.WriteString("inputs", "data inputs, every parameter <name>");
            w.WriteString("outputs", $"{ArtifactContract.Loss}, {ArtifactContract.TaskLoss}, then the source model's outputs");
            w.WriteEndObject();
            w.WriteStartObject("optimizer");
            w.WriteString("file", ArtifactContract.OptimizerFile);
            w.WriteString("inputs", $"{ArtifactContract.LearningRate}, {ArtifactContract.Step} (1-based), {ArtifactContract.GradScale} (f32 scalars); per trainable parameter {N}, {ArtifactContract.Gradient(N)}, {ArtifactContract.FirstMoment(N)}, {ArtifactContract.SecondMoment(N)}");
            w.WriteString("outputs", $"per trainable parameter {string.Join(", ", ArtifactContract.OptimizerOutputs([N]).SkipLast(1))}; then {ArtifactContract.GradNorm}");
            w.WriteEndObject();
            w.WriteEndObject();

            w.WriteStartObject("checkpoint");
            w.WriteString("directory", ArtifactContract.CheckpointDirectory);
            w.WriteString("file", ArtifactContract.CheckpointFile);
            w.WriteString("contents", $"initializers only: every parameter {N}, {ArtifactContract.FirstMoment(N)} and {ArtifactContract.SecondMoment(N)} per trainable parameter; metadata {ArtifactContract.StepKey} and trainer state");
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
