using System.CommandLine;
using System.Globalization;
using Spt.Runtime.Data;
using Spt.Runtime.Export;
using Spt.Runtime.Tokenization;

namespace Spt.Cli;

/// <summary>
/// <c>sptc predict MODEL --tokenizer T (--text "..." | --data FILE)</c>: a classifier prints each text's label and
/// probability (names from the label map saved with the model), a regressor its value, a causal LM a continuation
/// of each prompt (greedy, or seeded top-k sampling).
/// </summary>
internal static class PredictCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<string>("MODEL") { Description = "A fine-tuned model (sptc train --export)" };
        var tokenizer = new Option<string>("--tokenizer") { Description = "The tokenizer the model was trained with (see sptc train --tokenizer)", Required = true };
        var text = new Option<string[]>("--text") { Description = "A text (or prompt); repeatable", AllowMultipleArgumentsPerToken = false };
        var data = new Option<string?>("--data") { Description = "Texts to predict: CSV/TSV/JSONL records (--text-field) or a text file, one per line" };
        var textField = new Option<string>("--text-field") { Description = "Text field of records", DefaultValueFactory = _ => "text" };
        var pairField = new Option<string?>("--pair-field") { Description = "Second text of a pair" };
        var seq = new Option<int>("--seq") { Description = "Longest input (classification) or context (generation) in tokens", DefaultValueFactory = _ => DataFiles.DefaultTextSequence };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate (LM)", DefaultValueFactory = _ => 32 };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0: greedy)", DefaultValueFactory = _ => 0 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int>("--seed") { Description = "Sampling seed", DefaultValueFactory = _ => 0 };
        var command = new Command("predict", "Run a fine-tuned model on text: labels with probabilities, or generated continuations")
        {
            model, tokenizer, text, data, textField, pairField, seq, maxNew, topK, temperature, seed,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var modelPath = parse.GetRequiredValue(model);
            if (!File.Exists(modelPath))
            {
                throw new CliUsageException($"model file '{modelPath}' does not exist");
            }

            var maxLength = parse.GetValue(seq);
            if (maxLength < 2 || parse.GetValue(maxNew) < 0 || parse.GetValue(topK) < 0 || !(parse.GetValue(temperature) > 0))
            {
                throw new CliUsageException("--seq must be at least 2, --max-new-tokens and --top-k not negative, --temperature positive");
            }

            var inputs = Inputs(parse.GetValue(text) ?? [], parse.GetValue(data), parse.GetValue(textField)!, parse.GetValue(pairField));
            using var tok = TextTokenizer.Open(parse.GetRequiredValue(tokenizer));
            using var predictor = new Predictor(modelPath, tok);
            foreach (var (t, pair) in inputs)
            {
                if (predictor.IsLanguageModel)
                {
                    var continuation = predictor.Generate(t, new GenerationOptions
                    {
                        MaxNewTokens = parse.GetValue(maxNew),
                        TopK = parse.GetValue(topK),
                        Temperature = parse.GetValue(temperature),
                        Seed = parse.GetValue(seed),
                        Context = maxLength,
                    });
                    context.Out.WriteLine($"{t}\t->\t{t}{continuation}");
                }
                else if (predictor.Labels is null && predictor.Scores(t, pair, maxLength) is { Length: 1 } value)
                {
                    context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{t}\t{value[0]:G6}"));
                }
                else
                {
                    var p = predictor.Classify(t, pair, maxLength);
                    context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{t}\t{p.Label}\t{p.Probability:0.000}\t({string.Join(", ", p.Distribution.Take(5).Select(d => string.Create(CultureInfo.InvariantCulture, $"{d.Label} {d.Probability:0.000}")))})"));
                }
            }

            return ExitCodes.Ok;
        }));
        return command;
    }

    private static List<(string Text, string? Pair)> Inputs(string[] texts, string? data, string textField, string? pairField)
    {
        var result = texts.Select(t => (t, (string?)null)).ToList();
        if (data is not null)
        {
            var ext = Path.GetExtension(data).ToLowerInvariant();
            if (ext is ".csv" or ".tsv" or ".tab" or ".jsonl" or ".json" or ".ndjson")
            {
                using var file = RecordFile.Open(data);
                for (var i = 0; i < file.Count; i++)
                {
                    var fields = file.Fields(i);
                    if (!fields.TryGetValue(textField, out var t))
                    {
                        throw new CliUsageException($"{data} {file.Where(i)}: no '{textField}' field (choose it with --text-field)");
                    }

                    string? pair = null;
                    if (pairField is not null && !fields.TryGetValue(pairField, out pair))
                    {
                        throw new CliUsageException($"{data} {file.Where(i)}: no '{pairField}' field");
                    }

                    result.Add((t, pair));
                }
            }
            else
            {
                if (!File.Exists(data))
                {
                    throw new CliUsageException($"data file '{data}' does not exist");
                }

                result.AddRange(File.ReadLines(data).Where(l => l.Trim().Length > 0).Select(l => (l, (string?)null)));
            }
        }

        return result.Count > 0 ? result : throw new CliUsageException("nothing to predict: give --text or --data");
    }
}
