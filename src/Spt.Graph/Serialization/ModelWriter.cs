using Google.Protobuf;
using Google.Protobuf.Collections;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>
/// Writes the IR back to protobuf. Each object starts from the template kept when it was read, so
/// unknown fields and field presence survive; fields the IR models are set only where they differ.
/// </summary>
internal static class ModelWriter
{
    /// <summary>Largest tensor payload written inline; one protobuf message cannot exceed 2 GB.</summary>
    internal const long InlineLimit = int.MaxValue - (64L << 20);

    private const int ExternalAlignment = 4096;

    public static ModelProto ToProtoInline(Model model)
    {
        long total = ReadableBytes(ModelReader.AllTensors(model));
        if (total > InlineLimit)
            throw new OnnxModelException($"the model holds {total} bytes of tensor data, more than one protobuf message can hold (2 GB); save it to a file so large tensors go to external data");
        return ToProto(model, t => t.ToProtoInline());
    }

    public static ModelProto ToProto(Model model, Func<Tensor, TensorProto> writeInitializer)
    {
        var p = model.Template?.Clone() ?? new ModelProto();
        if (model.IrVersion != p.IrVersion || (!p.HasIrVersion && model.IrVersion != 0))
            p.IrVersion = model.IrVersion;
        p.OpsetImport.Clear();
        for (int i = 0; i < model.OpsetImports.Count; i++)
        {
            var o = model.OpsetImports[i];
            var t = i < model.OpsetTemplates.Count ? model.OpsetTemplates[i] : null;
            if (t != null && t.Domain == o.Domain && t.Version == o.Version)
            {
                p.OpsetImport.Add(t.Clone());
            }
            else
            {
                var n = new OperatorSetIdProto { Version = o.Version };
                if (o.Domain.Length > 0)
                    n.Domain = o.Domain;
                p.OpsetImport.Add(n);
            }
        }
        if (Differs(p.HasProducerName, p.ProducerName, model.ProducerName))
            p.ProducerName = model.ProducerName;
        if (Differs(p.HasProducerVersion, p.ProducerVersion, model.ProducerVersion))
            p.ProducerVersion = model.ProducerVersion;
        if (Differs(p.HasDomain, p.Domain, model.Domain))
            p.Domain = model.Domain;
        if (model.ModelVersion != p.ModelVersion)
            p.ModelVersion = model.ModelVersion;
        SetDoc(p.HasDocString, p.DocString, model.DocString, v => p.DocString = v, p.ClearDocString);
        p.Graph = WriteGraph(model.Graph, writeInitializer);
        WriteMetadata(model.Metadata, model.MetadataTemplates, p.MetadataProps);
        p.TrainingInfo.Clear();
        p.TrainingInfo.AddRange(model.TrainingInfo);
        p.Functions.Clear();
        p.Functions.AddRange(model.Functions.Select(f => f.Proto));
        return p;
    }

    private static GraphProto WriteGraph(Graph g, Func<Tensor, TensorProto> writeInitializer)
    {
        var p = g.Template?.Clone() ?? new GraphProto();
        if (Differs(p.HasName, p.Name, g.Name))
            p.Name = g.Name;
        SetDoc(p.HasDocString, p.DocString, g.DocString, v => p.DocString = v, p.ClearDocString);
        foreach (var n in g.Nodes)
            p.Node.Add(WriteNode(n, writeInitializer));
        foreach (var v in g.InitializerList)
            p.Initializer.Add(writeInitializer(v.Initializer!));
        foreach (var v in g.SparseInitializerList)
            p.SparseInitializer.Add(v.SparseInitializer!.ToProto(t => t.ToProtoInline()));
        for (int i = 0; i < g.InputList.Count; i++)
            p.Input.Add(WriteInfo(g.InputList[i], g.InputTemplates[i]));
        for (int i = 0; i < g.OutputList.Count; i++)
            p.Output.Add(WriteInfo(g.OutputList[i], g.OutputTemplates[i]));
        for (int i = 0; i < g.ValueInfoList.Count; i++)
        {
            var v = g.ValueInfoList[i];
            // Annotations of values removed from the graph are dropped.
            if (v.Graph == null)
                continue;
            p.ValueInfo.Add(WriteInfo(v, g.ValueInfoTemplates[i]));
        }
        // Types given to intermediate values since reading (by passes or the builder) get annotations too.
        var annotated = new HashSet<Value>(g.ValueInfoList, ReferenceEqualityComparer.Instance);
        foreach (var n in g.Nodes)
        {
            foreach (var v in n.OutputList)
            {
                if (v.Type != null && !ReferenceEquals(v.Type, v.ImportedType) && !v.IsGraphOutput && !v.IsOmitted && annotated.Add(v))
                    p.ValueInfo.Add(WriteInfo(v, null));
            }
        }
        p.QuantizationAnnotation.AddRange(g.QuantizationAnnotations);
        WriteMetadata(g.Metadata, g.MetadataTemplates, p.MetadataProps);
        return p;
    }

    private static NodeProto WriteNode(Node n, Func<Tensor, TensorProto> writeInitializer)
    {
        var p = n.Template?.Clone() ?? new NodeProto();
        foreach (var v in n.InputList)
            p.Input.Add(v?.Name ?? "");
        foreach (var v in n.OutputList)
            p.Output.Add(v.Name);
        if (Differs(p.HasName, p.Name, n.Name))
            p.Name = n.Name;
        if (Differs(p.HasOpType, p.OpType, n.OpType))
            p.OpType = n.OpType;
        if (Differs(p.HasDomain, p.Domain, n.Domain))
            p.Domain = n.Domain;
        if (Differs(p.HasOverload, p.Overload, n.Overload))
            p.Overload = n.Overload;
        SetDoc(p.HasDocString, p.DocString, n.DocString, v => p.DocString = v, p.ClearDocString);
        foreach (var a in n.Attributes)
            p.Attribute.Add(a.ToProto(g => WriteGraph(g, writeInitializer), t => t.ToProtoInline()));
        WriteMetadata(n.Metadata, n.MetadataTemplates, p.MetadataProps);
        return p;
    }

    private static ValueInfoProto WriteInfo(Value v, ValueInfoProto? template)
    {
        var p = template?.Clone() ?? new ValueInfoProto();
        if (Differs(p.HasName, p.Name, v.Name))
            p.Name = v.Name;
        // While the type is the one read, each entry keeps its own (they may differ in detail).
        if (template == null || !ReferenceEquals(v.Type, v.ImportedType))
            p.Type = v.Type?.ToProto();
        return p;
    }

    // A string field needs writing when its value changed, or when it was absent and is now non-empty.
    private static bool Differs(bool has, string current, string value) =>
        value != current || (!has && value.Length > 0);

    private static void SetDoc(bool has, string current, string? value, Action<string> set, Action clear)
    {
        if (value == null)
        {
            if (has)
                clear();
        }
        else if (!has || current != value)
        {
            set(value);
        }
    }

    internal static void WriteMetadata(IList<KeyValuePair<string, string>> list, List<StringStringEntryProto> templates, RepeatedField<StringStringEntryProto> target)
    {
        target.Clear();
        for (int i = 0; i < list.Count; i++)
        {
            var kv = list[i];
            var t = i < templates.Count ? templates[i] : null;
            target.Add(t != null && t.Key == kv.Key && t.Value == kv.Value
                ? t.Clone()
                : new StringStringEntryProto { Key = kv.Key, Value = kv.Value });
        }
    }

    private static long ReadableBytes(IEnumerable<Tensor> tensors)
    {
        long total = 0;
        foreach (var t in tensors.Distinct(ReferenceEqualityComparer.Instance).Cast<Tensor>())
            total += Math.Max(0, t.ByteLength);
        return total;
    }

    // ---------------------------------------------------------------- files

    public static void SaveToFile(Model model, string path, SaveOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir))
            throw new OnnxModelException($"cannot save model to '{path}': directory '{dir}' does not exist");
        FileChecks.RequireOutputFile(full, "model output");
        string dataName = options.ExternalDataFileName ?? Path.GetFileName(full) + ".data";
        if (dataName.IndexOfAny(['/', '\\']) >= 0)
            throw new ArgumentException($"external data file name '{dataName}' must be a plain file name", nameof(options));

        var all = ModelReader.AllTensors(model).Distinct(ReferenceEqualityComparer.Instance).Cast<Tensor>().ToList();
        long total = all.Sum(t => Math.Max(0, t.ByteLength));
        bool useExternal = options.ExternalData switch
        {
            ExternalDataMode.Always => true,
            ExternalDataMode.Never => false,
            _ => total > InlineLimit,
        };
        // Initializers still in the source's external file stay there (referenced, not copied) when asked.
        var referenced = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        if (options.ReferenceSourceData)
        {
            string home = Path.GetFullPath(options.FinalDirectory ?? dir);
            string outData = Path.GetFullPath(Path.Combine(home, dataName));
            foreach (var v in AllInitializerValues(model.Graph))
            {
                var t = v.Initializer!;
                if (!t.IsExternal || referenced.ContainsKey(t) || t.ExternalFilePath is not { } source)
                    continue;
                string relative = Path.GetRelativePath(home, source);
                if (Path.IsPathRooted(relative) || relative == ".." || relative.StartsWith(".." + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new OnnxModelException($"cannot save model to '{path}' referring to the source weights: '{source}' lies outside the output's directory '{home}' (external data must lie in the model's directory); write the output next to the weights or copy them");
                if (string.Equals(Path.GetFullPath(source), outData, StringComparison.Ordinal))
                    throw new OnnxModelException($"cannot save model to '{path}' referring to the source weights: its own external data file would overwrite '{source}'; choose another output name");
                referenced[t] = relative.Replace(Path.DirectorySeparatorChar, '/');
            }
        }
        if (options.ExternalData == ExternalDataMode.Auto)
            useExternal = total - referenced.Keys.Sum(t => Math.Max(0, t.ByteLength)) > InlineLimit;
        // Only dense initializers move out; tensor attributes and sparse parts stay inline.
        var external = new List<Tensor>();
        if (useExternal)
        {
            var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
            foreach (var v in AllInitializerValues(model.Graph))
            {
                var t = v.Initializer!;
                if (t.ByteLength > 0 && t.ByteLength >= options.ExternalDataThreshold && !referenced.ContainsKey(t) && seen.Add(t))
                    external.Add(t);
            }
        }
        if (external.Count > 0)
            FileChecks.RequireOutputFile(Path.Combine(dir, dataName), "external data output");
        long inline = total - external.Sum(t => t.ByteLength) - referenced.Keys.Sum(t => t.ByteLength);
        if (inline > InlineLimit)
        {
            throw new OnnxModelException(options.ExternalData == ExternalDataMode.Never
                ? $"cannot save model to '{path}': {inline} bytes of tensor data exceed what one protobuf message can hold (2 GB); allow external data"
                : $"cannot save model to '{path}': {inline} bytes of tensor data would stay inline, more than one protobuf message can hold (2 GB); lower ExternalDataThreshold");
        }

        string modelTmp = OutputCommit.TempSibling(full);
        string dataTmp = OutputCommit.TempSibling(Path.Combine(dir, dataName));
        try
        {
            var placement = new Dictionary<Tensor, (long Offset, long Length)>(ReferenceEqualityComparer.Instance);
            if (external.Count > 0)
            {
                using var fs = new FileStream(dataTmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
                foreach (var t in external)
                {
                    // Page-aligned offsets let readers map each tensor directly.
                    long pad = (ExternalAlignment - fs.Position % ExternalAlignment) % ExternalAlignment;
                    if (pad > 0)
                        fs.Write(new byte[pad]);
                    long offset = fs.Position;
                    t.CopyRawDataTo(fs);
                    long written = fs.Position - offset;
                    if (written != t.ByteLength)
                        throw new InvalidOperationException($"tensor '{t.Name}' wrote {written} bytes, expected {t.ByteLength}");
                    placement[t] = (offset, written);
                }
                fs.Flush(flushToDisk: options.FlushToDisk);
            }
            var proto = ToProto(model, t => placement.TryGetValue(t, out var at)
                ? t.ToProtoExternal(dataName, at.Offset, at.Length)
                : referenced.TryGetValue(t, out var location)
                    ? t.ToProtoExternal(location, t.External!.Offset, t.ByteLength)
                    : t.ToProtoInline());
            using (var fs = new FileStream(modelTmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                proto.WriteTo(fs);
                fs.Flush(flushToDisk: options.FlushToDisk);
            }
            if (external.Count > 0)
                File.Move(dataTmp, Path.Combine(dir, dataName), overwrite: true);
            File.Move(modelTmp, full, overwrite: true);
            OutputCommit.Release(dataTmp);
            OutputCommit.Release(modelTmp);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(dataTmp);
            TryDelete(modelTmp);
            OutputCommit.Release(dataTmp);
            OutputCommit.Release(modelTmp);
            throw new OnnxModelException($"cannot save model to '{path}': {e.Message}", e);
        }
        catch
        {
            TryDelete(dataTmp);
            TryDelete(modelTmp);
            OutputCommit.Release(dataTmp);
            OutputCommit.Release(modelTmp);
            throw;
        }
    }

    private static IEnumerable<Value> AllInitializerValues(Graph g)
    {
        foreach (var v in g.Initializers)
            yield return v;
        foreach (var sub in g.AllSubgraphs())
        {
            foreach (var v in sub.Initializers)
                yield return v;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            if (File.Exists(path))
                File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
