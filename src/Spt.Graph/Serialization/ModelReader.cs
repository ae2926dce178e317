using Google.Protobuf.Collections;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// Builds the IR from protobuf messages. The messages are owned by the reader: the parts the IR
/// models are moved out and what is left of each message (unknown fields, presence of optional
/// fields) is kept as that object's template for writing back.
/// </summary>
internal static class ModelReader
{
    // Names visible while reading a graph: its own values, then those of the enclosing graphs.
    private sealed class Scope(Graph graph, Scope? outer)
    {
        public Graph Graph { get; } = graph;

        public Value? Lookup(string name)
        {
            for (var s = this; s != null; s = s.Outer)
            {
                if (s.Graph.FindValue(name) is { } v)
                    return v;
            }
            return null;
        }

        public Scope? Outer { get; } = outer;
    }

    public static Model Read(ModelProto proto, ExternalDataStore? store)
    {
        var graph = ReadGraph(proto.Graph, null, store);
        var model = new Model(graph)
        {
            IrVersion = proto.IrVersion,
            ProducerName = proto.ProducerName,
            ProducerVersion = proto.ProducerVersion,
            Domain = proto.Domain,
            ModelVersion = proto.ModelVersion,
            DocString = proto.HasDocString ? proto.DocString : null,
            ExternalStore = store,
        };
        foreach (var o in proto.OpsetImport)
        {
            model.OpsetImports.Add(new OpsetImport(o.Domain, o.Version));
            model.OpsetTemplates.Add(o);
        }
        ReadMetadata(proto.MetadataProps, model.Metadata, model.MetadataTemplates);
        foreach (var f in proto.Functions)
            model.Functions.Add(new ModelFunction(f));
        foreach (var t in proto.TrainingInfo)
            model.TrainingInfo.Add(t);
        proto.Graph = null;
        proto.OpsetImport.Clear();
        proto.Functions.Clear();
        proto.TrainingInfo.Clear();
        model.Template = proto;
        return model;
    }

    internal static void ReadMetadata(RepeatedField<StringStringEntryProto> source, IList<KeyValuePair<string, string>> target, List<StringStringEntryProto> templates)
    {
        foreach (var e in source)
        {
            target.Add(new KeyValuePair<string, string>(e.Key, e.Value));
            templates.Add(e);
        }
        source.Clear();
    }

    private static Graph ReadGraph(GraphProto proto, Scope? outer, ExternalDataStore? store)
    {
        var g = new Graph(proto.Name) { DocString = proto.HasDocString ? proto.DocString : null };
        var scope = new Scope(g, outer);
        var metadataTemplates = new List<StringStringEntryProto>();
        ReadMetadata(proto.MetadataProps, g.Metadata, metadataTemplates);
        g.MetadataTemplates = metadataTemplates;

        foreach (var vi in proto.Input)
        {
            var v = new Value(vi.Name) { IsGraphInput = true };
            SetImportedType(v, vi);
            g.Register(v);
            g.InputList.Add(v);
            g.InputTemplates.Add(vi);
        }

        foreach (var tp in proto.Initializer)
        {
            var tensor = Tensor.FromProtoOwned(tp, store);
            var v = g.FindValue(tp.Name);
            if (v == null || !v.IsGraphInput || v.Initializer != null)
            {
                v = new Value(tp.Name);
                g.Register(v);
            }
            v.Initializer = tensor;
            if (v.Type == null)
                v.Type = v.ImportedType = new TensorType(tensor.ElementType, [.. tensor.Dims.Select(d => new Dim(d))]);
            g.InitializerList.Add(v);
        }

        foreach (var sp in proto.SparseInitializer)
        {
            var sparse = SparseTensor.FromProtoOwned(sp, store);
            var v = g.FindValue(sparse.Name);
            if (v == null || !v.IsGraphInput || v.IsInitializer)
            {
                v = new Value(sparse.Name);
                g.Register(v);
            }
            v.SparseInitializer = sparse;
            g.SparseInitializerList.Add(v);
        }

        // First pass: every node and its outputs, so that any node (or subgraph) can refer to them.
        var nodes = new List<(Node Node, NodeProto Proto)>(proto.Node.Count);
        foreach (var np in proto.Node)
        {
            var node = new Node(np.OpType, np.Domain)
            {
                Name = np.Name,
                Overload = np.Overload,
                DocString = np.HasDocString ? np.DocString : null,
                Graph = g,
            };
            for (int i = 0; i < np.Output.Count; i++)
            {
                var o = new Value(np.Output[i]) { Producer = node, ProducerOutputIndex = i };
                node.OutputList.Add(o);
                if (o.Name.Length > 0)
                    g.Register(o);
                else
                    o.Graph = g;
            }
            var nodeMetadataTemplates = new List<StringStringEntryProto>();
            ReadMetadata(np.MetadataProps, node.Metadata, nodeMetadataTemplates);
            node.MetadataTemplates = nodeMetadataTemplates;
            g.Nodes.AddLast(node);
            nodes.Add((node, np));
        }

        foreach (var vi in proto.ValueInfo)
        {
            var v = g.FindValue(vi.Name);
            if (v == null)
            {
                // An annotation for a name nothing in this graph defines: kept as is.
                v = new Value(vi.Name) { Graph = g };
            }
            SetImportedType(v, vi);
            g.ValueInfoList.Add(v);
            g.ValueInfoTemplates.Add(vi);
        }

        foreach (var vi in proto.Output)
        {
            var v = scope.Lookup(vi.Name) ?? Undefined(g, vi.Name);
            SetImportedType(v, vi);
            v.GraphOutputCount++;
            g.OutputList.Add(v);
            g.OutputTemplates.Add(vi);
        }

        // Second pass: attributes (subgraphs see this graph's values) and inputs.
        foreach (var (node, np) in nodes)
        {
            foreach (var ap in np.Attribute)
                node.Attributes.Add(Attribute.FromProtoOwned(ap, gp => ReadGraph(gp, scope, store), store));
            for (int i = 0; i < np.Input.Count; i++)
            {
                string name = np.Input[i];
                Value? v = name.Length == 0 ? null : scope.Lookup(name) ?? Undefined(g, name);
                node.InputList.Add(v);
                v?.UseList.Add(new Use(node, i));
            }
            np.Input.Clear();
            np.Output.Clear();
            np.Attribute.Clear();
            node.Template = np;
        }

        foreach (var qa in proto.QuantizationAnnotation)
            g.QuantizationAnnotations.Add(qa);

        proto.Node.Clear();
        proto.Initializer.Clear();
        proto.SparseInitializer.Clear();
        proto.Input.Clear();
        proto.Output.Clear();
        proto.ValueInfo.Clear();
        proto.QuantizationAnnotation.Clear();
        g.Template = proto;
        return g;
    }

    // A name that nothing defines: one placeholder value per graph and name, reported by the verifier.
    private static Value Undefined(Graph g, string name)
    {
        if (!g.UndefinedValues.TryGetValue(name, out var v))
        {
            v = new Value(name) { Graph = g };
            g.UndefinedValues.Add(name, v);
        }
        return v;
    }

    private static void SetImportedType(Value v, ValueInfoProto vi)
    {
        if (v.Type == null && vi.Type != null)
            v.Type = v.ImportedType = OnnxType.FromProto(vi.Type);
    }

    /// <summary>Every tensor of the model: initializers and tensor attributes, in all graphs.</summary>
    public static IEnumerable<Tensor> AllTensors(Model model) => AllTensors(model.Graph);

    public static IEnumerable<Tensor> AllTensors(Graph graph)
    {
        foreach (var v in graph.Initializers)
            yield return v.Initializer!;
        foreach (var v in graph.SparseInitializers)
        {
            yield return v.SparseInitializer!.Values;
            yield return v.SparseInitializer.Indices;
        }
        foreach (var n in graph.Nodes)
        {
            foreach (var a in n.Attributes)
            {
                switch (a.RawValue)
                {
                    case Tensor t:
                        yield return t;
                        break;
                    case Tensor[] ts:
                        foreach (var t in ts)
                            yield return t;
                        break;
                    case SparseTensor st:
                        yield return st.Values;
                        yield return st.Indices;
                        break;
                    case SparseTensor[] sts:
                        foreach (var st in sts)
                        {
                            yield return st.Values;
                            yield return st.Indices;
                        }
                        break;
                }
                foreach (var sub in a.Graphs)
                {
                    foreach (var t in AllTensors(sub))
                        yield return t;
                }
            }
        }
    }
}
