using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Runtime;

/// <summary>How <see cref="InputGenerator"/> binds symbolic dimensions and draws values.</summary>
public sealed record InputGeneratorOptions
{
    /// <summary>Size for batch-like symbols (<c>batch</c>, <c>batch_size</c>, <c>B</c>, <c>N</c>).</summary>
    public int Batch { get; init; } = 2;

    /// <summary>Size for sequence-like symbols (<c>sequence</c>, <c>seq_len</c>, <c>S</c>, <c>T</c>, ...).</summary>
    public int Sequence { get; init; } = 16;

    /// <summary>Sizes for other symbols by name; a symbol not listed (or an unnamed dimension) gets 1.</summary>
    public IReadOnlyDictionary<string, long> Symbols { get; init; } = new Dictionary<string, long>();

    /// <summary>Seed of the random generator: the same seed gives the same inputs.</summary>
    public int Seed { get; init; }

    /// <summary>Value range [0, n) for integer inputs that feed no embedding table.</summary>
    public long DefaultVocab { get; init; } = 16;
}

/// <summary>What an input is, as far as the generator can tell.</summary>
public enum InputKind
{
    /// <summary>Token ids: integers in [0, vocab).</summary>
    TokenIds,

    /// <summary>A 0/1 mask (padding or attention mask).</summary>
    Mask,

    /// <summary>A float input: standard normal values.</summary>
    Float,

    /// <summary>Another integer input: values in [0, <see cref="InputGeneratorOptions.DefaultVocab"/>).</summary>
    Integer,
}

/// <summary>
/// Makes inputs for a model that respect what the inputs mean: token ids within the embedding table's rows (the
/// first dimension of the initializer a Gather reads with them), masks of 0 and 1 (inputs named like <c>mask</c>,
/// or feeding <c>1 - mask</c>; each row keeps a prefix of ones, at least the first position, then zeros), float
/// inputs drawn from N(0, 1). Symbolic dimensions are bound from the options. Deterministic for a seed.
/// </summary>
public static class InputGenerator
{
    private static readonly string[] BatchNames = ["batch", "batch_size", "b", "n", "bs"];
    private static readonly string[] SequenceNames = ["sequence", "seq", "seq_len", "sequence_length", "s", "t", "seqlen", "length", "len"];

    /// <summary>Inputs for every input of <paramref name="model"/> that is not an initializer, by name.</summary>
    public static Dictionary<string, TensorData> Generate(Model model, InputGeneratorOptions? options = null)
    {
        options ??= new InputGeneratorOptions();
        var rng = new Random(options.Seed);
        var result = new Dictionary<string, TensorData>(StringComparer.Ordinal);
        foreach (var input in model.Graph.RequiredInputs)
        {
            var type = input.ElementType
                ?? throw new OnnxModelException($"input '{input.Name}' has no tensor type; cannot generate a value for it");
            var shape = ResolveShape(input, options);
            long count = shape.Aggregate(1L, (p, d) => p * d);
            var (kind, vocab) = Classify(input, options);
            if (kind == InputKind.Mask)
            {
                var mask = MaskValues(shape, rng);
                result[input.Name] = type.IsFloatingPoint()
                    ? TensorData.FromFloats([.. mask.Select(v => (float)v)], shape, type)
                    : TensorData.FromLongs(mask, shape, type);
            }
            else if (type.IsFloatingPoint())
            {
                result[input.Name] = TensorData.FromFloats([.. Enumerable.Range(0, (int)count).Select(_ => Normal(rng))], shape, type);
            }
            else if (type == ElementType.Bool)
            {
                result[input.Name] = TensorData.FromLongs([.. Enumerable.Range(0, (int)count).Select(_ => (long)rng.Next(2))], shape, type);
            }
            else
            {
                result[input.Name] = TensorData.FromLongs([.. Enumerable.Range(0, (int)count).Select(_ => rng.NextInt64(vocab))], shape, type);
            }
        }
        return result;
    }

    /// <summary>The concrete shape of <paramref name="input"/> with its symbols bound from <paramref name="options"/>.</summary>
    public static long[] ResolveShape(Value input, InputGeneratorOptions options)
    {
        var shape = input.Shape ?? throw new OnnxModelException($"input '{input.Name}' has no shape; cannot generate a value for it");
        return [.. shape.Select(d => d.Value ?? SymbolSize(d.Param, options))];
    }

    private static long SymbolSize(string? symbol, InputGeneratorOptions options)
    {
        if (string.IsNullOrEmpty(symbol))
            return 1;
        if (options.Symbols.TryGetValue(symbol, out var size))
            return size;
        string s = symbol.ToLowerInvariant();
        if (BatchNames.Contains(s))
            return options.Batch;
        if (SequenceNames.Contains(s) || s.Contains("seq", StringComparison.Ordinal) || s.Contains("sequence", StringComparison.Ordinal))
            return options.Sequence;
        if (s.Contains("batch", StringComparison.Ordinal))
            return options.Batch;
        return 1;
    }

    /// <summary>What <paramref name="input"/> looks like and, for integer inputs, the exclusive upper bound of its values.</summary>
    public static (InputKind Kind, long Vocab) Classify(Value input, InputGeneratorOptions? options = null)
    {
        options ??= new InputGeneratorOptions();
        if (input.Name.Contains("mask", StringComparison.OrdinalIgnoreCase) || FeedsOneMinus(input))
            return (InputKind.Mask, 2);
        if (input.ElementType is { } t && t.IsFloatingPoint())
            return (InputKind.Float, 0);
        if (EmbeddingRows(input) is { } vocab)
            return (InputKind.TokenIds, vocab);
        return (InputKind.Integer, options.DefaultVocab);
    }

    // Rows of the table a Gather reads with this input (through shape-only or cast ops).
    private static long? EmbeddingRows(Value input) => FirstUse(input, ["Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"],
        use => use.Node.OpType == "Gather" && use.InputIndex == 1 && use.Node.Inputs[0]?.Initializer is { Dims.Count: >= 1 } table
            && use.Node.GetInt("axis", 0) == 0 ? table.Dims[0] : null);

    // mask -> [Unsqueeze/Cast]* -> Sub(1, .)
    private static bool FeedsOneMinus(Value input) => FirstUse(input, ["Cast", "Unsqueeze", "Reshape", "Expand"],
        use => use.Node.OpType == "Sub" && use.InputIndex == 1 && use.Node.Inputs[0] is { } one
            && Passes.Analysis.ConstantValue.Of(one) is { } t && Passes.Patterns.Pat.Scalar(1.0)(t) ? 1L : null) is not null;

    // The first non-null answer of `probe` over the uses of `input`, following the outputs of `passThrough` ops
    // (taking the value as their first input) up to four steps away.
    private static long? FirstUse(Value input, string[] passThrough, Func<Use, long?> probe)
    {
        var frontier = new List<Value> { input };
        for (int depth = 0; depth < 4 && frontier.Count > 0; depth++)
        {
            var next = new List<Value>();
            foreach (var use in frontier.SelectMany(v => v.Uses))
            {
                if (probe(use) is { } found)
                    return found;
                if (use.InputIndex == 0 && passThrough.Contains(use.Node.OpType))
                    next.Add(use.Node.Outputs[0]);
            }
            frontier = next;
        }
        return null;
    }

    // Each row (last axis): ones for a random prefix of length >= 1, zeros after; the first row all ones.
    private static long[] MaskValues(long[] shape, Random rng)
    {
        long count = shape.Aggregate(1L, (p, d) => p * d);
        var values = new long[count];
        long row = shape.Length == 0 ? 1 : Math.Max(1, shape[^1]);
        for (long r = 0; r * row < count; r++)
        {
            long keep = r == 0 ? row : 1 + rng.NextInt64(row);
            for (long j = 0; j < row; j++)
                values[r * row + j] = j < keep ? 1 : 0;
        }
        return values;
    }

    private static float Normal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
    }
}
