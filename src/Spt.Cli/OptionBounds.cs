using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text.RegularExpressions;

namespace Spt.Cli;

/// <summary>
/// The bounds of every numeric flag, and the flags that exclude each other, in one table. <see cref="Attach"/> adds
/// them to each command's options by name and type, so a value out of range is a parse error (one line, exit 2)
/// before any command runs, whichever command declares the flag.
/// </summary>
internal static class OptionBounds
{
    // A bound: the flag, its value type, the smallest and largest accepted values, and why (for the message).
    private sealed record Bound(string Flag, Type Type, double Min, double Max, string Why, bool MinExclusive = false, bool MaxExclusive = false);

    private const double IntMax = int.MaxValue;

    private static readonly Bound[] Bounds =
    [
        // Training loop.
        new("--steps", typeof(long), 1, IntMax, "optimizer steps"),
        new("--steps", typeof(int), 1, 1_000_000, "timed steps"),
        new("--batch", typeof(int), 1, 1 << 20, "sequences per batch"),
        new("--seq", typeof(int?), 1, 1 << 20, "tokens per sequence"),
        new("--seq", typeof(int), 1, 1 << 20, "tokens per sequence"),
        new("--accumulate", typeof(int), 1, 1 << 16, "micro-batches per step"),
        new("--lr", typeof(double), 0, double.MaxValue, "a finite, positive learning rate", MinExclusive: true),
        new("--warmup", typeof(long), 0, IntMax, "warm-up steps"),
        new("--warmup", typeof(int), 0, 1_000_000, "untimed steps"),
        new("--eval-every", typeof(long), 0, IntMax, "steps between evaluations (0: at the end)"),
        new("--eval-fraction", typeof(double), 0, 1, "the held-out fraction", MaxExclusive: true),
        new("--checkpoint-every", typeof(long), 0, IntMax, "steps between checkpoints (0: at evaluations and the end)"),
        new("--keep", typeof(int), 1, 1_000_000, "checkpoints kept"),
        new("--threads", typeof(int), 0, 4096, "ORT intra-op threads (0: ORT's default)"),
        // SPT rewrite.
        new("--topk-ratio", typeof(double?), 0, 1, "a fraction of the keys", MinExclusive: true),
        new("--topk", typeof(int?), 1, 1 << 24, "keys per query"),
        new("--blocks", typeof(int), 1, 4096, "FFN blocks"),
        new("--active", typeof(int), 1, 4096, "active FFN blocks"),
        new("--codebook-size", typeof(int), 1, 65536, "codewords per subspace"),
        new("--codeword-dim", typeof(int), 1, 65536, "a codeword width"),
        new("--lora", typeof(int), 0, 65536, "a LoRA rank (0: none; the rewrite also keeps it at most min(d_in, d_out) of each layer)"),
        // Training compiler.
        new("--pq-weight", typeof(float), 0, 1e6, "a loss weight"),
        new("--weight-decay", typeof(float), 0, 1e3, "a decay factor"),
        new("--max-grad-norm", typeof(float), 0, 1e12, "a gradient norm (0: off)"),
        // verify.
        new("--tol", typeof(double), 0, 1e30, "a tolerance"),
        // sample: each size, and the whole model is bounded by SampleDecoderConfig.Validate.
        new("--layers", typeof(int), 1, 1024, "decoder blocks"),
        new("--d-model", typeof(int), 1, 1 << 16, "a hidden width"),
        new("--heads", typeof(int), 1, 1 << 12, "attention heads"),
        new("--d-ff", typeof(int), 1, 1 << 18, "an FFN width"),
        new("--vocab", typeof(int), 1, 1 << 24, "a vocabulary size"),
        new("--max-seq", typeof(int), 1, 1 << 16, "positions"),
    ];

    // Flags that cannot be given together in one command.
    private static readonly (string A, string B, string Why)[] Exclusive =
    [
        ("--topk-ratio", "--topk", "both set the keys per query"),
        ("--exact", "--topk", "--exact keeps every key"),
        ("--exact", "--topk-ratio", "--exact keeps every key"),
    ];

    // Flags whose value is a .NET regular expression.
    private static readonly string[] Patterns = ["--frozen", "--lora-include"];

    /// <summary>Adds the validators to every option of <paramref name="root"/> and its subcommands.</summary>
    public static void Attach(Command root)
    {
        foreach (var option in root.Options)
        {
            foreach (var bound in Bounds.Where(b => option.Name == b.Flag && option.ValueType == b.Type))
                option.Validators.Add(result => Check(result, bound));
            if (Patterns.Contains(option.Name) && option.ValueType == typeof(string))
                option.Validators.Add(CheckPattern);
        }

        foreach (var (a, b, why) in Exclusive)
        {
            var first = root.Options.FirstOrDefault(o => o.Name == a);
            var second = root.Options.FirstOrDefault(o => o.Name == b);
            if (first is not null && second is not null)
            {
                root.Validators.Add(result =>
                {
                    if (Given(result, first) && Given(result, second))
                        result.AddError($"give {a} or {b}, not both ({why})");
                });
            }
        }

        foreach (var sub in root.Subcommands)
        {
            Attach(sub);
        }
    }

    /// <summary>Parses a regular expression flag; a syntax error is a usage error naming the flag.</summary>
    public static Regex Pattern(string flag, string pattern)
    {
        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException($"{flag}: '{pattern}' is not a regular expression: {Reason(e)}");
        }
    }

    private static bool Given(CommandResult result, Option option)
    {
        var r = result.GetResult(option);
        return r is not null && !r.Implicit && (option.ValueType != typeof(bool) || r.GetValueOrDefault<bool>());
    }

    private static void Check(OptionResult result, Bound bound)
    {
        if (result.Implicit)
            return;
        object? raw;
        try
        {
            raw = result.GetValueOrDefault<object?>();
        }
        catch (InvalidOperationException)
        {
            return; // the value did not parse; that error is reported already
        }
        if (raw is null)
            return;
        double v = Convert.ToDouble(raw, CultureInfo.InvariantCulture);
        bool low = bound.MinExclusive ? v > bound.Min : v >= bound.Min;
        bool high = bound.MaxExclusive ? v < bound.Max : v <= bound.Max;
        if (!(low && high))
        {
            string range = (bound.MinExclusive ? "(" : "[") + Format(bound.Min) + ", " + Format(bound.Max) + (bound.MaxExclusive ? ")" : "]");
            result.AddError($"{bound.Flag} must be in {range} ({bound.Why}), got {Convert.ToString(raw, CultureInfo.InvariantCulture)}");
        }
    }

    private static void CheckPattern(OptionResult result)
    {
        if (result.Implicit || result.GetValueOrDefault<string?>() is not { } pattern)
            return;
        try
        {
            _ = new Regex(pattern, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            result.AddError($"{result.Option.Name}: '{pattern}' is not a regular expression: {Reason(e)}");
        }
    }

    private static string Reason(ArgumentException e) => e is RegexParseException p
        ? $"{p.Error} at offset {p.Offset.ToString(CultureInfo.InvariantCulture)}"
        : e.Message;

    private static string Format(double v) => v.ToString("G", CultureInfo.InvariantCulture);
}
