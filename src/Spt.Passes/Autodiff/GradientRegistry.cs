using Spt.CustomOps;

namespace Spt.Passes.Autodiff;

/// <summary>A gradient rule: reads the output gradients of <see cref="GradientContext.Node"/> and adds input gradients.</summary>
public delegate void GradientRule(GradientContext context);

/// <summary>
/// Gradient rules keyed by (domain, op type), plus explicit "no gradient" entries for ops whose outputs carry no
/// derivative (shapes, comparisons, integer selections). An op with neither is an error when it lies on a path from
/// a trainable parameter to the loss.
/// </summary>
public sealed class GradientRegistry
{
    private readonly Dictionary<(string Domain, string OpType), Entry> _entries = [];

    /// <summary>One registry entry: a rule, or the reason there is no gradient.</summary>
    public sealed record Entry(GradientRule? Rule, string? NoGradientReason)
    {
        /// <summary>Whether the op is explicitly not differentiable.</summary>
        public bool IsNoGradient => Rule == null;
    }

    /// <summary>
    /// The standard registry: the stock ONNX rules (<see cref="StandardGradients"/>) and the rules of the spt ops,
    /// which live beside their schemas (<see cref="OpGradients"/>).
    /// </summary>
    public static GradientRegistry CreateDefault()
    {
        var r = new GradientRegistry();
        StandardGradients.Register(r);
        foreach (var g in OpGradients.All)
        {
            if (g.Rule is { } rule)
                r.Register(CustomOpLibrary.Domain, g.OpType, ctx => rule(ctx));
            else
                r.RegisterNoGradient(CustomOpLibrary.Domain, g.OpType, g.NoGradientReason ?? "not differentiable");
        }
        return r;
    }

    /// <summary>Registers (or replaces) the rule of an op.</summary>
    public void Register(string domain, string opType, GradientRule rule) =>
        _entries[(Normalize(domain), opType)] = new Entry(rule ?? throw new ArgumentNullException(nameof(rule)), null);

    /// <summary>Declares that an op has no gradient: its outputs never carry one, whatever its inputs.</summary>
    public void RegisterNoGradient(string domain, string opType, string reason) =>
        _entries[(Normalize(domain), opType)] = new Entry(null, reason);

    /// <summary>The entry for an op, or null when the registry does not know it.</summary>
    public Entry? Find(string domain, string opType) => _entries.GetValueOrDefault((Normalize(domain), opType));

    /// <summary>Every registered (domain, op type), sorted.</summary>
    public IEnumerable<(string Domain, string OpType, bool NoGradient)> Entries =>
        _entries.OrderBy(e => e.Key.Domain, StringComparer.Ordinal).ThenBy(e => e.Key.OpType, StringComparer.Ordinal)
            .Select(e => (e.Key.Domain, e.Key.OpType, e.Value.IsNoGradient));

    private static string Normalize(string domain) => domain == "ai.onnx" ? "" : domain;
}
