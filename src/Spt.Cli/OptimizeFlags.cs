using System.CommandLine;
using Spt.Ir;
using Spt.Passes;

namespace Spt.Cli;

/// <summary>
/// <c>--optimize</c> and the SPT rewrite's flags on the commands that train (<c>train</c>): the model is rewritten
/// with sparse PQ attention and routed FFN before the training graphs are compiled.
/// </summary>
internal sealed class OptimizeFlags
{
    private OptimizeFlags()
    {
    }

    public Option<bool> Optimize { get; } = new("--optimize") { Description = "Apply the SPT rewrite (sparse PQ attention, routed FFN) before training" };

    public Option<int> Lora { get; } = new("--lora") { Description = "LoRA rank of the rewritten FFNs (0: none)", DefaultValueFactory = _ => 0 };

    public Option<double> TopKRatio { get; } = new("--topk-ratio") { Description = "Keys per query as a fraction of the sequence", DefaultValueFactory = _ => 0.125 };

    public Option<int> Blocks { get; } = new("--blocks") { Description = "FFN blocks", DefaultValueFactory = _ => 4 };

    public Option<int> Active { get; } = new("--active") { Description = "Active FFN blocks per token", DefaultValueFactory = _ => 2 };

    public static OptimizeFlags Create() => new();

    /// <summary>Adds the flags; <paramref name="includeSwitch"/> false leaves out --optimize itself (bench always rewrites).</summary>
    public void AddTo(Command command, bool includeSwitch = true)
    {
        if (includeSwitch)
        {
            command.Options.Add(Optimize);
        }

        command.Options.Add(Lora);
        command.Options.Add(TopKRatio);
        command.Options.Add(Blocks);
        command.Options.Add(Active);
    }

    public bool Requested(ParseResult parse) => parse.GetValue(Optimize);

    /// <summary>Rewrites <paramref name="model"/> in place when --optimize is given; returns a one-line report, or null.</summary>
    public string? Apply(ParseResult parse, Model model) => Requested(parse) ? Rewrite(parse, model) : null;

    /// <summary>The SPT options the flags describe.</summary>
    public SptOptions Options(ParseResult parse)
    {
        var options = new SptOptions
        {
            LoraRank = parse.GetValue(Lora),
            TopKRatio = parse.GetValue(TopKRatio),
            Blocks = parse.GetValue(Blocks),
            Active = parse.GetValue(Active),
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

    /// <summary>Applies the SPT rewrite with the flags' settings to <paramref name="model"/> in place; returns a one-line report.</summary>
    public string Rewrite(ParseResult parse, Model model) => Rewrite(model, Options(parse));

    /// <summary>Applies the SPT rewrite to <paramref name="model"/> in place; returns a one-line report; nothing rewritten is an error.</summary>
    public static string Rewrite(Model model, SptOptions options)
    {
        var report = SptOptimizer.Optimize(model, options);
        if (report.AttentionRewritten == 0 && report.FfnRewritten == 0)
        {
            throw new CliUsageException("the SPT rewrite found nothing to rewrite in the model (see 'sptc optimize --explain')");
        }

        return $"SPT rewrite: {report.AttentionRewritten} of {report.AttentionFound} attention blocks, {report.FfnRewritten} of {report.FfnFound} FFN blocks";
    }
}
