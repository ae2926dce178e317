using System.CommandLine;
using System.Globalization;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes;

namespace Spt.Cli;

/// <summary>
/// The SPT rewrite's flags, shared by <c>optimize</c>, <c>bench</c> and <c>train</c> (where <c>--optimize</c> asks
/// for the rewrite before the training graphs are compiled).
/// </summary>
internal sealed class OptimizeFlags
{
    private OptimizeFlags()
    {
    }

    public Option<bool> Optimize { get; } = new("--optimize") { Description = "Apply the SPT rewrite (sparse PQ attention, routed FFN) before training" };

    public Option<string> Attention { get; } = CreateChoice("--attention", "Attention blocks: rewrite to sparse attention, or keep them dense", "sparse", "keep");

    public Option<string> Ffn { get; } = CreateChoice("--ffn", "FFN blocks: rewrite to routed FFNs, or keep them dense", "routed", "keep");

    public Option<int> Lora { get; } = new("--lora")
    {
        Description = "LoRA rank (0: none): factors on the routed FFNs and every remaining Linear layer; LoRA, routers, codebooks and norms train",
    };

    public Option<double?> TopKRatio { get; } = new("--topk-ratio")
    {
        Description = string.Create(CultureInfo.InvariantCulture, $"Keys per query as a fraction of the sequence (default {AttentionOps.DefaultKeysRatio})"),
    };

    public Option<int?> TopK { get; } = new("--topk") { Description = "Keys per query as a count" };

    public Option<int> MinTopK { get; } = new("--min-topk")
    {
        Description = "Fewest keys per query --topk-ratio may give (0: no floor; sequences this short attend to every key)",
        DefaultValueFactory = _ => SptOptions.DefaultMinTopK,
    };

    public Option<int> Blocks { get; } = new("--blocks") { Description = "FFN blocks", DefaultValueFactory = _ => (int)RoutedFfnOps.DefaultNBlocks };

    public Option<int> Active { get; } = new("--active") { Description = "Active FFN blocks per token", DefaultValueFactory = _ => (int)RoutedFfnOps.DefaultBlocksPerToken };

    public Option<int> CodebookSize { get; } = new("--codebook-size") { Description = "Codewords per subspace", DefaultValueFactory = _ => 16 };

    public Option<int?> CodewordDim { get; } = new("--codeword-dim") { Description = "Codeword dim; the head dim must be a multiple (default: per layer the largest of 1..8 that divides the head dim)" };

    public Option<string?> Layers { get; } = new("--layers") { Description = "Layer indices to rewrite, e.g. 0,2,5-7 (default: all)" };

    public static OptimizeFlags Create() => new();

    /// <summary>Adds the flags; <paramref name="includeSwitch"/> false leaves out --optimize itself (optimize and bench always rewrite).</summary>
    public void AddTo(Command command, bool includeSwitch = true)
    {
        if (includeSwitch)
        {
            command.Options.Add(Optimize);
        }

        foreach (var option in new Option[] { Attention, Ffn, Lora, TopKRatio, TopK, MinTopK, Blocks, Active, CodebookSize, CodewordDim, Layers })
        {
            command.Options.Add(option);
        }
    }

    public bool Requested(ParseResult parse) => parse.GetValue(Optimize);

    /// <summary>Rewrites <paramref name="model"/> in place when --optimize is given; returns a one-line report, or null.</summary>
    public string? Apply(ParseResult parse, Model model) => Requested(parse) ? Rewrite(parse, model) : null;

    /// <summary>The SPT options the flags describe (with <paramref name="exact"/> and <paramref name="seed"/> from the caller).</summary>
    public SptOptions Options(ParseResult parse, bool exact = false, int seed = 0)
    {
        if (parse.GetValue(TopKRatio) is not null && parse.GetValue(TopK) is not null)
        {
            throw new CliUsageException("give --topk-ratio or --topk, not both");
        }

        var options = new SptOptions
        {
            Attention = parse.GetValue(Attention) == "keep" ? AttentionMode.Keep : AttentionMode.Sparse,
            Ffn = parse.GetValue(Ffn) == "keep" ? FfnMode.Keep : FfnMode.Routed,
            LoraRank = parse.GetValue(Lora),
            TopKRatio = parse.GetValue(TopKRatio) ?? AttentionOps.DefaultKeysRatio,
            TopK = parse.GetValue(TopK),
            MinTopK = parse.GetValue(MinTopK),
            Blocks = parse.GetValue(Blocks),
            Active = parse.GetValue(Active),
            CodebookSize = parse.GetValue(CodebookSize),
            CodewordDim = parse.GetValue(CodewordDim),
            Exact = exact,
            Layers = ParseLayers(parse.GetValue(Layers)),
            Seed = seed,
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }

        return options;
    }

    /// <summary>Parses <c>0,2,5-7</c> into layer indices; null or blank means all layers.</summary>
    internal static IReadOnlySet<int>? ParseLayers(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
            return null;
        var set = new HashSet<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var range = part.Split('-');
            if (range.Length == 1 && int.TryParse(range[0], NumberStyles.None, CultureInfo.InvariantCulture, out var one))
                set.Add(one);
            else if (range.Length == 2 && int.TryParse(range[0], NumberStyles.None, CultureInfo.InvariantCulture, out var lo)
                && int.TryParse(range[1], NumberStyles.None, CultureInfo.InvariantCulture, out var hi) && lo <= hi)
                set.UnionWith(Enumerable.Range(lo, hi - lo + 1));
            else
                throw new CliUsageException($"--layers: '{part}' is not a layer index or range (e.g. 0,2,5-7)");
        }
        return set;
    }

    private static Option<string> CreateChoice(string name, string description, string defaultValue, params string[] values)
    {
        var option = new Option<string>(name) { Description = description, DefaultValueFactory = _ => defaultValue };
        option.AcceptOnlyFromAmong(values);
        return option;
    }

    /// <summary>Applies the SPT rewrite with the flags' settings to <paramref name="model"/> in place; returns a one-line report.</summary>
    public string Rewrite(ParseResult parse, Model model) => Rewrite(model, Options(parse));

    /// <summary>Applies the SPT rewrite to <paramref name="model"/> in place; returns a one-line report; nothing rewritten is an error.</summary>
    public static string Rewrite(Model model, SptOptions options)
    {
        var report = SptOptimizer.Optimize(model, options);
        // Dense LoRA (--attention keep --ffn keep --lora R) rewrites no block and is still a request.
        if (report.AttentionRewritten == 0 && report.FfnRewritten == 0 && options.LoraRank == 0)
        {
            throw new CliUsageException("the SPT rewrite found nothing to rewrite in the model (see 'sptc optimize --explain')");
        }

        return $"SPT rewrite: {report.AttentionRewritten} of {report.AttentionFound} attention blocks, {report.FfnRewritten} of {report.FfnFound} FFN blocks" +
            (options.LoraRank > 0 ? $", LoRA rank {options.LoraRank}" : "");
    }
}
