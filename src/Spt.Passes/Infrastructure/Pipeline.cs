using System.Diagnostics;
using Spt.Ir;

namespace Spt.Passes;

/// <summary>
/// An explicit, ordered list of passes. A step is a single pass or a group of passes repeated until none of them
/// changes the model (a fixpoint). Build one with the fluent <see cref="Add(IPass)"/> and
/// <see cref="AddFixpoint"/>, or take a standard one from <c>Pipelines</c>.
/// </summary>
public sealed class Pipeline
{
    private readonly List<Step> _steps = [];

    public Pipeline(string name) => Name = name;

    public string Name { get; }

    /// <summary>The passes in order (a fixpoint group contributes each of its passes once).</summary>
    public IEnumerable<IPass> Passes => _steps.SelectMany(s => s.Passes);

    /// <summary>Appends a pass that runs once.</summary>
    public Pipeline Add(IPass pass)
    {
        ArgumentNullException.ThrowIfNull(pass);
        _steps.Add(new Step([pass], 1));
        return this;
    }

    /// <summary>Appends a group of passes that runs repeatedly until a round changes nothing.</summary>
    /// <param name="maxRounds">Upper bound on rounds; reaching it is a warning, not an error.</param>
    /// <param name="passes">The passes of the group, run in this order each round.</param>
    public Pipeline AddFixpoint(int maxRounds, params IPass[] passes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRounds, 1);
        ArgumentOutOfRangeException.ThrowIfZero(passes.Length);
        _steps.Add(new Step(passes, maxRounds));
        return this;
    }

    /// <summary>Runs every step on <paramref name="model"/>; returns whether anything changed.</summary>
    public PipelineResult Run(Model model, PassContext? context = null)
    {
        context ??= new PassContext();
        var timings = new Dictionary<string, (TimeSpan Elapsed, int Runs, int Changes)>();
        var order = new List<string>();
        var changedAny = false;
        var total = Stopwatch.StartNew();

        foreach (var step in _steps)
        {
            for (var round = 0; ; round++)
            {
                if (round == step.MaxRounds)
                {
                    if (step.MaxRounds > 1)
                    {
                        context.Warn(Name, $"fixpoint of {string.Join(", ", step.Passes.Select(p => p.Name))} " +
                            $"did not settle in {step.MaxRounds} rounds");
                    }

                    break;
                }

                var changedThisRound = false;
                foreach (var pass in step.Passes)
                {
                    context.Cancellation.ThrowIfCancellationRequested();
                    var watch = Stopwatch.StartNew();
                    var changed = pass.Run(model, context);
                    watch.Stop();

                    if (!timings.TryGetValue(pass.Name, out var t))
                    {
                        order.Add(pass.Name);
                    }

                    timings[pass.Name] = (t.Elapsed + watch.Elapsed, t.Runs + 1, t.Changes + (changed ? 1 : 0));
                    if (changed && context.VerifyAfterEachPass)
                    {
                        VerifyAfter(pass, model);
                    }

                    changedThisRound |= changed;
                }

                changedAny |= changedThisRound;
                if (!changedThisRound)
                {
                    break;
                }
            }
        }

        total.Stop();
        var list = order.Select(n => new PassTiming(n, timings[n].Elapsed, timings[n].Runs, timings[n].Changes)).ToList();
        return new PipelineResult(changedAny, total.Elapsed, list, context);
    }

    private static void VerifyAfter(IPass pass, Model model)
    {
        var errors = GraphVerifier.Verify(model.Graph);
        if (errors.Count > 0)
        {
            throw new InvalidOperationException(
                $"pass '{pass.Name}' left an invalid graph: {string.Join("; ", errors.Take(5))}" +
                (errors.Count > 5 ? $" (+{errors.Count - 5} more)" : ""));
        }
    }

    private sealed record Step(IReadOnlyList<IPass> Passes, int MaxRounds);
}

/// <summary>What a pipeline run did: whether it changed the model, per-pass timings, and the context.</summary>
public sealed record PipelineResult(bool Changed, TimeSpan Elapsed, IReadOnlyList<PassTiming> Timings, PassContext Context);
