using System.Diagnostics;

namespace Spt.Ir;

/// <summary>A use of a value: input <see cref="InputIndex"/> of <see cref="Node"/>.</summary>
/// <param name="Node">The consuming node (possibly inside a subgraph, for outer-scope references).</param>
/// <param name="InputIndex">Position in the node's inputs.</param>
public readonly record struct Use(Node Node, int InputIndex);

/// <summary>
/// A named SSA value: a graph input, an initializer, or an output of a node. A value knows its
/// producer and its uses in the order they were created; both change only through
/// <see cref="GraphEditor"/>. A value defined in a graph can be used by nodes of that graph's
/// subgraphs (outer-scope reference); such uses appear in <see cref="Uses"/> too.
/// </summary>
[DebuggerDisplay("{DebuggerText,nq}")]
public sealed class Value
{
    internal readonly List<Use> UseList = [];
    internal int GraphOutputCount;

    /// <summary>Set on outputs of a detached node that get a generated name on insertion.</summary>
    internal bool PendingName;

    internal Value(string name, OnnxType? type = null)
    {
        Name = name;
        Type = type;
    }

    /// <summary>The name; empty for an omitted optional node output. Change it with <see cref="GraphEditor.Rename"/>.</summary>
    public string Name { get; internal set; }

    /// <summary>Type and shape, when known. Annotations may be changed freely (e.g. by shape inference).</summary>
    public OnnxType? Type { get; set; }

    /// <summary>Element type when <see cref="Type"/> is a tensor type.</summary>
    public ElementType? ElementType => (Type as TensorType)?.ElementType;

    /// <summary>Dimensions when <see cref="Type"/> is a tensor type of known rank.</summary>
    public IReadOnlyList<Dim>? Shape => (Type as TensorType)?.Shape;

    /// <summary>The graph this value is defined in (null for a value of a detached node).</summary>
    public Graph? Graph { get; internal set; }

    /// <summary>The node that produces this value, or null for inputs, initializers and undefined names.</summary>
    public Node? Producer { get; internal set; }

    /// <summary>Index of this value among <see cref="Producer"/>'s outputs, or -1.</summary>
    public int ProducerOutputIndex { get; internal set; } = -1;

    /// <summary>Uses in creation order (a node using the value twice appears twice).</summary>
    public IReadOnlyList<Use> Uses => UseList;

    /// <summary>Whether the value is listed among its graph's inputs.</summary>
    public bool IsGraphInput { get; internal set; }

    /// <summary>Whether the value is listed among its graph's outputs.</summary>
    public bool IsGraphOutput => GraphOutputCount > 0;

    /// <summary>The initializer tensor that gives this value its (default) content, if any.</summary>
    public Tensor? Initializer { get; internal set; }

    /// <summary>The sparse initializer defining this value, if any.</summary>
    public SparseTensor? SparseInitializer { get; internal set; }

    /// <summary>Whether an initializer (dense or sparse) defines this value.</summary>
    public bool IsInitializer => Initializer != null || SparseInitializer != null;

    /// <summary>Whether this is an omitted optional node output (empty name).</summary>
    public bool IsOmitted => Name.Length == 0;

    /// <summary>Whether anything defines the value: a producer, a graph input or an initializer.</summary>
    public bool IsDefined => Producer != null || IsGraphInput || IsInitializer;

    /// <summary>The type as read from the model (to tell whether <see cref="Type"/> was changed since).</summary>
    internal OnnxType? ImportedType { get; set; }

    private string DebuggerText => $"%{Name}{(Type != null ? ":" + Type : "")} ({UseList.Count} uses{(Producer != null ? ", from " + Producer.OpType : "")})";

    /// <inheritdoc />
    public override string ToString() => "%" + Name;
}
