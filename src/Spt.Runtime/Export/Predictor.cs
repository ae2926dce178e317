using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Tokenization;
using Spt.Runtime.Training;

namespace Spt.Runtime.Export;

/// <summary>One classified text: the best label, its probability, and the whole distribution (label map order).</summary>
public sealed record Prediction(string Text, string Label, double Probability, IReadOnlyList<(string Label, double Probability)> Distribution);

/// <summary>How <see cref="Predictor.Generate"/> picks tokens.</summary>
public sealed record GenerationOptions
{
    /// <summary>Tokens to add.</summary>
    public int MaxNewTokens { get; init; } = 32;

    /// <summary>Sample among the k most likely tokens; 0 or 1 is greedy (the most likely).</summary>
    public int TopK { get; init; }

    /// <summary>Softmax temperature of sampling.</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Seed of sampling.</summary>
    public int Seed { get; init; }

    /// <summary>Longest context fed to the model (older tokens are dropped); null: no limit.</summary>
    public int? Context { get; init; }
}

/// <summary>
/// Runs a fine-tuned model on text: class labels with probabilities (the label map from the model's
/// <c>spt.labels</c> metadata; class numbers without one), a regression value, or a continuation of a prompt for a
/// causal LM. Inputs are fed by the roles the training compiler assigns (token ids, attention mask, token types,
/// positions); any other input is refused by name.
/// </summary>
public sealed class Predictor : IDisposable
{
    private readonly OrtModelRunner _runner;
    private readonly TextTokenizer _tokenizer;
    private readonly IReadOnlyList<DataInput> _inputs;

    /// <summary>Loads <paramref name="modelPath"/> for <paramref name="tokenizer"/>'s ids.</summary>
    public Predictor(string modelPath, TextTokenizer tokenizer)
    {
        _tokenizer = tokenizer;
        using var model = Model.Load(modelPath);
        _inputs = TrainingCompiler.DataInputsOf(model);
        if (_inputs.FirstOrDefault(i => i.Role is not ("input_ids" or "attention_mask" or "token_type_ids" or "position_ids")) is { } other)
        {
            throw new TrainingException($"'{modelPath}' has the input '{other.Name}' ({other.Role}), which prediction cannot fill from text");
        }

        if (!_inputs.Any(i => i.Role == "input_ids"))
        {
            throw new TrainingException($"'{modelPath}' has no token-id input (an integer input indexing an embedding table)");
        }

        var map = model.Metadata.FirstOrDefault(kv => kv.Key == LabelMap.MetadataKey);
        Labels = map.Key is null ? null : LabelMap.Parse(map.Value, modelPath);
        var first = model.Graph.Outputs.First();
        OutputRank = first.Shape?.Count ?? 0;
        _runner = new OrtModelRunner(model, new RunnerOptions { IntraOpThreads = 0 });
    }

    /// <summary>The label map of a classifier, or null.</summary>
    public LabelMap? Labels { get; }

    /// <summary>Rank of the first output: 2 for [batch, classes] or [batch, k], 3 for LM logits [batch, sequence, vocab].</summary>
    public int OutputRank { get; }

    /// <summary>Whether the model generates text (logits [batch, sequence, vocab] and no label map).</summary>
    public bool IsLanguageModel => OutputRank == 3 && Labels is null;

    /// <summary>The first output for one text (and its pair), encoded with the model's special tokens, at most <paramref name="maxLength"/> ids.</summary>
    public float[] Scores(string text, string? pair, int maxLength) => Run(_tokenizer.Encode(text, pair, maxLength)).Floats!;

    /// <summary>The label of <paramref name="text"/>: softmax of the logits.</summary>
    public Prediction Classify(string text, string? pair, int maxLength)
    {
        var logits = Scores(text, pair, maxLength);
        var max = logits.Max();
        var exp = logits.Select(l => Math.Exp(l - max)).ToArray();
        var sum = exp.Sum();
        var names = Labels?.Names ?? [.. Enumerable.Range(0, logits.Length).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture))];
        if (names.Count != logits.Length)
        {
            throw new TrainingException($"the model gives {logits.Length} scores but its label map has {names.Count} labels");
        }

        var distribution = names.Select((n, i) => (n, exp[i] / sum)).OrderByDescending(x => x.Item2).ToList();
        return new Prediction(text, distribution[0].n, distribution[0].Item2, distribution);
    }

    /// <summary>Continues <paramref name="prompt"/>: the new tokens' text (stops early at the tokenizer's end id).</summary>
    public string Generate(string prompt, GenerationOptions options)
    {
        var ids = _tokenizer.EncodePlain(prompt).ToList();
        if (ids.Count == 0)
        {
            ids.Add(_tokenizer.EndId ?? _tokenizer.PadId);
        }

        var rng = new Random(options.Seed);
        var added = new List<long>();
        for (var step = 0; step < options.MaxNewTokens; step++)
        {
            var context = options.Context is { } c && ids.Count > c ? ids.GetRange(ids.Count - c, c) : ids;
            var output = Run(new Encoding([.. context], new long[context.Count]));
            var vocab = (int)output.Shape[^1];
            var last = output.Floats!.AsSpan((context.Count - 1) * vocab, vocab);
            var next = Pick(last, options, rng);
            if (next == _tokenizer.EndId)
            {
                break;
            }

            ids.Add(next);
            added.Add(next);
        }

        return _tokenizer.Decode(added);
    }

    /// <inheritdoc />
    public void Dispose() => _runner.Dispose();

    // Greedy: the argmax. Top-k: softmax(logits / T) over the k largest, sampled.
    private static long Pick(ReadOnlySpan<float> logits, GenerationOptions options, Random rng)
    {
        var order = Enumerable.Range(0, logits.Length).ToArray();
        var values = logits.ToArray();
        Array.Sort(values.Select(v => -v).ToArray(), order);
        if (options.TopK <= 1)
        {
            return order[0];
        }

        var k = Math.Min(options.TopK, order.Length);
        var top = order.Take(k).Select(i => values[i] / Math.Max(options.Temperature, 1e-6)).ToArray();
        var max = top.Max();
        var weights = top.Select(v => Math.Exp(v - max)).ToArray();
        var u = rng.NextDouble() * weights.Sum();
        for (var i = 0; i < k; i++)
        {
            u -= weights[i];
            if (u <= 0)
            {
                return order[i];
            }
        }

        return order[k - 1];
    }

    private TensorData Run(Encoding encoding)
    {
        var length = encoding.Ids.Length;
        var feeds = new Dictionary<string, TensorData>(StringComparer.Ordinal);
        foreach (var input in _inputs)
        {
            long[] data = input.Role switch
            {
                "input_ids" => encoding.Ids,
                "attention_mask" => [.. Enumerable.Repeat(1L, length)],
                "token_type_ids" => encoding.TypeIds,
                _ => [.. Enumerable.Range(0, length).Select(i => (long)i)],
            };
            feeds[input.Name] = input.ElementType.IsFloatingPoint()
                ? TensorData.FromFloats([.. data.Select(v => (float)v)], [1, length], input.ElementType)
                : TensorData.FromLongs(data, [1, length], input.ElementType);
        }

        return _runner.Run(feeds)[0].Value;
    }
}
