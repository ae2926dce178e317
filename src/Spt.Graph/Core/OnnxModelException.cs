namespace Spt.Ir;

/// <summary>
/// A problem with a model or with what a user asked for: an unreadable file, a graph that breaks
/// ONNX rules, a missing external data file. The message is one line that names the node (name, op
/// type, opset) when there is one. Broken internal invariants are reported with
/// <see cref="InvalidOperationException"/> instead, never with this type.
/// </summary>
public sealed class OnnxModelException : Exception
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public OnnxModelException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a one-line message and the exception that caused it.</summary>
    public OnnxModelException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    private OnnxModelException(string message, Node node, Exception? inner)
        : base(message, inner)
    {
        NodeName = node.Name;
        OpType = node.OpType;
        Domain = node.Domain;
        OpsetVersion = node.Graph?.Model?.GetOpsetVersion(node.Domain);
    }

    /// <summary>Name of the node the problem is about, if any.</summary>
    public string? NodeName { get; }

    /// <summary>Op type of the node the problem is about, if any.</summary>
    public string? OpType { get; }

    /// <summary>Domain of the node the problem is about, if any.</summary>
    public string? Domain { get; }

    /// <summary>Opset version imported for the node's domain, if known.</summary>
    public long? OpsetVersion { get; }

    /// <summary>
    /// An exception about <paramref name="node"/>; the message reads
    /// <c>node 'name' (Domain::OpType, opset N): problem</c>.
    /// </summary>
    public static OnnxModelException ForNode(Node node, string problem, Exception? inner = null) =>
        new($"{Describe(node)}: {problem}", node, inner);

    /// <summary>Describes a node for messages: <c>node 'name' (OpType, opset 17)</c>.</summary>
    public static string Describe(Node node)
    {
        string op = node.Domain.Length == 0 ? node.OpType : $"{node.Domain}::{node.OpType}";
        long? opset = node.Graph?.Model?.GetOpsetVersion(node.Domain);
        string name = node.Name.Length == 0 ? "<unnamed>" : $"'{node.Name}'";
        return opset is { } v ? $"node {name} ({op}, opset {v})" : $"node {name} ({op})";
    }
}
