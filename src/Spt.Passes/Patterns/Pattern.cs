using System.Globalization;
using Spt.Ir;
using Attribute = Spt.Ir.Attribute;

namespace Spt.Passes.Patterns;

/// <summary>
/// A declarative description of a dataflow tree that ends in one value. Build patterns with <see cref="Pat"/>, then
/// call <see cref="Match(Value)"/> (or <see cref="OpPattern.Match(Node)"/>): the result either holds the captured
/// values and nodes, or says which sub-pattern failed, why, and at which node. Matching never throws for a graph
/// that does not fit, and never changes the graph.
/// </summary>
/// <remarks>
/// A capture name used twice must bind the same value both times (so <c>Mul(Any("x"), Any("x"))</c> matches only
/// a square). Alternatives and commutative operands are tried in order; captures of a failed attempt are undone.
/// </remarks>
public abstract class Pattern
{
    private protected Pattern()
    {
    }

    /// <summary>Matches this pattern against the tree that ends in <paramref name="value"/>.</summary>
    public MatchResult Match(Value value)
    {
        ArgumentNullException.ThrowIfNull(value);
        var state = new MatchState();
        var failure = TryMatch(value, state);
        return failure is null ? MatchResult.Succeeded(state) : MatchResult.Failed(failure.Value.Reason, failure.Value.Node);
    }

    /// <summary>A short text describing what the pattern wants, used in failure reasons.</summary>
    public abstract string Describe();

    /// <inheritdoc />
    public override string ToString() => Describe();

    /// <summary>Tries to match; returns null on success or the failure (captures are not undone here).</summary>
    internal abstract Failure? TryMatch(Value value, MatchState state);

    /// <summary>Runs <see cref="TryMatch"/> and undoes its captures when it fails.</summary>
    internal Failure? TryMatchOrUndo(Value value, MatchState state)
    {
        var mark = state.Mark();
        var failure = TryMatch(value, state);
        if (failure is not null)
            state.Undo(mark);
        return failure;
    }

    internal static string Name(Value v) => "%" + (v.Name.Length > 0 ? v.Name : "?");

    internal static string Name(Node n) =>
        $"{(n.IsDefaultDomain ? "" : n.Domain + "::")}{n.OpType} '{(n.Name.Length > 0 ? n.Name : "<unnamed>")}'";
}

/// <summary>Why a match failed and at which node (null when the failure is about a graph input or initializer).</summary>
internal readonly record struct Failure(string Reason, Node? Node);

/// <summary>Captures under construction, with an undo log so failed alternatives leave nothing behind.</summary>
internal sealed class MatchState
{
    private readonly List<(string? Name, bool IsNode)> _log = [];

    public Dictionary<string, Value> Values { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, Node> Nodes { get; } = new(StringComparer.Ordinal);

    public List<Node> Matched { get; } = [];

    public (int Log, int Matched) Mark() => (_log.Count, Matched.Count);

    public void Undo((int Log, int Matched) mark)
    {
        for (int i = _log.Count - 1; i >= mark.Log; i--)
        {
            var (name, isNode) = _log[i];
            if (name is null)
                continue;
            if (isNode)
                Nodes.Remove(name);
            else
                Values.Remove(name);
        }
        _log.RemoveRange(mark.Log, _log.Count - mark.Log);
        Matched.RemoveRange(mark.Matched, Matched.Count - mark.Matched);
    }

    /// <summary>Binds a value name; a name bound before must name the same value.</summary>
    public Failure? BindValue(string name, Value value)
    {
        if (Values.TryGetValue(name, out var bound))
        {
            return ReferenceEquals(bound, value)
                ? null
                : new Failure($"capture '{name}' is already {Pattern.Name(bound)}, here it would be {Pattern.Name(value)}", value.Producer);
        }
        Values[name] = value;
        _log.Add((name, false));
        return null;
    }

    public Failure? BindNode(string name, Node node)
    {
        if (Nodes.TryGetValue(name, out var bound))
        {
            return ReferenceEquals(bound, node)
                ? null
                : new Failure($"capture '{name}' is already {Pattern.Name(bound)}, here it would be {Pattern.Name(node)}", node);
        }
        Nodes[name] = node;
        _log.Add((name, true));
        return null;
    }

    public void AddMatched(Node node)
    {
        if (!Matched.Contains(node))
            Matched.Add(node);
        _log.Add((null, false));
    }
}

/// <summary>Matches any value; optionally captures it and checks a predicate.</summary>
public sealed class AnyPattern : Pattern
{
    private readonly string? _capture;
    private readonly List<(Func<Value, bool> Predicate, string Description)> _guards = [];

    internal AnyPattern(string? capture) => _capture = capture;

    /// <summary>Adds a condition on the value (e.g. its rank); <paramref name="description"/> appears in failure reasons.</summary>
    public AnyPattern Where(Func<Value, bool> predicate, string description)
    {
        _guards.Add((predicate, description));
        return this;
    }

    /// <inheritdoc />
    public override string Describe() => _capture is null ? "any" : "any '" + _capture + "'";

    internal override Failure? TryMatch(Value value, MatchState state)
    {
        foreach (var (predicate, description) in _guards)
        {
            if (!predicate(value))
                return new Failure($"{Name(value)} fails '{description}'", value.Producer);
        }
        return _capture is null ? null : state.BindValue(_capture, value);
    }
}

/// <summary>
/// Matches a constant: an initializer that is not also a graph input (which a caller could override), or the
/// output of a <c>Constant</c> node with a <c>value</c> attribute. Captures the value; the tensor is available from
/// <see cref="MatchResult.Constant"/>.
/// </summary>
public sealed class ConstPattern : Pattern
{
    private readonly string? _capture;
    private readonly Func<Tensor, bool>? _predicate;
    private readonly string _description;

    internal ConstPattern(string? capture, Func<Tensor, bool>? predicate, string description)
    {
        _capture = capture;
        _predicate = predicate;
        _description = description;
    }

    /// <inheritdoc />
    public override string Describe() => _capture is null ? _description : $"{_description} '{_capture}'";

    internal override Failure? TryMatch(Value value, MatchState state)
    {
        var tensor = Analysis.ConstantValue.Of(value);
        if (tensor is null)
        {
            string what = value.Producer is { } p ? "computed by " + Name(p) : value.IsGraphInput ? "a graph input" : "not a constant";
            return new Failure($"{Name(value)} should be {Describe()} but is {what}", value.Producer);
        }
        if (_predicate is not null && !SafePredicate(tensor))
            return new Failure($"constant {Name(value)} = {tensor.PreviewText()} is not {Describe()}", value.Producer);
        // Constant nodes are leaves: shared freely and left to dead-code elimination, so not part of the region.
        return _capture is null ? null : state.BindValue(_capture, value);
    }

    // A predicate that cannot read the tensor (strings, unusual types) does not match.
    private bool SafePredicate(Tensor tensor)
    {
        try
        {
            return _predicate!(tensor);
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}

/// <summary>
/// Matches a node of one op type whose inputs match the given patterns. Configure it fluently: <see cref="Domain"/>,
/// <see cref="Attr(string, long, long?)"/> and friends, <see cref="Where"/>, <see cref="Named"/>, <see cref="Output"/>.
/// By default the node must be in the default ONNX domain, the value must be its first output, and it must have
/// exactly as many inputs as patterns are given (omitted trailing optional inputs do not count); allow more with
/// <see cref="WithTrailingInputs"/>.
/// </summary>
public sealed class OpPattern : Pattern
{
    private readonly Pattern[] _inputs;
    private readonly List<(Func<Node, bool> Predicate, string Description)> _guards = [];
    private string _domain = "";
    private string? _capture;
    private int _outputIndex;
    private bool _trailingInputs;

    internal OpPattern(string opType, Pattern[] inputs, bool commutative)
    {
        if (commutative && inputs.Length != 2)
            throw new ArgumentException("a commutative pattern takes exactly two operands", nameof(inputs));
        OpType = opType;
        _inputs = inputs;
        IsCommutative = commutative;
    }

    /// <summary>The op type the node must have.</summary>
    public string OpType { get; }

    /// <summary>Whether the two operands are also tried in swapped order.</summary>
    public bool IsCommutative { get; }

    /// <summary>Requires the node to be in <paramref name="domain"/> ("" for the default ONNX domain).</summary>
    public OpPattern Domain(string domain)
    {
        _domain = domain;
        return this;
    }

    /// <summary>Captures the node (and the matched output value) under <paramref name="name"/>.</summary>
    public OpPattern Named(string name)
    {
        _capture = name;
        return this;
    }

    /// <summary>Requires the matched value to be output <paramref name="index"/> of the node (default 0).</summary>
    public OpPattern Output(int index)
    {
        _outputIndex = index;
        return this;
    }

    /// <summary>Allows inputs beyond the ones given patterns (they are not looked at).</summary>
    public OpPattern WithTrailingInputs()
    {
        _trailingInputs = true;
        return this;
    }

    /// <summary>Adds a condition on the node; <paramref name="description"/> appears in failure reasons.</summary>
    public OpPattern Where(Func<Node, bool> predicate, string description)
    {
        _guards.Add((predicate, description));
        return this;
    }

    /// <summary>Requires integer attribute <paramref name="name"/> to equal <paramref name="expected"/> (an absent attribute counts as <paramref name="defaultValue"/>).</summary>
    public OpPattern Attr(string name, long expected, long? defaultValue = null) =>
        Where(n => (n.GetAttribute(name) is { Kind: AttributeKind.Int } a ? a.AsInt() : defaultValue) == expected,
              $"{name} = {expected}");

    /// <summary>Requires float attribute <paramref name="name"/> to be within <paramref name="tolerance"/> of <paramref name="expected"/>.</summary>
    public OpPattern Attr(string name, float expected, float? defaultValue, double tolerance = 1e-6) =>
        Where(n => (n.GetAttribute(name) is { Kind: AttributeKind.Float } a ? a.AsFloat() : defaultValue) is { } v
                   && Math.Abs(v - expected) <= tolerance,
              $"{name} = {expected.ToString(CultureInfo.InvariantCulture)}");

    /// <summary>Requires integer-list attribute <paramref name="name"/> to equal <paramref name="expected"/>.</summary>
    public OpPattern AttrInts(string name, params long[] expected) =>
        Where(n => n.GetAttribute(name) is { Kind: AttributeKind.Ints } a && a.AsInts().SequenceEqual(expected),
              $"{name} = [{string.Join(",", expected)}]");

    /// <summary>Requires a condition on attribute <paramref name="name"/> (null when absent).</summary>
    public OpPattern Attr(string name, Func<Attribute?, bool> predicate, string description) =>
        Where(n => predicate(n.GetAttribute(name)), $"{name}: {description}");

    /// <summary>
    /// Requires axis attribute <paramref name="name"/> to name the last axis of input 0: -1, or rank-1 when the
    /// input's rank is known. <paramref name="defaultValue"/> is used when the attribute is absent (Softmax: -1 from
    /// opset 13, 1 before).
    /// </summary>
    public OpPattern AttrLastAxis(string name, long defaultValue) =>
        Where(n =>
        {
            long axis = n.GetAttribute(name) is { Kind: AttributeKind.Int } a ? a.AsInt() : defaultValue;
            return axis == -1 || (n.Inputs.Count > 0 && n.Inputs[0]?.Shape is { } s && axis == s.Count - 1);
        }, $"{name} is the last axis");

    /// <inheritdoc />
    public override string Describe() =>
        $"{(_domain.Length > 0 ? _domain + "::" : "")}{OpType}{(IsCommutative ? " (commutative)" : "")}{(_capture is null ? "" : " '" + _capture + "'")}";

    /// <summary>Matches this pattern with <paramref name="node"/> as the producer of the root value.</summary>
    public MatchResult Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (_outputIndex >= node.Outputs.Count)
            return MatchResult.Failed($"{Name(node)} has no output {_outputIndex}", node);
        return Match(node.Outputs[_outputIndex]);
    }

    internal override Failure? TryMatch(Value value, MatchState state)
    {
        if (value.Producer is not { } node)
        {
            string what = value.IsInitializer ? "an initializer" : value.IsGraphInput ? "a graph input" : "undefined";
            return new Failure($"{Name(value)} should come from {Describe()} but is {what}", null);
        }
        if (node.OpType != OpType || !DomainMatches(node))
            return new Failure($"{Name(value)} should come from {Describe()} but comes from {Name(node)}", node);
        if (value.ProducerOutputIndex != _outputIndex)
            return new Failure($"{Name(value)} is output {value.ProducerOutputIndex} of {Name(node)}, expected output {_outputIndex}", node);

        int present = node.Inputs.Count;
        while (present > 0 && node.Inputs[present - 1] is null)
            present--;
        if (present < _inputs.Length || (!_trailingInputs && present > _inputs.Length))
            return new Failure($"{Name(node)} has {present} inputs, {Describe()} wants {_inputs.Length}", node);

        foreach (var (predicate, description) in _guards)
        {
            if (!predicate(node))
                return new Failure($"{Name(node)} fails '{description}'", node);
        }

        if (_capture is not null)
        {
            if (state.BindNode(_capture, node) is { } f1)
                return f1;
            if (state.BindValue(_capture, value) is { } f2)
                return f2;
        }
        state.AddMatched(node);

        if (!IsCommutative)
            return MatchInputs(node, state, swapped: false);

        var mark = state.Mark();
        var straight = MatchInputs(node, state, swapped: false);
        if (straight is null)
            return null;
        state.Undo(mark);
        var swapped = MatchInputs(node, state, swapped: true);
        if (swapped is null)
            return null;
        return new Failure($"operands of {Name(node)} match in neither order: {straight.Value.Reason}; swapped: {swapped.Value.Reason}", straight.Value.Node);
    }

    private bool DomainMatches(Node node) =>
        _domain.Length == 0 || _domain == "ai.onnx" ? node.IsDefaultDomain : node.Domain == _domain;

    private Failure? MatchInputs(Node node, MatchState state, bool swapped)
    {
        for (int i = 0; i < _inputs.Length; i++)
        {
            int k = swapped ? 1 - i : i;
            if (node.Inputs[k] is not { } input)
                return new Failure($"input {k} of {Name(node)} is omitted, {_inputs[i].Describe()} wanted", node);
            if (_inputs[i].TryMatch(input, state) is { } failure)
                return failure;
        }
        return null;
    }
}

/// <summary>Matches the first of several alternatives that fits.</summary>
public sealed class OneOfPattern : Pattern
{
    private readonly Pattern[] _alternatives;

    internal OneOfPattern(Pattern[] alternatives)
    {
        if (alternatives.Length == 0)
            throw new ArgumentException("OneOf needs at least one alternative", nameof(alternatives));
        _alternatives = alternatives;
    }

    /// <inheritdoc />
    public override string Describe() => "one of (" + string.Join(" | ", _alternatives.Select(a => a.Describe())) + ")";

    internal override Failure? TryMatch(Value value, MatchState state)
    {
        var reasons = new List<string>();
        Node? at = null;
        foreach (var alternative in _alternatives)
        {
            var failure = alternative.TryMatchOrUndo(value, state);
            if (failure is null)
                return null;
            reasons.Add($"[{alternative.Describe()}] {failure.Value.Reason}");
            at ??= failure.Value.Node;
        }
        return new Failure($"no alternative matches {Name(value)}: {string.Join("; ", reasons)}", at ?? value.Producer);
    }
}

/// <summary>
/// Matches <c>Op(inner, ...)</c> or, when the value does not come from that op (or the op does not fit),
/// <c>inner</c> directly: an optional link in a chain such as a Cast or an inference Dropout.
/// </summary>
public sealed class OptionalPattern : Pattern
{
    private readonly OpPattern _wrapped;
    private readonly Pattern _inner;

    internal OptionalPattern(OpPattern wrapped, Pattern inner)
    {
        _wrapped = wrapped;
        _inner = inner;
    }

    /// <inheritdoc />
    public override string Describe() => $"[{_wrapped.OpType}?] {_inner.Describe()}";

    internal override Failure? TryMatch(Value value, MatchState state)
    {
        if (value.Producer is { } p && p.OpType == _wrapped.OpType)
        {
            var failure = _wrapped.TryMatchOrUndo(value, state);
            if (failure is null)
                return null;
        }
        return _inner.TryMatch(value, state);
    }
}
