using Spt.Ir;
using Spt.Passes.Analysis;
using Attribute = Spt.Ir.Attribute;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Upgrades a model of default-domain opset 7 to 12 to opset 13, the lowest the recognizers accept, by rewriting the
/// ops whose signature or meaning changed on the way (in the main graph and in every subgraph):
/// <code>
/// Squeeze/Unsqueeze/ReduceSum(x, axes=a)   -> op(x, a)                     // axes attribute -> input (13)
/// Split(x, split=s)                         -> Split(x, s)                   // (13)
/// Softmax/LogSoftmax/Hardmax(x, axis=k)     -> op(x, axis=-1) when k is the last axis, else
///                                              Reshape(op(Flatten(x, k), axis=-1), Shape(x))   // 2-D coercion (&lt; 13)
/// Slice(x, starts, ends, axes attributes)   -> Slice(x, starts, ends, axes)  // (10)
/// TopK(x, k=n)                              -> TopK(x, [n])                  // (10)
/// Clip(x, min=a, max=b)                     -> Clip(x, a, b)                 // (11)
/// Pad(x, pads=p, value=c)                   -> Pad(x, p, c)                  // (11)
/// Dropout(x, ratio=r)                       -> Dropout(x, r)                 // (12)
/// Upsample(x, scales), Resize-10(x, scales) -> Resize(x, "", scales, coordinate_transformation_mode=asymmetric,
///                                              nearest_mode=floor)           // (10, 11)
/// BatchNormalization(spatial=1)             -> BatchNormalization            // spatial goes (9)
/// Scatter                                   -> ScatterElements               // (11)
/// </code>
/// Every other default-domain op of opsets 7-12 means the same at opset 13 (later versions only added types,
/// attributes with the old default, or negative axes). What cannot be converted is named by <see cref="Problems"/>;
/// <see cref="Run"/> must not be called on such a model.
/// </summary>
public sealed class OpsetUpgrade : IPass
{
    /// <summary>The opset models are upgraded to.</summary>
    public const int TargetOpset = 13;

    /// <summary>The oldest default-domain opset the pass converts.</summary>
    public const int OldestOpset = 7;

    /// <inheritdoc />
    public string Name => "opset-upgrade";

    /// <summary>Whether <paramref name="model"/> is one this pass upgrades (default-domain opset 7 to 12).</summary>
    public static bool Applies(Model model) => model.GetOpsetVersion("") is >= OldestOpset and < TargetOpset;

    /// <summary>
    /// What the pass cannot convert in <paramref name="model"/>, one line per node (op, name, why); empty when the
    /// whole model converts. Pure.
    /// </summary>
    public static IReadOnlyList<string> Problems(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var problems = new List<string>();
        if (model.GetOpsetVersion("") is not { } opset || opset < OldestOpset || opset >= TargetOpset)
            return problems;
        foreach (var n in model.Graph.AllNodes().Where(n => n.IsDefaultDomain))
        {
            if (Problem(n, opset) is { } why)
                problems.Add($"{n.OpType} '{(n.Name.Length > 0 ? n.Name : "<unnamed>")}': {why}");
        }
        return problems;
    }

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        if (!Applies(model))
            return false;
        long opset = model.GetOpsetVersion("")!.Value;
        if (Problems(model) is { Count: > 0 } problems)
            throw new InvalidOperationException("opset upgrade run on a model it cannot convert: " + problems[0]);
        var graphs = new List<Graph> { model.Graph };
        graphs.AddRange(model.Graph.AllSubgraphs());
        int converted = 0;
        foreach (var g in graphs)
        {
            var editor = g.Edit();
            // Ranks of the Softmax inputs, read before any edit (the shape analysis memoizes).
            var shapes = new StaticShapes();
            var ranks = g.Nodes.Where(n => n.IsDefaultDomain && n.OpType is "Softmax" or "LogSoftmax" or "Hardmax")
                .ToDictionary(n => n, n => shapes.RankOf(n.Inputs[0]!));
            foreach (var n in g.Nodes.Where(n => n.IsDefaultDomain).ToList())
                converted += Convert(editor, n, opset, ranks) ? 1 : 0;
        }
        model.SetOpset("", TargetOpset);
        model.IrVersion = Math.Max(model.IrVersion, 7); // opset 13 belongs to IR version 7
        context.Info(Name, $"upgraded default-domain opset {opset} to {TargetOpset} ({converted} node(s) rewritten)");
        return true;
    }

    // Ops retired before opset 13 that have no equivalent here (experimental ops of opset 1 that exporters of 7+
    // may still write).
    private static readonly HashSet<string> Retired =
        ["ImageScaler", "Crop", "ScaledTanh", "ParametricSoftplus", "Affine", "GivenTensorFill", "ConstantFill", "DynamicSlice", "GRUUnit", "ATen"];

    private static string? Problem(Node n, long opset)
    {
        if (Retired.Contains(n.OpType))
            return $"an experimental op with no opset-{TargetOpset} equivalent";
        switch (n.OpType)
        {
            case "Scan" when opset < 9:
                return "the opset-8 Scan (batch axis, sequence_lens input) has another signature than Scan-9";
            case "BatchNormalization" when opset < 9 && n.GetInt("spatial", 1) == 0:
                return "spatial=0 (statistics per element) has no opset-9 form";
            case "Clip" when opset < 11 && (n.Attributes.Contains("min") || n.Attributes.Contains("max")) && FloatType(n.Inputs[0]) is null:
                return "the element type of its input is unknown, so its min/max cannot become inputs";
            case "Pad" when opset < 11 && n.GetFloat("value", 0f) != 0f && FloatType(n.Inputs[0]) is null:
                return "the element type of its input is unknown, so its pad value cannot become an input";
            case "Dropout" when opset < 10 && n.Outputs.Count > 1 && (n.Outputs[1].Uses.Count > 0 || n.Outputs[1].IsGraphOutput):
                return "its mask output (of the data type before opset 10, bool after) is read";
            case "Upsample" or "Resize" when n.GetString("mode", "nearest") is not ("nearest" or "linear" or "bilinear") && (n.OpType == "Upsample" || opset < 11):
                return $"mode '{n.GetString("mode")}' is not one of nearest, linear";
            default:
                return null;
        }
    }

    private static ElementType? FloatType(Value? v) =>
        v is not null && ShapeAnalysis.ElementTypeOf(v) is { } t && t.IsFloatingPoint() ? t : null;

    private static bool Convert(GraphEditor editor, Node n, long opset, Dictionary<Node, int?> ranks)
    {
        var g = editor.Graph;
        string prefix = n.Name.Length > 0 ? n.Name : n.OpType.ToLowerInvariant();
        Value Ints(string what, IEnumerable<long> values)
        {
            long[] v = [.. values];
            return editor.AddInitializer(Tensor.Create(g.UniqueName($"{prefix}/{what}"), v, v.Length));
        }
        Value Scalar(string what, ElementType type, double value) =>
            editor.AddInitializer(new ConstArray(type, [], null, [value]).ToTensor(g.UniqueName($"{prefix}/{what}")));

        // op(x, attr=a) -> op(x, a) for an int-list attribute that became an optional input right after the data.
        bool AttributeToInput(string attr)
        {
            if (n.GetInts(attr) is not { } values)
                return false;
            n.Attributes.Remove(attr);
            editor.TruncateInputs(n, 1);
            editor.AddInput(n, Ints(attr, values));
            return true;
        }

        switch (n.OpType)
        {
            case "Squeeze" or "Unsqueeze" when opset < 13:
                return AttributeToInput("axes");
            case "ReduceSum" when opset < 13:
                return AttributeToInput("axes");
            case "Split" when opset < 13:
                return AttributeToInput("split");
            case "Softmax" or "LogSoftmax" or "Hardmax" when opset < 13:
                return CoercedSoftmax(editor, n, ranks.GetValueOrDefault(n));
            case "Slice" when opset < 10:
            {
                // Slice-1: starts, ends, axes attributes (axes optional) -> inputs 1, 2, 3.
                var starts = n.GetInts("starts") ?? [];
                var ends = n.GetInts("ends") ?? [];
                var axes = n.GetInts("axes");
                foreach (var a in new[] { "starts", "ends", "axes" })
                    n.Attributes.Remove(a);
                editor.TruncateInputs(n, 1);
                editor.AddInput(n, Ints("starts", starts));
                editor.AddInput(n, Ints("ends", ends));
                if (axes is not null)
                    editor.AddInput(n, Ints("axes", axes));
                return true;
            }
            case "TopK" when opset < 10:
            {
                long k = n.GetInt("k", 0);
                n.Attributes.Remove("k");
                editor.TruncateInputs(n, 1);
                editor.AddInput(n, Ints("k", [k]));
                return true;
            }
            case "Clip" when opset < 11:
            {
                // Clip-6: min/max attributes (defaults: the float range) -> optional inputs of the data type.
                var min = n.GetAttribute("min")?.AsFloat();
                var max = n.GetAttribute("max")?.AsFloat();
                n.Attributes.Remove("min");
                n.Attributes.Remove("max");
                if (min is null && max is null)
                    return true;
                var type = FloatType(n.Inputs[0])!.Value;
                editor.TruncateInputs(n, 1);
                editor.AddInput(n, min is { } lo ? Scalar("min", type, lo) : null);
                if (max is { } hi)
                    editor.AddInput(n, Scalar("max", type, hi));
                return true;
            }
            case "Pad" when opset < 11:
            {
                // Pad-2: pads and value attributes -> pads (int64) and constant_value inputs.
                var pads = n.GetInts("pads") ?? n.GetInts("paddings") ?? [];
                float value = n.GetFloat("value", 0f);
                n.Attributes.Remove("pads");
                n.Attributes.Remove("paddings");
                n.Attributes.Remove("value");
                editor.TruncateInputs(n, 1);
                editor.AddInput(n, Ints("pads", pads));
                if (value != 0f)
                    editor.AddInput(n, Scalar("value", FloatType(n.Inputs[0])!.Value, value));
                return true;
            }
            case "Dropout" when opset < 12:
            {
                // Dropout-7/10: ratio attribute -> ratio input (Dropout-12: ratio, training_mode; inference by default).
                var ratio = n.GetAttribute("ratio")?.AsFloat();
                n.Attributes.Remove("ratio");
                if (ratio is { } r)
                {
                    editor.TruncateInputs(n, 1);
                    editor.AddInput(n, Scalar("ratio", ElementType.Float, r));
                }
                return true;
            }
            case "Upsample":
            {
                // Upsample-7: scales attribute; Upsample-9/10: scales input. Upsample scales are >= 1, where the
                // asymmetric map with floor rounding is Upsample's own definition.
                Value scales = n.GetAttribute("scales") is { } s
                    ? editor.AddInitializer(Tensor.Create(g.UniqueName($"{prefix}/scales"), s.AsFloats().ToArray(), s.AsFloats().Count))
                    : n.Inputs[1]!;
                n.Attributes.Remove("scales");
                n.OpType = "Resize";
                ToResize13(editor, n, scales);
                return true;
            }
            case "Resize" when opset < 11:
                ToResize13(editor, n, n.Inputs[1]!);
                return true;
            case "BatchNormalization" when opset < 9:
                return n.Attributes.Remove("spatial");
            case "Scatter":
                // Scatter-9/11 is ScatterElements-11 by definition (Scatter was renamed).
                n.OpType = "ScatterElements";
                return true;
            default:
                return false;
        }
    }

    // Resize-10 / Upsample -> Resize-13 (X, roi = omitted, scales) with Resize-10's coordinate map.
    private static void ToResize13(GraphEditor editor, Node n, Value scales)
    {
        string mode = n.GetString("mode", "nearest")!;
        editor.TruncateInputs(n, 1);
        editor.AddInput(n, null);
        editor.AddInput(n, scales);
        n.Attributes.Set(Attribute.FromString("mode", mode == "bilinear" ? "linear" : mode));
        n.Attributes.Set(Attribute.FromString("coordinate_transformation_mode", "asymmetric"));
        if (mode == "nearest")
            n.Attributes.Set(Attribute.FromString("nearest_mode", "floor"));
    }

    // Before opset 13 these ops flatten x to [prod(dims < k), prod(dims >= k)] and normalize each row (k = axis,
    // default 1). From 13 they normalize one axis (default -1). When k is the last axis both agree; otherwise
    // Flatten(x, k) -> op(axis = -1) -> Reshape back to Shape(x).
    private static bool CoercedSoftmax(GraphEditor editor, Node n, int? rank)
    {
        long axis = n.GetInt("axis", 1);
        var x = n.Inputs[0]!;
        if (rank is { } r && (axis == -1 || axis == r - 1))
        {
            n.Attributes.Set(Attribute.FromInt("axis", -1));
            return true;
        }
        string prefix = n.Name.Length > 0 ? n.Name : n.OpType.ToLowerInvariant();
        var g = editor.Graph;
        var flat = editor.InsertBefore(n, editor.CreateNode("Flatten", [x], 1, [Attribute.FromInt("axis", axis)], name: g.UniqueName(prefix + "/Flatten")));
        var shape = editor.InsertBefore(n, editor.CreateNode("Shape", [x], 1, name: g.UniqueName(prefix + "/Shape")));
        var normalized = editor.InsertBefore(n, editor.CreateNode(n.OpType, [flat.Outputs[0]], 1, [Attribute.FromInt("axis", -1)],
            name: g.UniqueName(prefix + "/2d")));
        var back = editor.CreateNode("Reshape", [normalized.Outputs[0], shape.Outputs[0]], 1, name: g.UniqueName(prefix + "/Reshape"));
        editor.InsertBefore(n, back);
        Rewriting.ReplaceKeepingName(editor, n.Outputs[0], back.Outputs[0]);
        return true;
    }
}
