using System.Text;

namespace Spt.Ir;

/// <summary>A graph input or output as the summary shows it.</summary>
/// <param name="Name">Value name.</param>
/// <param name="Type">Type, when known.</param>
public sealed record ValueSummary(string Name, OnnxType? Type)
{
    /// <summary>Element type for tensor values.</summary>
    public ElementType? ElementType => (Type as TensorType)?.ElementType;

    /// <summary>Dimensions as text (sizes, symbolic names, or "?"), or null when the rank is unknown.</summary>
    public IReadOnlyList<string>? Dims => (Type as TensorType)?.Shape?.Select(d => d.ToString()).ToList();

    /// <summary>Type as text, e.g. <c>f32[B,S,768]</c>, or "?".</summary>
    public string TypeText => Type?.ToString() ?? "?";
}

/// <summary>
/// Facts about a model for <c>sptc inspect</c>: header, interface, size of the computation and of
/// its parameters. Graph inputs that an initializer defines are parameters, not inputs.
/// </summary>
public sealed class ModelSummary
{
    private ModelSummary()
    {
    }

    /// <summary>ONNX IR version.</summary>
    public long IrVersion { get; private init; }

    /// <summary>Operator sets imported.</summary>
    public IReadOnlyList<OpsetImport> Opsets { get; private init; } = [];

    /// <summary>Producer name.</summary>
    public string ProducerName { get; private init; } = "";

    /// <summary>Producer version.</summary>
    public string ProducerVersion { get; private init; } = "";

    /// <summary>Name of the main graph.</summary>
    public string GraphName { get; private init; } = "";

    /// <summary>Inputs a caller feeds (initializer-backed inputs excluded).</summary>
    public IReadOnlyList<ValueSummary> Inputs { get; private init; } = [];

    /// <summary>Graph outputs.</summary>
    public IReadOnlyList<ValueSummary> Outputs { get; private init; } = [];

    /// <summary>Nodes of the main graph.</summary>
    public int NodeCount { get; private init; }

    /// <summary>Nodes including those of all subgraphs.</summary>
    public int TotalNodeCount { get; private init; }

    /// <summary>Node count per op type (<c>domain::Op</c> outside the default domain), over all graphs, most frequent first, then by name.</summary>
    public IReadOnlyList<KeyValuePair<string, int>> OpHistogram { get; private init; } = [];

    /// <summary>Initializers (dense and sparse) in all graphs.</summary>
    public int InitializerCount { get; private init; }

    /// <summary>Elements of all initializers (sparse ones: stored values).</summary>
    public long ParameterCount { get; private init; }

    /// <summary>Bytes of all initializers' data (string tensors not counted).</summary>
    public long ParameterBytes { get; private init; }

    /// <summary>Initializers whose data lives in external files.</summary>
    public int ExternalInitializerCount { get; private init; }

    /// <summary>Bytes of initializer data that lives in external files.</summary>
    public long ExternalParameterBytes { get; private init; }

    /// <summary>Subgraphs at any depth.</summary>
    public int SubgraphCount { get; private init; }

    /// <summary>Model-local functions.</summary>
    public int FunctionCount { get; private init; }

    /// <summary>Computes the summary of <paramref name="model"/>.</summary>
    public static ModelSummary Of(Model model)
    {
        var graphs = new List<Graph> { model.Graph };
        graphs.AddRange(model.Graph.AllSubgraphs());
        var histogram = new Dictionary<string, int>(StringComparer.Ordinal);
        int initializers = 0, external = 0;
        long parameters = 0, bytes = 0, externalBytes = 0;
        foreach (var g in graphs)
        {
            foreach (var n in g.Nodes)
            {
                string key = n.IsDefaultDomain ? n.OpType : $"{n.Domain}::{n.OpType}";
                histogram[key] = histogram.GetValueOrDefault(key) + 1;
            }
            foreach (var v in g.Initializers)
            {
                var t = v.Initializer!;
                initializers++;
                parameters += t.ElementCount;
                long b = Math.Max(0, t.ByteLength);
                bytes += b;
                if (t.IsExternal)
                {
                    external++;
                    externalBytes += b;
                }
            }
            foreach (var v in g.SparseInitializers)
            {
                var s = v.SparseInitializer!;
                initializers++;
                parameters += s.Values.ElementCount;
                bytes += Math.Max(0, s.Values.ByteLength) + Math.Max(0, s.Indices.ByteLength);
            }
        }
        return new ModelSummary
        {
            IrVersion = model.IrVersion,
            Opsets = [.. model.OpsetImports],
            ProducerName = model.ProducerName,
            ProducerVersion = model.ProducerVersion,
            GraphName = model.Graph.Name,
            Inputs = [.. model.Graph.RequiredInputs.Select(v => new ValueSummary(v.Name, v.Type))],
            Outputs = [.. model.Graph.Outputs.Select(v => new ValueSummary(v.Name, v.Type))],
            NodeCount = model.Graph.Nodes.Count,
            TotalNodeCount = graphs.Sum(g => g.Nodes.Count),
            OpHistogram = [.. histogram.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)],
            InitializerCount = initializers,
            ParameterCount = parameters,
            ParameterBytes = bytes,
            ExternalInitializerCount = external,
            ExternalParameterBytes = externalBytes,
            SubgraphCount = graphs.Count - 1,
            FunctionCount = model.Functions.Count,
        };
    }

    /// <summary>A plain multi-line rendering (the CLI may format differently).</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append("ir_version: ").Append(IrVersion).Append('\n');
        sb.Append("opsets: ").AppendJoin(", ", Opsets.Select(o => $"{(o.Domain.Length == 0 ? "ai.onnx" : o.Domain)}:{o.Version}")).Append('\n');
        sb.Append("producer: ").Append(ProducerName).Append(' ').Append(ProducerVersion).Append('\n');
        foreach (var v in Inputs)
            sb.Append("input  ").Append(v.Name).Append(": ").Append(v.TypeText).Append('\n');
        foreach (var v in Outputs)
            sb.Append("output ").Append(v.Name).Append(": ").Append(v.TypeText).Append('\n');
        sb.Append("nodes: ").Append(NodeCount).Append(" (").Append(TotalNodeCount).Append(" with subgraphs), subgraphs: ").Append(SubgraphCount).Append('\n');
        sb.Append("parameters: ").Append(ParameterCount).Append(" in ").Append(InitializerCount).Append(" initializers, ")
          .Append(ParameterBytes).Append(" bytes (").Append(ExternalParameterBytes).Append(" external in ").Append(ExternalInitializerCount).Append(")\n");
        sb.Append("ops: ").AppendJoin(", ", OpHistogram.Select(kv => $"{kv.Key}={kv.Value}")).Append('\n');
        return sb.ToString();
    }
}
