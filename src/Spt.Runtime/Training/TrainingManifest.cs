using System.Text.Json;
using System.Text.Json.Nodes;
using Spt.Ir;
using Spt.Passes.Training;

namespace Spt.Runtime.Training;

/// <summary>What a data input of the training graphs carries.</summary>
public enum DataRole
{
    /// <summary>Token ids, int64 [batch, sequence].</summary>
    InputIds,

    /// <summary>1 for real tokens, 0 for padding, [batch, sequence].</summary>
    AttentionMask,

    /// <summary>Per-token labels for causal LM, int64 [batch, sequence] (the loss shifts them).</summary>
    Labels,

    /// <summary>One class per sequence, int64 [batch].</summary>
    Label,

    /// <summary>Regression target for MSE, float, shaped like the model's first output.</summary>
    Target,

    /// <summary>Segment ids (0 first text, 1 its pair), [batch, sequence].</summary>
    TokenTypeIds,

    /// <summary>Positions 0, 1, ..., S-1 along the sequence, [batch, sequence].</summary>
    PositionIds,

    /// <summary>A decoder's input tokens: the labels shifted right behind the decoder start id, [batch, sequence].</summary>
    DecoderInputIds,

    /// <summary>A model input the trainer cannot fill from data: training refuses it, naming it.</summary>
    Other,
}

/// <summary>One data input of the training graphs.</summary>
/// <param name="Name">Graph input name.</param>
/// <param name="ElementType">Element type.</param>
/// <param name="Shape">Shape; symbolic dimensions are named <c>batch</c> and <c>sequence</c>.</param>
/// <param name="Role">What the input carries.</param>
public sealed record DataInputSpec(string Name, ElementType ElementType, IReadOnlyList<Dim> Shape, DataRole Role);

/// <summary>One model parameter as the training graphs see it (a graph input of every graph).</summary>
public sealed record ParameterSpec(string Name, ElementType ElementType, IReadOnlyList<long> Shape, bool Trainable)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// The loss baked into grad.onnx and eval.onnx. For <c>causal_lm</c>, <c>labels[b, t]</c> is the target of
/// <c>logits[b, t]</c>: the runtime feeds the next token (labels shifted left by one, the last position set to
/// <see cref="IgnoreIndex"/>), so the graph does not shift.
/// </summary>
public sealed record LossSpec(string Kind, long IgnoreIndex, double PqWeight)
{
    /// <summary>The first decoder input of an encoder-decoder (seq2seq: <c>decoder_input_ids</c> = start, labels[:-1]).</summary>
    public long DecoderStartId { get; init; }
}

/// <summary>The AdamW hyperparameters baked into optimizer.onnx (the learning rate is an input).</summary>
public sealed record OptimizerSpec(double Beta1, double Beta2, double Epsilon, double WeightDecay, double MaxGradNorm);

/// <summary>
/// The manifest <c>training.json</c> of a training-artifact directory (written by <c>sptc compile-training</c>), as
/// the runtime reads it; the directory's layout and names are <see cref="ArtifactContract"/>.
/// </summary>
public sealed class TrainingManifest
{
    /// <summary>The manifest's file name inside the artifact directory.</summary>
    public const string FileName = ArtifactContract.ManifestFile;

    /// <summary>Data inputs, in graph order.</summary>
    public required IReadOnlyList<DataInputSpec> DataInputs { get; init; }

    /// <summary>Every model parameter, frozen and trainable, in a fixed order.</summary>
    public required IReadOnlyList<ParameterSpec> Parameters { get; init; }

    /// <summary>The loss.</summary>
    public required LossSpec Loss { get; init; }

    /// <summary>AdamW hyperparameters baked into the optimizer graph.</summary>
    public required OptimizerSpec Optimizer { get; init; }

    /// <summary>File name of the forward+backward graph.</summary>
    public string GradGraph { get; init; } = ArtifactContract.GradFile;

    /// <summary>File name of the optimizer graph.</summary>
    public string OptimizerGraph { get; init; } = ArtifactContract.OptimizerFile;

    /// <summary>File name of the eval graph.</summary>
    public string EvalGraph { get; init; } = ArtifactContract.EvalFile;

    /// <summary>Path of the initial checkpoint, relative to the artifact directory.</summary>
    public string InitialCheckpoint { get; init; } = ArtifactContract.InitialCheckpoint;

    /// <summary>The source model's outputs, as eval.onnx passes them through.</summary>
    public IReadOnlyList<string> ModelOutputs { get; init; } = [];

    /// <summary>Where the source model came from (file name, path of a copy in the directory, ...); free-form.</summary>
    public JsonObject SourceModel { get; init; } = new();

    /// <summary>The trainable parameters, in manifest order.</summary>
    public IEnumerable<ParameterSpec> Trainable => Parameters.Where(p => p.Trainable);

    /// <summary>The data input with <paramref name="role"/>, or null.</summary>
    public DataInputSpec? Input(DataRole role) => DataInputs.FirstOrDefault(d => d.Role == role);

    /// <summary>Reads <c>DIR/training.json</c>.</summary>
    /// <exception cref="TrainingException">The file is missing or malformed.</exception>
    public static TrainingManifest Load(string directory)
    {
        var path = Path.Combine(directory, FileName);
        if (!File.Exists(path))
        {
            throw new TrainingException($"'{directory}' is not a training-artifact directory: it has no {FileName} (write one with 'sptc compile-training')");
        }

        try
        {
            return Parse(JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new TrainingException($"{path}: not a JSON object"));
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new TrainingException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>Parses the manifest JSON.</summary>
    public static TrainingManifest Parse(JsonObject json)
    {
        var version = json["format_version"]?.GetValue<int>() ?? throw new TrainingException("training.json has no format_version");
        if (version != ArtifactContract.FormatVersion)
        {
            throw new TrainingException($"training.json has format_version {version}; this build reads {ArtifactContract.FormatVersion}");
        }

        var graphs = json["graphs"] as JsonObject;
        var loss = Required<JsonObject>(json, "loss");
        var optimizer = Required<JsonObject>(json, "optimizer");
        var betas = optimizer["betas"] as JsonArray;
        return new TrainingManifest
        {
            DataInputs = [.. Required<JsonArray>(json, "data_inputs").Select(n => new DataInputSpec(
                Str(n!, "name"),
                ParseElementType(Str(n!, "element_type")),
                [.. Required<JsonArray>(n!.AsObject(), "shape").Select(d => d!.GetValueKind() == JsonValueKind.String
                    ? new Dim(d.GetValue<string>()) : new Dim(d.GetValue<long>()))],
                ParseRole(Str(n!, "role"))))],
            Parameters = [.. Required<JsonArray>(json, "parameters").Select(n => new ParameterSpec(
                Str(n!, "name"),
                ParseElementType(Str(n!, "element_type")),
                [.. Required<JsonArray>(n!.AsObject(), "shape").Select(d => d!.GetValue<long>())],
                n!["trainable"]?.GetValue<bool>() ?? throw new TrainingException($"parameter '{Str(n!, "name")}' has no 'trainable'")))],
            Loss = new LossSpec(
                Str(loss, "kind"),
                loss["ignore_index"]?.GetValue<long>() ?? -100,
                loss["pq_weight"]?.GetValue<double>() ?? 0)
            {
                DecoderStartId = loss["decoder_start_id"]?.GetValue<long>() ?? 0,
            },
            Optimizer = new OptimizerSpec(
                betas is { Count: 2 } ? betas[0]!.GetValue<double>() : optimizer["beta1"]?.GetValue<double>() ?? 0.9,
                betas is { Count: 2 } ? betas[1]!.GetValue<double>() : optimizer["beta2"]?.GetValue<double>() ?? 0.999,
                optimizer["eps"]?.GetValue<double>() ?? 1e-8,
                optimizer["weight_decay"]?.GetValue<double>() ?? 0,
                optimizer["max_grad_norm"]?.GetValue<double>() ?? 0),
            GradGraph = GraphFile(graphs, "grad", ArtifactContract.GradFile),
            OptimizerGraph = GraphFile(graphs, "optimizer", ArtifactContract.OptimizerFile),
            EvalGraph = GraphFile(graphs, "eval", ArtifactContract.EvalFile),
            InitialCheckpoint = json["checkpoint"] switch
            {
                JsonObject c => Path.Combine(c["directory"]?.GetValue<string>() ?? ArtifactContract.CheckpointDirectory,
                    c["file"]?.GetValue<string>() ?? ArtifactContract.CheckpointFile),
                JsonValue v => v.GetValue<string>(),
                _ => ArtifactContract.InitialCheckpoint,
            },
            ModelOutputs = (json["model_outputs"] ?? json["source_model"]?["outputs"]) is JsonArray outs ? [.. outs.Select(o => o!.GetValue<string>())] : [],
            SourceModel = json["source_model"] as JsonObject is { } source ? (JsonObject)source.DeepClone() : new JsonObject(),
        };
    }

    /// <summary>The manifest as JSON (the format <see cref="Parse"/> reads).</summary>
    public JsonObject ToJson() => new()
    {
        ["format"] = ArtifactContract.FormatName,
        ["format_version"] = ArtifactContract.FormatVersion,
        ["source_model"] = SourceModel.DeepClone(),
        ["graphs"] = new JsonObject
        {
            ["grad"] = new JsonObject { ["file"] = GradGraph },
            ["optimizer"] = new JsonObject { ["file"] = OptimizerGraph },
            ["eval"] = new JsonObject { ["file"] = EvalGraph },
        },
        ["checkpoint"] = new JsonObject
        {
            ["directory"] = Path.GetDirectoryName(InitialCheckpoint) ?? "",
            ["file"] = Path.GetFileName(InitialCheckpoint),
        },
        ["data_inputs"] = new JsonArray([.. DataInputs.Select(d => (JsonNode)new JsonObject
        {
            ["name"] = d.Name,
            ["element_type"] = ElementTypeName(d.ElementType),
            ["shape"] = new JsonArray([.. d.Shape.Select(s => s.Value is { } v ? JsonValue.Create(v) : (JsonNode?)JsonValue.Create(s.Param ?? "?"))]),
            ["role"] = RoleName(d.Role),
        })]),
        ["loss"] = new JsonObject { ["kind"] = Loss.Kind, ["ignore_index"] = Loss.IgnoreIndex, ["pq_weight"] = Loss.PqWeight, ["decoder_start_id"] = Loss.DecoderStartId },
        ["parameters"] = new JsonArray([.. Parameters.Select(p => (JsonNode)new JsonObject
        {
            ["name"] = p.Name,
            ["element_type"] = ElementTypeName(p.ElementType),
            ["shape"] = new JsonArray([.. p.Shape.Select(s => (JsonNode?)JsonValue.Create(s))]),
            ["trainable"] = p.Trainable,
        })]),
        ["optimizer"] = new JsonObject
        {
            ["kind"] = "adamw",
            ["betas"] = new JsonArray(Optimizer.Beta1, Optimizer.Beta2),
            ["eps"] = Optimizer.Epsilon,
            ["weight_decay"] = Optimizer.WeightDecay,
            ["max_grad_norm"] = Optimizer.MaxGradNorm,
        },
        ["model_outputs"] = new JsonArray([.. ModelOutputs.Select(o => (JsonNode?)JsonValue.Create(o))]),
    };

    /// <summary>Writes <c>DIR/training.json</c>.</summary>
    public void Save(string directory) =>
        File.WriteAllText(Path.Combine(directory, FileName), ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));

    /// <summary>The manifest name of an element type: float, float16, bfloat16, double, int64, int32, bool, ...</summary>
    public static string ElementTypeName(ElementType type) => type switch
    {
        ElementType.Float => "float",
        ElementType.Float16 => "float16",
        ElementType.BFloat16 => "bfloat16",
        ElementType.Double => "double",
        ElementType.Int64 => "int64",
        ElementType.Int32 => "int32",
        ElementType.Bool => "bool",
        ElementType.UInt8 => "uint8",
        ElementType.Int8 => "int8",
        _ => throw new TrainingException($"element type {type.ShortName()} is not supported in training artifacts"),
    };

    /// <summary>Parses a manifest element-type name (also accepts the short names f32, i64, ...).</summary>
    public static ElementType ParseElementType(string name) => name.ToLowerInvariant() switch
    {
        "float" or "float32" or "f32" => ElementType.Float,
        "float16" or "f16" => ElementType.Float16,
        "bfloat16" or "bf16" => ElementType.BFloat16,
        "double" or "float64" or "f64" => ElementType.Double,
        "int64" or "i64" => ElementType.Int64,
        "int32" or "i32" => ElementType.Int32,
        "bool" => ElementType.Bool,
        "uint8" or "u8" => ElementType.UInt8,
        "int8" or "i8" => ElementType.Int8,
        _ => throw new TrainingException($"unknown element type '{name}' in training.json"),
    };

    private static string RoleName(DataRole role) => role switch
    {
        DataRole.InputIds => "input_ids",
        DataRole.AttentionMask => "attention_mask",
        DataRole.Labels => "labels",
        DataRole.Label => "label",
        DataRole.Target => "target",
        DataRole.TokenTypeIds => "token_type_ids",
        DataRole.PositionIds => "position_ids",
        DataRole.DecoderInputIds => "decoder_input_ids",
        DataRole.Other => "other",
        _ => throw new ArgumentOutOfRangeException(nameof(role)),
    };

    private static DataRole ParseRole(string role) => role switch
    {
        "input_ids" => DataRole.InputIds,
        "attention_mask" => DataRole.AttentionMask,
        "labels" => DataRole.Labels,
        "label" => DataRole.Label,
        "target" => DataRole.Target,
        "token_type_ids" => DataRole.TokenTypeIds,
        "position_ids" => DataRole.PositionIds,
        "decoder_input_ids" => DataRole.DecoderInputIds,
        "other" => DataRole.Other,
        _ => throw new TrainingException($"unknown data input role '{role}' in training.json"),
    };

    /// <summary>A graph's file: <c>graphs.NAME</c> is a file name or an object with <c>file</c>.</summary>
    private static string GraphFile(JsonObject? graphs, string name, string defaultFile) => graphs?[name] switch
    {
        JsonObject o => o["file"]?.GetValue<string>() ?? defaultFile,
        JsonValue v => v.GetValue<string>(),
        _ => defaultFile,
    };

    private static T Required<T>(JsonObject json, string key) where T : JsonNode =>
        json[key] as T ?? throw new TrainingException($"training.json: '{key}' is missing or has the wrong type");

    private static string Str(JsonNode node, string key) =>
        node[key]?.GetValue<string>() ?? throw new TrainingException($"training.json: '{key}' is missing in {node.ToJsonString()}");
}
