using System.CommandLine;
using Spt.Ir;
using Spt.Passes;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Tokenization;

namespace Spt.Cli;

/// <summary>
/// The data and task flags of <c>train</c> (and <c>predict</c>): the tokenizer, the record fields, the task, and the
/// head sptc adds to a model that has none.
/// </summary>
internal sealed class DataFlags
{
    public Option<string?> Tokenizer { get; } = new("--tokenizer")
    {
        Description = "The model's tokenizer: an HF tokenizer.json, a WordPiece vocab.txt, a GPT-2 vocab.json (merges.txt beside it), " +
            "a SentencePiece .model, or gpt2 (the GPT-2 data package); default: byte-level text",
    };

    public Option<string> TextField { get; } = new("--text-field") { Description = "Text field of CSV/TSV/JSONL records", DefaultValueFactory = _ => "text" };

    public Option<string?> PairField { get; } = new("--pair-field") { Description = "Second text of a pair (e.g. text_pair), encoded as [CLS] a [SEP] b [SEP]" };

    public Option<string> LabelField { get; } = new("--label-field") { Description = "Class (integer or name) or regression target field", DefaultValueFactory = _ => "label" };

    public Option<int?> NumLabels { get; } = new("--num-labels")
    {
        Description = "Add a classification head with this many classes to a model that outputs hidden states (default: the classes in the data)",
    };

    public Option<string> Pooling { get; } = CreateChoice("--pooling", "How the added head pools the hidden states", "cls", "mean", "last");

    public Option<string?> HiddenOutput { get; } = new("--hidden-output") { Description = "The hidden-state output the added head reads (default: found)" };

    public static DataFlags Create() => new();

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { Tokenizer, TextField, PairField, LabelField, NumLabels, Pooling, HiddenOutput })
        {
            command.Options.Add(option);
        }
    }

    /// <summary>Opens --tokenizer (null when not given) and says what was detected.</summary>
    public TextTokenizer? OpenTokenizer(ParseResult parse, CliContext context)
    {
        if (parse.GetValue(Tokenizer) is not { } path)
        {
            return null;
        }

        var tokenizer = TextTokenizer.Open(path);
        context.Out.WriteLine($"tokenizer: {tokenizer.Description}");
        return tokenizer;
    }

    /// <summary>What the data file is read for.</summary>
    public DataRequest Request(ParseResult parse, TextTokenizer? tokenizer, LossKind loss, int? seq, LabelMap? labels, long ignoreIndex, bool sequenceTargets = false, long padId = 0) => new()
    {
        Tokenizer = tokenizer,
        SequenceLength = seq,
        TextField = parse.GetValue(TextField)!,
        PairField = parse.GetValue(PairField),
        LabelField = parse.GetValue(LabelField)!,
        Target = sequenceTargets ? TargetKind.Sequence : loss switch { LossKind.Classify => TargetKind.Class, LossKind.Mse => TargetKind.Float, _ => TargetKind.None },
        Labels = labels,
        IgnoreIndex = ignoreIndex,
        PadId = padId,
    };

    /// <summary>
    /// Adds a sequence head when the task needs one and the model's first output is hidden states rather than
    /// logits/scores (rank 3 for classification, not [batch, 1] for regression), or when --num-labels or
    /// --hidden-output ask for it. Returns the line to print, or null when nothing was added.
    /// </summary>
    public string? AddHeadIfNeeded(ParseResult parse, Model model, LossKind loss, Dataset data)
    {
        if (loss is LossKind.CausalLm)
        {
            return null;
        }

        var shapes = new Spt.Passes.Analysis.StaticShapes();
        var first = model.Graph.Outputs.FirstOrDefault();
        var rank = first is null ? null : shapes.RankOf(first);
        var asked = parse.GetValue(NumLabels) is not null || parse.GetValue(HiddenOutput) is not null;
        // Pre-tokenized JSONL has no label map: without --num-labels the loss reads the model's own output
        // (classes = its last dim, scored at the first position), as before heads could be added.
        if (!asked && (rank is not 3 || (loss == LossKind.Classify && data.Labels is null)))
        {
            return null; // the model has its own head: [batch, classes] logits or [batch, k] scores
        }

        var outputs = loss == LossKind.Mse ? 1 : parse.GetValue(NumLabels) ?? data.Labels!.Count;
        if (loss == LossKind.Classify && data.Labels is { } map && map.Count > outputs)
        {
            throw new CliUsageException($"--num-labels {outputs} is fewer than the {map.Count} labels in the data ({string.Join(", ", map.Names.Take(8))})");
        }

        var pass = new SequenceHeadPass(new SequenceHeadOptions
        {
            Outputs = outputs,
            Pooling = parse.GetValue(Pooling) switch { "mean" => Spt.Passes.Training.Pooling.Mean, "last" => Spt.Passes.Training.Pooling.Last, _ => Spt.Passes.Training.Pooling.Cls },
            HiddenOutput = parse.GetValue(HiddenOutput),
        });
        var context = new PassContext();
        pass.Run(model, context);
        return "head: " + context.Diagnostics.Last().Message;
    }

    private static Option<string> CreateChoice(string name, string description, params string[] values)
    {
        var option = new Option<string>(name) { Description = $"{description}: {string.Join(", ", values)}", DefaultValueFactory = _ => values[0] };
        option.AcceptOnlyFromAmong(values);
        return option;
    }
}
