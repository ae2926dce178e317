using Spt.Ir;

namespace Spt.Passes;

/// <summary>
/// A transformation of a model. A pass edits the model in place, through the graph editor, and says whether it
/// changed anything; a pass that finds nothing to do returns false and leaves the model untouched.
/// </summary>
public interface IPass
{
    /// <summary>Short stable name, used in timings, diagnostics and <c>--explain</c> output.</summary>
    string Name { get; }

    /// <summary>Runs the pass; returns whether the model changed.</summary>
    bool Run(Model model, PassContext context);
}

/// <summary>How serious a diagnostic is.</summary>
public enum Severity
{
    /// <summary>Explains a decision (a pattern that did not match, and why).</summary>
    Info,

    /// <summary>Something the user should know about (a block left dense, an unsupported opset).</summary>
    Warning,

    /// <summary>The pass could not do what was asked.</summary>
    Error,
}

/// <summary>A message from a pass, optionally about one node.</summary>
public sealed record Diagnostic(Severity Severity, string Pass, string Message, Node? Node = null)
{
    public override string ToString()
    {
        var where = Node is null ? "" : $" [{(Node.Name.Length > 0 ? Node.Name : "?")}: {Node.OpType}]";
        return $"{Severity.ToString().ToLowerInvariant()}: {Pass}{where}: {Message}";
    }
}

/// <summary>Time spent in one pass over one pipeline run, and whether it changed the model.</summary>
public sealed record PassTiming(string Pass, TimeSpan Elapsed, int Runs, int Changes);

/// <summary>
/// State shared by the passes of one pipeline run: diagnostics, timings, and whether the verifier runs after each
/// pass. Passes may keep typed results here (for example what a recognition pass found) for later passes and the
/// report.
/// </summary>
public sealed class PassContext
{
    private readonly List<Diagnostic> _diagnostics = [];
    private readonly Dictionary<Type, object> _results = [];

    /// <summary>Run the graph verifier after every pass that changed the model (on by default in debug builds).</summary>
    public bool VerifyAfterEachPass { get; init; }
#if DEBUG
        = true;
#endif

    /// <summary>Cancels a long pipeline between passes.</summary>
    public CancellationToken Cancellation { get; init; }

    public IReadOnlyList<Diagnostic> Diagnostics => _diagnostics;

    public void Report(Diagnostic diagnostic) => _diagnostics.Add(diagnostic);

    public void Info(string pass, string message, Node? node = null) => Report(new(Severity.Info, pass, message, node));

    public void Warn(string pass, string message, Node? node = null) => Report(new(Severity.Warning, pass, message, node));

    public void Error(string pass, string message, Node? node = null) => Report(new(Severity.Error, pass, message, node));

    /// <summary>A result object of type <typeparamref name="T"/> kept for this run, created on first use.</summary>
    public T Result<T>()
        where T : class, new()
    {
        if (!_results.TryGetValue(typeof(T), out var result))
        {
            result = new T();
            _results[typeof(T)] = result;
        }

        return (T)result;
    }

    /// <summary>The result of type <typeparamref name="T"/> if a pass stored one.</summary>
    public T? TryGetResult<T>()
        where T : class => _results.TryGetValue(typeof(T), out var result) ? (T)result : null;
}
