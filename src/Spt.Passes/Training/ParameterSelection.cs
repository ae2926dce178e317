using System.Text.RegularExpressions;
using Spt.CustomOps;
using Spt.Ir;

namespace Spt.Passes.Training;

/// <summary>
/// Which initializers of a model are parameters (trainable or frozen) and what its data inputs carry.
/// </summary>
/// <remarks>
/// Parameters: the names in the model's <c>spt.trainable</c> metadata (comma-separated) are the trainable ones when
/// it is present, and <c>spt.frozen</c> names are frozen parameters. Otherwise a parameter is a floating-point
/// initializer with more than one element that a MatMul, Gemm, Add, Sub, Mul, Div, LayerNormalization, Gather (as the
/// data of an embedding lookup, rank 2) or an op of another domain (spt, contrib) reads directly or through Transpose/Identity/Cast; shape constants,
/// index tensors, masks (bool) and buffers reached through other ops (rotary frequencies via Unsqueeze) are not.
/// <see cref="TrainingOptions.FrozenPattern"/> freezes matching parameters. Data roles: of the integer inputs that
/// index an embedding table, the one with the largest table is input_ids (one that also says "decoder" is
/// decoder_input_ids; a second one that does not is "other"), a table of at most 16 rows makes token_type_ids, other
/// tables position_ids; an input named decoder_input_ids is that, one whose name contains "mask" is
/// attention_mask; others are "other" (the trainer refuses them by name rather than feeding zeros).
/// </remarks>
public static class ParameterSelection
{
    /// <summary>The parameters of a model by the rule in the class remarks, in initializer order.</summary>
    public static IReadOnlyList<TrainingParameter> Select(Model model, TrainingOptions? options = null)
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
        foreach (var node in graph.Nodes)
        {
            if (!RoutedFfnOps.RoutedFfn.Is(node) || node.GetInt(RoutedFfnOps.FrozenBaseAttr, RoutedFfnOps.DefaultFrozenBase) != 1)
                continue;
            foreach (var i in RoutedFfnOps.BaseWeights)
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
    public static IReadOnlyList<DataInput> DataInputsOf(Model model) => DataInputs(model, Select(model));

    /// <summary>The data inputs of <paramref name="model"/> given its <paramref name="parameters"/>.</summary>
    public static List<DataInput> DataInputs(Model model, IReadOnlyList<TrainingParameter> parameters)
    {
        var rowsOf = parameters.Where(p => p.Shape.Count == 2).ToDictionary(p => p.Name, p => p.Shape[0], StringComparer.Ordinal);
        var inputs = model.Graph.Inputs.Where(v => !v.IsInitializer).ToList();
        // Integer inputs that index an embedding table (a Gather of a 2-D parameter, directly or through a Cast):
        // the one with the largest table carries the tokens, a table of at most 16 rows holds token types
        // (segments), any other table is a positions table.
        var tables = inputs.ToDictionary(v => v, v => GatheredRows(v, rowsOf));
        long largest = tables.Values.Where(r => r is not null).Select(r => r!.Value).DefaultIfEmpty(-1).Max();
        var result = new List<DataInput>();
        // An encoder-decoder indexes the token table twice: the input that says "decoder" is the decoder's; a second
        // token input that does not say which it is stays "other" (refused by name) rather than getting the ids.
        bool tokensTaken = false;
        foreach (var v in inputs)
        {
            var type = v.Type as TensorType ?? throw new OnnxModelException($"input '{v.Name}' is not a tensor");
            bool integer = type.ElementType is ElementType.Int64 or ElementType.Int32;
            bool tokens = tables[v] is { } t && t == largest && integer && !NameSays(v, "position", "token_type", "segment");
            string role = tokens && NameSays(v, "decoder") ? "decoder_input_ids"
                : tokens ? (tokensTaken ? "other" : "input_ids")
                : tables[v] is { } rows && integer ? rows <= 16 ? "token_type_ids" : "position_ids"
                : NameSays(v, "decoder_input_ids") ? "decoder_input_ids"
                : NameSays(v, "mask") ? "attention_mask"
                : integer && NameSays(v, "token_type", "segment") ? "token_type_ids"
                : integer && NameSays(v, "position") ? "position_ids"
                : "other";
            tokensTaken |= role == "input_ids";
            result.Add(new DataInput(v.Name, type.ElementType, type.Shape?.Select(TrainingCompiler.DimText).ToList() ?? [], role));
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
}
