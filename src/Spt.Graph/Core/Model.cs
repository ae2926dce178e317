using System.Diagnostics;
using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir;

/// <summary>An operator set a model imports: a domain ("" is the default ONNX domain) and its version.</summary>
/// <param name="Domain">Operator domain.</param>
/// <param name="Version">Operator set version.</param>
public sealed record OpsetImport(string Domain, long Version);

/// <summary>A model-local function, kept exactly as read (its body is not part of the IR).</summary>
public sealed class ModelFunction
{
    /// <summary>Wraps a function message (owned by this object afterwards).</summary>
    public ModelFunction(FunctionProto proto)
    {
        Proto = proto ?? throw new ArgumentNullException(nameof(proto));
    }

    /// <summary>The function message.</summary>
    public FunctionProto Proto { get; }

    /// <summary>Function (op type) name.</summary>
    public string Name => Proto.Name;

    /// <summary>Domain nodes use to call it.</summary>
    public string Domain => Proto.Domain;

    /// <summary>Overload selector, or empty.</summary>
    public string Overload => Proto.Overload;
}

/// <summary>How <see cref="Model.Load(string, LoadOptions?)"/> and related methods read a model.</summary>
public sealed class LoadOptions
{
    /// <summary>Run <see cref="GraphVerifier"/> after loading and reject broken graphs (default true).</summary>
    public bool Verify { get; init; } = true;

    /// <summary>
    /// Directory that external data locations are relative to when loading from a stream or bytes
    /// (loading from a file uses the file's directory).
    /// </summary>
    public string? ExternalDataDirectory { get; init; }
}

/// <summary>When a saved model puts tensor data into a separate file.</summary>
public enum ExternalDataMode
{
    /// <summary>Only when the model would not fit a 2 GB protobuf message.</summary>
    Auto,
    /// <summary>Always, for initializers of at least <see cref="SaveOptions.ExternalDataThreshold"/> bytes.</summary>
    Always,
    /// <summary>Never; saving a model over 2 GB then fails.</summary>
    Never,
}

/// <summary>How <see cref="Model.Save(string, SaveOptions?)"/> writes a model.</summary>
public sealed class SaveOptions
{
    /// <summary>When to use external data (default <see cref="ExternalDataMode.Auto"/>).</summary>
    public ExternalDataMode ExternalData { get; init; } = ExternalDataMode.Auto;

    /// <summary>Initializers with at least this many bytes go to the external file when external data is used (default 1024).</summary>
    public long ExternalDataThreshold { get; init; } = 1024;

    /// <summary>
    /// Whether to force written files to disk before renaming them into place (default true). The
    /// rename is atomic either way; flushing also makes the result survive a power loss.
    /// </summary>
    public bool FlushToDisk { get; init; } = true;

    /// <summary>File name of the external data file, next to the model (default: the model's file name + ".data").</summary>
    public string? ExternalDataFileName { get; init; }

    /// <summary>
    /// Initializers still read unchanged from a loaded model's external data file are written as references to that
    /// file (path relative to the output's directory) instead of being copied; the file must lie in the output's
    /// directory or below it, and is not rewritten. Everything else is saved as usual.
    /// </summary>
    public bool ReferenceSourceData { get; init; }

    /// <summary>
    /// With <see cref="ReferenceSourceData"/>: the directory the saved model will finally live in when it is written
    /// elsewhere first and moved (staged outputs); the references are relative to it. Default: the output's directory.
    /// </summary>
    public string? FinalDirectory { get; init; }
}

/// <summary>
/// An ONNX model: header fields, opset imports, metadata, the main <see cref="Graph"/>, model-local
/// functions and training info. Read and written losslessly: fields this library does not model,
/// unknown protobuf fields, node and attribute order and initializer bytes come back as read.
/// A model loaded from a file with external data keeps that file memory-mapped until disposed.
/// </summary>
[DebuggerDisplay("model ir{IrVersion} ({Graph.Nodes.Count} nodes)")]
public sealed class Model : IDisposable
{
    /// <summary>Creates a model around <paramref name="graph"/> (which must not be a subgraph or belong to another model).</summary>
    public Model(Graph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        if (graph.OwningNode != null || graph.OwnerModel != null)
            throw new ArgumentException("graph already belongs to a node or model", nameof(graph));
        Graph = graph;
        graph.OwnerModel = this;
    }

    /// <summary>ONNX IR version.</summary>
    public long IrVersion { get; set; } = 8;

    /// <summary>Operator sets imported, in order.</summary>
    public IList<OpsetImport> OpsetImports { get; } = new List<OpsetImport>();

    /// <summary>Name of the tool that produced the model.</summary>
    public string ProducerName { get; set; } = "";

    /// <summary>Version of the producing tool.</summary>
    public string ProducerVersion { get; set; } = "";

    /// <summary>Reverse-DNS model namespace.</summary>
    public string Domain { get; set; } = "";

    /// <summary>Model version.</summary>
    public long ModelVersion { get; set; }

    /// <summary>Documentation string, or null.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties in order.</summary>
    public IList<KeyValuePair<string, string>> Metadata { get; } = new List<KeyValuePair<string, string>>();

    /// <summary>The main graph.</summary>
    public Graph Graph { get; }

    /// <summary>Model-local functions, in order.</summary>
    public IList<ModelFunction> Functions { get; } = new List<ModelFunction>();

    /// <summary>Training information, kept as read.</summary>
    public IList<TrainingInfoProto> TrainingInfo { get; } = new List<TrainingInfoProto>();

    internal ModelProto? Template { get; set; }
    internal List<OperatorSetIdProto> OpsetTemplates { get; } = [];
    internal List<StringStringEntryProto> MetadataTemplates { get; } = [];
    internal ExternalDataStore? ExternalStore { get; set; }

    /// <summary>Version imported for <paramref name="domain"/> ("" and "ai.onnx" are the same), or null.</summary>
    public long? GetOpsetVersion(string domain)
    {
        bool isDefault = domain.Length == 0 || domain == "ai.onnx";
        foreach (var o in OpsetImports)
        {
            if (o.Domain == domain || (isDefault && (o.Domain.Length == 0 || o.Domain == "ai.onnx")))
                return o.Version;
        }
        return null;
    }

    /// <summary>Imports <paramref name="domain"/> at <paramref name="version"/>, replacing an existing import of it.</summary>
    public void SetOpset(string domain, long version)
    {
        for (int i = 0; i < OpsetImports.Count; i++)
        {
            if (OpsetImports[i].Domain == domain)
            {
                OpsetImports[i] = new OpsetImport(domain, version);
                return;
            }
        }
        OpsetImports.Add(new OpsetImport(domain, version));
    }

    /// <summary>Releases memory-mapped external data; tensors with external data are unreadable afterwards.</summary>
    public void Dispose() => ExternalStore?.Dispose();

    // ---------------------------------------------------------------- loading

    /// <summary>Loads a model file; external data is resolved relative to the file's directory.</summary>
    public static Model Load(string path, LoadOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // A FIFO or device would block or never end, a link loop fails to open: refuse them before opening.
        FileChecks.RequireInputFile(path, "model file");
        ModelProto proto;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            proto = Parse(() => ModelProto.Parser.ParseFrom(stream), $"'{path}'");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OnnxModelException($"cannot read model file '{path}': {FirstLine(e.Message)}", e);
        }
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        return FromOwnedProto(proto, new ExternalDataStore(dir), options, $"'{path}'");
    }

    /// <summary>Loads a model from a stream.</summary>
    public static Model Load(Stream stream, LoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var proto = Parse(() => ModelProto.Parser.ParseFrom(stream), "the stream");
        return FromOwnedProto(proto, StoreFor(options), options, "the stream");
    }

    /// <summary>Loads a model from serialized bytes.</summary>
    public static Model FromBytes(ReadOnlySpan<byte> bytes, LoadOptions? options = null)
    {
        byte[] copy = bytes.ToArray();
        var proto = Parse(() => ModelProto.Parser.ParseFrom(copy), "the data");
        return FromOwnedProto(proto, StoreFor(options), options, "the data");
    }

    /// <summary>Builds a model from a message (the message is copied, not kept).</summary>
    public static Model FromProto(ModelProto proto, LoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(proto);
        return FromOwnedProto(proto.Clone(), StoreFor(options), options, "the message");
    }

    private static ExternalDataStore? StoreFor(LoadOptions? options) =>
        options?.ExternalDataDirectory is { } dir ? new ExternalDataStore(Path.GetFullPath(dir)) : null;

    private static ModelProto Parse(Func<ModelProto> parse, string what)
    {
        try
        {
            return parse();
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new OnnxModelException($"{what} is not a valid ONNX model: {FirstLine(e.Message)}", e);
        }
    }

    private static string FirstLine(string s)
    {
        int i = s.IndexOf('\n', StringComparison.Ordinal);
        return (i < 0 ? s : s[..i]).TrimEnd();
    }

    private static Model FromOwnedProto(ModelProto proto, ExternalDataStore? store, LoadOptions? options, string what)
    {
        if (proto.Graph == null)
            throw new OnnxModelException($"{what} is not an ONNX model: it has no graph");
        if (proto.IrVersion <= 0)
            throw new OnnxModelException($"{what} is not an ONNX model: ir_version is {(proto.HasIrVersion ? proto.IrVersion.ToString(System.Globalization.CultureInfo.InvariantCulture) : "missing")}");
        Model? model = null;
        try
        {
            ModelValidator.CheckProto(proto, what);
            model = ModelReader.Read(proto, store);
            ModelValidator.CheckNodes(model.Graph);
            foreach (var t in ModelReader.AllTensors(model))
                t.ValidateExternal();
            if (options?.Verify ?? true)
                GraphVerifier.VerifyOrThrow(model.Graph);
            return model;
        }
        catch
        {
            store?.Dispose();
            throw;
        }
    }

    // ---------------------------------------------------------------- saving

    /// <summary>
    /// Saves to a file, atomically: everything is written to temporary files in the same directory
    /// and renamed into place only when complete. Large initializers go to one external data file
    /// next to the model as <paramref name="options"/> says (by default only when the model exceeds
    /// what one protobuf message can hold, 2 GB).
    /// </summary>
    public void Save(string path, SaveOptions? options = null) => ModelWriter.SaveToFile(this, path, options ?? new SaveOptions());

    /// <summary>Writes the model to a stream with all tensor data inline (fails over 2 GB).</summary>
    public void Save(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var proto = ModelWriter.ToProtoInline(this);
        proto.WriteTo(stream);
    }

    /// <summary>Serializes the model with all tensor data inline (fails over 2 GB).</summary>
    public byte[] ToBytes() => ModelWriter.ToProtoInline(this).ToByteArray();

    /// <summary>
    /// The model as a message with all tensor data inline. The message may share immutable tensor
    /// buffers with the model; treat it as read-only or clone it.
    /// </summary>
    public ModelProto ToProto() => ModelWriter.ToProtoInline(this);
}
