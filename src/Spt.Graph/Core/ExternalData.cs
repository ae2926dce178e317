using System.Buffers;
using System.IO.MemoryMappedFiles;

namespace Spt.Ir;

/// <summary>Where a tensor's bytes live outside the model file.</summary>
/// <param name="Location">Path of the data file as written in the model (relative to the model's directory).</param>
/// <param name="Offset">Byte offset of the tensor's data in that file.</param>
/// <param name="Length">Number of bytes, or null when the model did not say (then: up to the end of the file).</param>
public sealed record ExternalDataLocation(string Location, long Offset, long? Length);

/// <summary>
/// The external data files of one loaded model, memory-mapped on first use and shared by all its
/// tensors, so no tensor's bytes are read into managed memory unless asked for.
/// </summary>
internal sealed class ExternalDataStore : IDisposable
{
    private readonly Dictionary<string, MappedFile> _files = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private bool _disposed;

    public ExternalDataStore(string directory) => Directory = directory;

    /// <summary>Directory that external locations are relative to.</summary>
    public string Directory { get; }

    /// <summary>
    /// The file a location names. Like ONNX's checker, refuses locations that could read anything but the model's own
    /// data: absolute paths, paths that leave the model's directory (<c>..</c>), and symbolic links whose target lies
    /// outside it; a device, FIFO or directory is not a data file either.
    /// </summary>
    /// <exception cref="OnnxModelException">The location is refused; the message names <paramref name="tensor"/>.</exception>
    public string Resolve(string location, string tensor)
    {
        string Refuse(string why) => throw new OnnxModelException($"tensor '{tensor}': external data location '{location}' {why}");
        if (location.Length == 0 || location.Contains('\0'))
            Refuse("is not a file name");
        if (Path.IsPathRooted(location) || location.StartsWith('/') || location.StartsWith('\\'))
            Refuse("is an absolute path; external data must lie in the model's directory");
        string root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(Directory));
        string path = Path.GetFullPath(Path.Combine(root, location));
        if (!FileChecks.IsWithin(path, root) || path == root)
            Refuse($"leaves the model's directory '{root}'");
        var kind = FileChecks.Kind(path);
        if (kind == PathKind.Missing)
            throw new OnnxModelException($"tensor '{tensor}': external data file '{location}' does not exist (looked for '{path}')");
        if (kind != PathKind.File)
            Refuse(FileChecks.Describe(kind));
        // Symbolic links (of the file or of a folder on the way) must stay inside the model's directory too.
        string? realRoot = FileChecks.RealPath(root);
        string? realPath = FileChecks.RealPath(path);
        if (realRoot == null || realPath == null || !FileChecks.IsWithin(realPath, realRoot))
            Refuse($"leads outside the model's directory (to '{realPath ?? "?"}') through a symbolic link");
        return path;
    }

    /// <summary>Maps (once) the file and returns its mapping.</summary>
    public MappedFile Get(string location, string tensor)
    {
        string path = Resolve(location, tensor);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_files.TryGetValue(path, out var file))
            {
                file = new MappedFile(path);
                _files.Add(path, file);
            }
            return file;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            foreach (var f in _files.Values)
                f.Dispose();
            _files.Clear();
        }
    }
}

/// <summary>A read-only memory mapping of a whole file.</summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;

    public MappedFile(string path)
    {
        Path = path;
        Length = new FileInfo(path).Length;
        if (Length == 0)
            return;
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
    }

    public string Path { get; }

    public long Length { get; }

    /// <summary>Memory over [offset, offset + length); valid while the owning store is alive.</summary>
    public ReadOnlyMemory<byte> Slice(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + length}) is outside '{Path}' ({Length} bytes)");
        if (length == 0)
            return ReadOnlyMemory<byte>.Empty;
        return new PointerMemoryManager(_base + offset, length).Memory;
    }

    /// <summary>Copies [offset, offset + length) to a stream in chunks (works beyond 2 GB).</summary>
    public void CopyTo(long offset, long length, Stream destination)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + length}) is outside '{Path}' ({Length} bytes)");
        const int Chunk = 1 << 24;
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(Chunk, length - done);
            destination.Write(new ReadOnlySpan<byte>(_base + offset + done, n));
            done += n;
        }
    }

    public void Dispose()
    {
        if (_view != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }

    private sealed class PointerMemoryManager(byte* pointer, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
