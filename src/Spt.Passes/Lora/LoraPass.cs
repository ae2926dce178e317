using System.Text.RegularExpressions;
using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Patterns;

namespace Spt.Passes.Lora;

/// <summary>Which Linear layers get LoRA factors, and how.</summary>
public sealed record LoraOptions
{
    /// <summary>Rank r of the factors.</summary>
    public int Rank { get; init; } = 16;

    /// <summary>
    /// Layers to adapt, matched against the weight initializer's name (and, for a weight transposed during
    /// canonicalization, also the original name); null adapts every Linear layer.
    /// </summary>
    public Regex? Include { get; init; }

    /// <summary>Whether the base weight and bias are frozen (listed under <see cref="LoraPass.FrozenKey"/>) or stay trainable.</summary>
    public bool FreezeBase { get; init; } = true;

    /// <summary>Seed for the N(0, 1) initialization of the A factors.</summary>
    public int Seed { get; init; }
}

/// <summary>
/// Adds LoRA factors to Linear layers: <c>y = x·W (+ b)</c> becomes <c>y = x·W (+ b) + (x·A)·B</c> with
/// A [d_in, r] ~ N(0, 1) (seeded) and B [r, d_out] = 0, no alpha/r scaling (as in the SPT reference), so outputs are
/// unchanged at initialization. A Linear layer is what <see cref="Recognition.Linear"/> reads, restricted to MatMul by a
/// 2-D float initializer (run canonicalization first so Gemm is in that form); a MatMul of two activations (attention
/// scores) is not one.
/// <para>
/// The pass records in model metadata which initializers training must leave alone and which it updates:
/// <see cref="FrozenKey"/> (<c>spt.frozen</c>) and <see cref="TrainableKey"/> (<c>spt.trainable</c>), each a
/// comma-separated list of initializer names, appended to when the keys exist.
/// </para>
/// </summary>
public sealed class LoraPass(LoraOptions? options = null) : IPass
{
    /// <summary>Model metadata key: comma-separated names of frozen base initializers.</summary>
    public const string FrozenKey = "spt.frozen";

    /// <summary>Model metadata key: comma-separated names of trainable initializers (LoRA factors, and base weights when not frozen).</summary>
    public const string TrainableKey = "spt.trainable";

    /// <summary>The options in use.</summary>
    public LoraOptions Options { get; } = options ?? new LoraOptions();

    /// <inheritdoc />
    public string Name => "lora";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.Rank, 1);
        var g = model.Graph;
        var editor = g.Edit();
        var rng = new Random(Options.Seed);
        var originals = OriginalNames(model);
        var frozen = new List<string>();
        var trainable = new List<string>();
        int adapted = 0;

        foreach (var mm in g.Nodes.Where(n => n.OpType == "MatMul" && n.IsDefaultDomain).ToList())
        {
            // Prefer the form with the bias so the factor is added after it.
            var root = mm.Outputs[0].Uses is [{ Node: { OpType: "Add" } add }] ? add.Outputs[0] : mm.Outputs[0];
            var m = Recognition.Linear.Match(root);
            if (!m.Success || !ReferenceEquals(m.Match!.Node, mm))
                m = Recognition.Linear.Match(mm.Outputs[0]);
            if (m.Match is not { } lin)
            {
                context.Info(Name, "not a Linear layer: " + m.Reason, mm);
                continue;
            }
            var w = lin.WeightSource.Initializer;
            var weight = ConstantValue.Of(w)!;
            if (weight.ElementType != ElementType.Float || w.Initializer is null || ConstantValue.Of(lin.Input) is not null)
            {
                context.Info(Name, $"not a Linear layer: weight {w.Name} is {weight.ElementType.ShortName()}[{string.Join(",", weight.Dims)}], not a 2-D float32 initializer", mm);
                continue;
            }
            var (dIn, dOut) = lin.Dims;
            var bias = lin.Bias;
            if (Options.Include is { } include && !include.IsMatch(w.Name) && !(originals.TryGetValue(w.Name, out var orig) && include.IsMatch(orig)))
                continue;

            // A rank above min(d_in, d_out) adds parameters without adding capacity (B·A is full rank already).
            if (Options.Rank > Math.Min(dIn, dOut))
                throw OnnxModelException.ForNode(mm, $"LoRA rank {Options.Rank} exceeds min(d_in, d_out) = {Math.Min(dIn, dOut)} of weight '{w.Name}' [{dIn}, {dOut}]; give a rank of at most {Math.Min(dIn, dOut)}");
            var output = bias is not null ? lin.Output : mm.Outputs[0];
            AddFactors(editor, lin.Input, w, dIn, dOut, output, rng, trainable);
            (Options.FreezeBase ? frozen : trainable).Add(w.Name);
            if (bias is not null)
                (Options.FreezeBase ? frozen : trainable).Add(bias.Name);
            adapted++;
        }

        if (adapted == 0)
            return false;
        Append(model, FrozenKey, frozen);
        Append(model, TrainableKey, trainable);
        context.Info(Name, $"added rank-{Options.Rank} LoRA factors to {adapted} Linear layers");
        return true;
    }

    // y -> y + MatMul(MatMul(x, A), B); A [d_in, r], B [r, d_out]
    private void AddFactors(GraphEditor editor, Value x, Value w, long dIn, long dOut, Value y, Random rng, List<string> trainable)
    {
        var g = editor.Graph;
        long r = Options.Rank;
        var aData = new float[dIn * r];
        for (int i = 0; i < aData.Length; i++)
            aData[i] = Normal(rng);
        var a = editor.AddInitializer(Tensor.Create(g.UniqueName(w.Name + "_lora_A"), aData, dIn, r));
        var b = editor.AddInitializer(Tensor.Create(g.UniqueName(w.Name + "_lora_B"), new float[r * dOut], r, dOut));
        trainable.Add(a.Name);
        trainable.Add(b.Name);

        var anchor = y.Producer!;
        string prefix = g.UniqueName(w.Name + "_lora");
        var xa = editor.InsertAfter(anchor, editor.CreateNode("MatMul", [x, a], name: prefix + "/MatMul_A"));   // [.., r]
        var xab = editor.InsertAfter(xa, editor.CreateNode("MatMul", [xa.Outputs[0], b], name: prefix + "/MatMul_B")); // [.., d_out]
        var sum = editor.InsertAfter(xab, editor.CreateNode("Add", [y, xab.Outputs[0]], name: prefix + "/Add"));

        // Every reader of y now reads y + x·A·B.
        foreach (var use in y.Uses.Where(u => !ReferenceEquals(u.Node, sum)).ToList())
            editor.SetInput(use.Node, use.InputIndex, sum.Outputs[0]);
        if (y.IsGraphOutput)
        {
            string name = y.Name;
            for (int i = 0; i < g.Outputs.Count; i++)
            {
                if (ReferenceEquals(g.Outputs[i], y))
                    editor.SetOutput(i, sum.Outputs[0]);
            }
            editor.Rename(y, g.UniqueName(name + "_base"));
            editor.Rename(sum.Outputs[0], name);
        }
    }

    private static Dictionary<string, string> OriginalNames(Model model)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var kv in model.Metadata.Where(kv => kv.Key == Canonicalization.TransposedWeightFolding.MetadataKey))
        {
            foreach (var pair in kv.Value.Split(',', StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = pair.Split('=', 2);
                if (parts.Length == 2)
                    map[parts[0]] = parts[1];
            }
        }
        return map;
    }

    /// <summary>Appends names to a comma-separated metadata list, creating it when absent and skipping names already listed.</summary>
    internal static void Append(Model model, string key, List<string> names)
    {
        if (names.Count == 0)
            return;
        var list = model.Metadata.ToList();
        int i = list.FindIndex(kv => kv.Key == key);
        if (i < 0)
        {
            model.Metadata.Add(new(key, string.Join(",", names)));
            return;
        }
        var existing = list[i].Value.Split(',', StringSplitOptions.RemoveEmptyEntries);
        model.Metadata[i] = new(key, string.Join(",", existing.Concat(names.Where(n => !existing.Contains(n)))));
    }

    /// <summary>The names listed under a metadata key (<see cref="FrozenKey"/> or <see cref="TrainableKey"/>).</summary>
    public static IReadOnlyList<string> ReadList(Model model, string key) =>
        model.Metadata.Where(kv => kv.Key == key).SelectMany(kv => kv.Value.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToList();

    /// <summary>A standard normal draw (Box–Muller) from <paramref name="rng"/>.</summary>
    internal static float Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
    }
}
