using System.Collections.ObjectModel;
using System.Globalization;
using Spt.Ir;

namespace Spt.CustomOps;

/// <summary>Dimension comparisons that shape rules need.</summary>
public static class DimRules
{
    /// <summary>Whether two dims are provably equal (same size, or same symbol).</summary>
    public static bool SameAs(this Dim a, Dim b) =>
        (a.Value.HasValue && b.Value == a.Value) || (!string.IsNullOrEmpty(a.Param) && b.Param == a.Param);

    /// <summary>Whether two dims are provably different (two different known sizes).</summary>
    public static bool ConflictsWith(this Dim a, Dim b) => a.Value.HasValue && b.Value.HasValue && a.Value != b.Value;

    /// <summary>Text of a type for messages, e.g. <c>f32[B,S,64]</c>.</summary>
    public static string Describe(this TensorType type) =>
        type.ElementType.ShortName() + (type.Shape is null ? "[*]" : "[" + string.Join(",", type.Shape) + "]");
}

/// <summary>Kinds of attribute value the sptc ops use.</summary>
public enum AttributeKind
{
    Int,
    Float,
    String,
}

/// <summary>
/// An attribute of an op: its name, kind, default (null = required) and allowed values. <c>Check</c> returns an
/// error text for a value that is out of range, or null when it is valid. <see cref="Rejected"/> lists values
/// outside the range (for the tests that hold the native library to the same range).
/// </summary>
public sealed record AttributeSpec(
    string Name,
    AttributeKind Kind,
    object? Default,
    string Doc,
    Func<object, string?>? Check = null)
{
    public bool Required => Default is null;

    /// <summary>Values the range excludes (examples on each side of it).</summary>
    public IReadOnlyList<object> Rejected { get; init; } = [];

    /// <summary>An int attribute that is 0 or 1.</summary>
    public static AttributeSpec Flag(string name, long defaultValue, string doc) =>
        new(name, AttributeKind.Int, defaultValue, doc, v => (long)v is 0 or 1 ? null : "must be 0 or 1") { Rejected = [2L, -1L] };

    /// <summary>A string attribute with a fixed set of values.</summary>
    public static AttributeSpec OneOf(string name, string defaultValue, string doc, IReadOnlyList<string> allowed)
    {
        var text = allowed.Count == 1 ? $"only \"{allowed[0]}\" is supported"
            : allowed.Count == 2 ? $"must be \"{allowed[0]}\" or \"{allowed[1]}\""
            : "must be one of " + string.Join(", ", allowed);
        return new(name, AttributeKind.String, defaultValue, doc, v => allowed.Contains((string)v) ? null : text) { Rejected = ["unknown"] };
    }
}

/// <summary>A formal input or output of an op.</summary>
public sealed record ParameterSpec(string Name, string Doc, IReadOnlyList<ElementType> ElementTypes, bool Optional = false);

/// <summary>Computes output types from input types and attribute values; throws <see cref="OpContractException"/>.</summary>
public delegate IReadOnlyList<TensorType?> ShapeRule(ShapeContext context);

/// <summary>
/// The contract of one sptc operator: inputs, outputs, attributes with defaults, and the shape rule. The native
/// library implements the same contract; the compiler passes and the autodiff read it from here.
/// </summary>
public sealed class OpSchema
{
    public OpSchema(
        string name,
        string doc,
        IEnumerable<ParameterSpec> inputs,
        IEnumerable<ParameterSpec> outputs,
        IEnumerable<AttributeSpec> attributes,
        ShapeRule shapeRule)
    {
        Name = name;
        Doc = doc;
        Inputs = new ReadOnlyCollection<ParameterSpec>([.. inputs]);
        Outputs = new ReadOnlyCollection<ParameterSpec>([.. outputs]);
        Attributes = new ReadOnlyCollection<AttributeSpec>([.. attributes]);
        ShapeRule = shapeRule;
    }

    public string Domain => CustomOpLibrary.Domain;

    public int SinceVersion => CustomOpLibrary.OpsetVersion;

    public string Name { get; }

    public string Doc { get; }

    public IReadOnlyList<ParameterSpec> Inputs { get; }

    public IReadOnlyList<ParameterSpec> Outputs { get; }

    public IReadOnlyList<AttributeSpec> Attributes { get; }

    public ShapeRule ShapeRule { get; }

    public AttributeSpec? FindAttribute(string name) => Attributes.FirstOrDefault(a => a.Name == name);

    /// <summary>
    /// The attributes of a node of this op: <paramref name="values"/> checked against the schema (names, kinds,
    /// ranges), in the given order; attributes not given are left to their defaults.
    /// </summary>
    /// <exception cref="OpContractException">An attribute is unknown, of the wrong kind or out of range.</exception>
    public IReadOnlyList<Ir.Attribute> NodeAttributes(params (string Name, object Value)[] values)
    {
        ResolveAttributes(values.ToDictionary(v => v.Name, v => v.Value, StringComparer.Ordinal));
        return [.. values.Select(v => Coerce(FindAttribute(v.Name)!, v.Value) switch
        {
            long l => Ir.Attribute.FromInt(v.Name, l),
            float f => Ir.Attribute.FromFloat(v.Name, f),
            string text => Ir.Attribute.FromString(v.Name, text),
            _ => throw new InvalidOperationException(v.Name),
        })];
    }

    /// <summary>Whether <paramref name="node"/> is a node of this op (domain and op type).</summary>
    public bool Is(Node node) => node.OpType == Name && node.Domain == Domain;

    /// <summary>The default of attribute <paramref name="name"/>.</summary>
    public object DefaultOf(string name) =>
        FindAttribute(name)?.Default ?? throw new InvalidOperationException($"{this} has no attribute '{name}' with a default");

    /// <summary>
    /// Checks attribute names, kinds and ranges, fills in defaults, and returns the complete attribute set.
    /// </summary>
    public IReadOnlyDictionary<string, object> ResolveAttributes(IReadOnlyDictionary<string, object>? given)
    {
        var resolved = new Dictionary<string, object>(StringComparer.Ordinal);
        foreach (var (name, value) in given ?? new Dictionary<string, object>())
        {
            var spec = FindAttribute(name)
                ?? throw new OpContractException(Name, $"unknown attribute '{name}'");
            resolved[name] = Coerce(spec, value);
        }

        foreach (var spec in Attributes)
        {
            if (!resolved.TryGetValue(spec.Name, out var value))
            {
                value = spec.Default ?? throw new OpContractException(Name, $"attribute '{spec.Name}' is required");
                resolved[spec.Name] = value;
            }

            if (spec.Check?.Invoke(value) is { } problem)
            {
                throw new OpContractException(Name, $"attribute '{spec.Name}' = {Format(value)}: {problem}");
            }
        }

        return resolved;
    }

    /// <summary>Infers output types for the given input types (null = absent optional input) and attributes.</summary>
    public IReadOnlyList<TensorType?> InferTypes(
        IReadOnlyList<TensorType?> inputs, IReadOnlyDictionary<string, object>? attributes = null)
    {
        if (inputs.Count > Inputs.Count)
        {
            throw new OpContractException(Name, $"takes at most {Inputs.Count} inputs, got {inputs.Count}");
        }

        for (var i = 0; i < Inputs.Count; i++)
        {
            var spec = Inputs[i];
            var type = i < inputs.Count ? inputs[i] : null;
            if (type is null)
            {
                if (!spec.Optional)
                {
                    throw new OpContractException(Name, $"input {i} '{spec.Name}' is required");
                }

                continue;
            }

            if (!spec.ElementTypes.Contains(type.ElementType))
            {
                throw new OpContractException(Name,
                    $"input {i} '{spec.Name}' has element type {type.ElementType.ShortName()}, expected " +
                    string.Join("/", spec.ElementTypes.Select(t => t.ShortName())));
            }
        }

        var context = new ShapeContext(this, inputs, ResolveAttributes(attributes));
        return ShapeRule(context);
    }

    public override string ToString() => $"{Domain}::{Name}";

    private object Coerce(AttributeSpec spec, object value) => (spec.Kind, value) switch
    {
        (AttributeKind.Int, long l) => l,
        (AttributeKind.Int, int i) => (long)i,
        (AttributeKind.Int, bool b) => b ? 1L : 0L,
        (AttributeKind.Float, float f) => f,
        (AttributeKind.Float, double d) => (float)d,
        (AttributeKind.Float, long l) => (float)l,
        (AttributeKind.Float, int i) => (float)i,
        (AttributeKind.String, string s) => s,
        _ => throw new OpContractException(Name,
            $"attribute '{spec.Name}' must be {spec.Kind.ToString().ToLowerInvariant()}, got {value.GetType().Name}"),
    };

    private static string Format(object value) =>
        value is string s ? $"'{s}'" : Convert.ToString(value, CultureInfo.InvariantCulture) ?? "?";
}

/// <summary>What a shape rule sees: the schema, the input types, and the resolved attributes.</summary>
public sealed class ShapeContext(OpSchema schema, IReadOnlyList<TensorType?> inputs, IReadOnlyDictionary<string, object> attributes)
{
    public OpSchema Schema { get; } = schema;

    public IReadOnlyDictionary<string, object> Attributes { get; } = attributes;

    /// <summary>Input <paramref name="index"/>, or null when it is an absent optional input.</summary>
    public TensorType? Input(int index) => index < inputs.Count ? inputs[index] : null;

    public bool HasInput(int index) => Input(index) is not null;

    public long Int(string name) => (long)Attributes[name];

    public float Float(string name) => (float)Attributes[name];

    public string String(string name) => (string)Attributes[name];

    /// <summary>Input <paramref name="index"/>'s shape, which must be known and of rank <paramref name="rank"/>.</summary>
    public IReadOnlyList<Dim>? ShapeOfRank(int index, int rank, string expected)
    {
        var type = Input(index) ?? throw Fail($"input {index} '{Schema.Inputs[index].Name}' is required");
        if (type.Shape is null)
        {
            return null;
        }

        return type.Shape.Count == rank
            ? type.Shape
            : throw Fail($"input {index} '{Schema.Inputs[index].Name}' has shape {type.Describe()}, expected {expected}");
    }

    /// <summary>Fails when two dims are provably different.</summary>
    public void RequireSame(Dim a, Dim b, string what)
    {
        if (a.ConflictsWith(b))
        {
            throw Fail($"{what}: {a} != {b}");
        }
    }

    public OpContractException Fail(string message) => new(Schema.Name, message);
}

/// <summary>An op's contract was violated (bad attribute, input type or shape); the message names the op.</summary>
public sealed class OpContractException(string opName, string message)
    : Exception($"{CustomOpLibrary.Domain}::{opName}: {message}")
{
    public string OpName { get; } = opName;
}
