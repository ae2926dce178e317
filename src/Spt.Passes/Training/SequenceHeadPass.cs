using System.Globalization;
using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Autodiff;
using Spt.Passes.Lora;

namespace Spt.Passes.Training;

/// <summary>How a sequence head reduces the hidden states [B, S, D] to one vector per sequence [B, D].</summary>
public enum Pooling
{
    /// <summary>The first position (BERT's [CLS]).</summary>
    Cls,

    /// <summary>The mean over real tokens (attention mask 1; all positions without a mask input).</summary>
    Mean,

    /// <summary>The last real token (position sum(mask) − 1; S − 1 without a mask input), as decoder classifiers do.</summary>
    Last,
}

/// <summary>What <see cref="SequenceHeadPass"/> adds.</summary>
public sealed record SequenceHeadOptions
{
    /// <summary>Outputs per sequence: classes for classification, 1 for regression.</summary>
    public int Outputs { get; init; } = 2;

    /// <summary>Pooling of the hidden states.</summary>
    public Pooling Pooling { get; init; } = Pooling.Cls;

    /// <summary>The hidden-state output to read; null finds one (the first float output of rank 3 with a static width).</summary>
    public string? HiddenOutput { get; init; }

    /// <summary>Name of the new output (default <c>logits</c>, made unique).</summary>
    public string OutputName { get; init; } = "logits";

    /// <summary>Seed of the weight initialization.</summary>
    public int Seed { get; init; }

    /// <summary>Standard deviation of the weight initialization (transformers' <c>initializer_range</c>, 0.02).</summary>
    public float InitStd { get; init; } = 0.02f;
}

/// <summary>
/// Adds a sequence head to a model without one: <c>logits[B, C] = pool(h[B, S, D]) · W[D, C] + b[C]</c>, with W ~
/// N(0, 0.02²) (seeded) and b = 0, as transformers initializes a new classifier. The new output comes first (the
/// loss reads it); the hidden states stay an output. W and b are listed as trainable in the model's
/// <c>spt.trainable</c> metadata when that list exists (a LoRA model trains only the listed parameters), and the
/// head is recorded in <c>spt.head</c> (<c>pooling=cls;outputs=C;hidden=NAME</c>).
/// </summary>
public sealed class SequenceHeadPass(SequenceHeadOptions? options = null) : IPass
{
    /// <summary>Model metadata key describing the added head.</summary>
    public const string HeadKey = "spt.head";

    /// <summary>The options in use.</summary>
    public SequenceHeadOptions Options { get; } = options ?? new SequenceHeadOptions();

    /// <inheritdoc />
    public string Name => "sequence-head";

    /// <summary>The names of the weight and bias initializers the last run added.</summary>
    public (string Weight, string Bias)? Added { get; private set; }

    /// <inheritdoc />
    /// <exception cref="OnnxModelException">No usable hidden-state output, or a bad option.</exception>
    public bool Run(Model model, PassContext context)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (Options.Outputs < 1)
            throw new OnnxModelException($"a sequence head needs at least one output (got --num-labels {Options.Outputs})");
        var g = model.Graph;
        var shapes = new StaticShapes();
        var hidden = FindHidden(g, shapes);
        long width = shapes.LastDim(hidden)!.Value;
        long opset = model.GetOpsetVersion("") ?? throw new OnnxModelException("the model imports no default-domain opset");
        var e = new OpEmitter(g, opset, "head");
        var mask = g.Inputs.FirstOrDefault(v => !v.IsInitializer && v.Name.Contains("mask", StringComparison.OrdinalIgnoreCase)
            && v.Shape is { Count: 2 });

        Value pooled; // [B, D]
        switch (Options.Pooling)
        {
            case Pooling.Cls:
                pooled = e.Op("Gather", [hidden, e.IntScalar(0)], ("axis", 1L));
                break;
            case Pooling.Mean when mask is not null:
                {
                    var m = e.Unsqueeze(e.Cast(mask, ElementType.Float), 2);                 // [B, S, 1]
                    var total = e.ReduceSum(e.Op("Mul", hidden, m), [1], keepDims: false);    // [B, D]
                    var count = e.Op("Max", e.ReduceSum(m, [1], keepDims: false), e.Scalar(1f)); // [B, 1]
                    pooled = e.Op("Div", total, count);
                    break;
                }
            case Pooling.Mean:
                pooled = e.ReduceMean(hidden, [1], keepDims: false);
                break;
            default:
                {
                    // Position of the last real token: sum(mask) - 1, or S - 1; picked with a one-hot product so the
                    // gradient needs no scatter.
                    var length = e.Op("Gather", [e.Shape(hidden), e.Ints(1)], ("axis", 0L));     // [1]
                    var last = mask is null
                        ? e.Op("Expand", e.Op("Sub", length, e.Ints(1)), e.Op("Gather", [e.Shape(hidden), e.Ints(0)], ("axis", 0L)))
                        : e.Op("Max", e.Op("Sub", e.ReduceSum(e.Cast(mask, ElementType.Int64), [1], keepDims: false), e.IntScalar(1)), e.IntScalar(0)); // [B]
                    var onehot = e.Op("OneHot", [last, length, e.Constant("head_onehot", () => Tensor.Create("", [0f, 1f], 2))], ("axis", -1L)); // [B, S]
                    pooled = e.ReduceSum(e.Op("Mul", hidden, e.Unsqueeze(onehot, 2)), [1], keepDims: false);
                    break;
                }
        }

        var editor = g.Edit();
        var rng = new Random(Options.Seed);
        var w = new float[width * Options.Outputs];
        for (var i = 0; i < w.Length; i++)
            w[i] = Options.InitStd * Normal(rng);
        var weight = editor.AddInitializer(Tensor.Create(g.UniqueName("head.weight"), w, width, Options.Outputs)); // [D, C]
        var bias = editor.AddInitializer(Tensor.Create(g.UniqueName("head.bias"), new float[Options.Outputs], Options.Outputs));
        var logits = e.Op("Add", e.Op("MatMul", pooled, weight), bias);                                          // [B, C]
        editor.Rename(logits, g.UniqueName(Options.OutputName));
        var batchDim = hidden.Shape is { Count: > 0 } hs ? hs[0] : new Dim("batch");
        logits.Type = new TensorType(ElementType.Float, [batchDim, new Dim(Options.Outputs)]);

        var outputs = g.Outputs.ToList();
        editor.AddOutput(logits);
        for (var i = 0; i < outputs.Count; i++)
            editor.SetOutput(i + 1, outputs[i]);
        editor.SetOutput(0, logits);

        if (model.Metadata.Any(kv => kv.Key == LoraPass.TrainableKey))
            LoraPass.Append(model, LoraPass.TrainableKey, [weight.Name, bias.Name]);
        model.Metadata.Add(new(HeadKey, string.Create(CultureInfo.InvariantCulture,
            $"pooling={Options.Pooling.ToString().ToLowerInvariant()};outputs={Options.Outputs};hidden={hidden.Name}")));
        Added = (weight.Name, bias.Name);
        context.Info(Name, $"added a {Options.Outputs}-output head on '{hidden.Name}' ({Options.Pooling.ToString().ToLowerInvariant()} pooling, width {width})");
        return true;
    }

    private Value FindHidden(Graph g, StaticShapes shapes)
    {
        bool Usable(Value v) => v.Type is null or TensorType { ElementType: ElementType.Float } && shapes.RankOf(v) == 3 && shapes.LastDim(v) is not null;
        if (Options.HiddenOutput is { } name)
        {
            var named = g.Outputs.FirstOrDefault(o => o.Name == name)
                ?? throw new OnnxModelException($"the model has no output '{name}' (outputs: {string.Join(", ", g.Outputs.Select(o => o.Name))})");
            return Usable(named) ? named
                : throw new OnnxModelException($"output '{name}' is not float hidden states [batch, sequence, width] with a known width");
        }

        return g.Outputs.FirstOrDefault(Usable)
            ?? throw new OnnxModelException($"no output of the model is float hidden states [batch, sequence, width] with a known width " +
                $"(outputs: {string.Join(", ", g.Outputs.Select(o => o.Name))}); name one with --hidden-output");
    }

    private static float Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
    }
}
