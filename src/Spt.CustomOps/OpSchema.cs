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
/// error text for a value that is out of range, or null when it is valid.
/// </summary>
public sealed record AttributeSpec(
    string Name,
    AttributeKind Kind,
    object? Default,
    string Doc,
    Func<object, string?>? Check = null)
{
    public bool Required => Default is null;
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
