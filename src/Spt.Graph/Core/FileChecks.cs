using System.Runtime.InteropServices;

namespace Spt.Ir;

/// <summary>What a path names, as the file system says (following symbolic links unless asked not to).</summary>
public enum PathKind
{
    /// <summary>Nothing is there.</summary>
    Missing,

    /// <summary>A regular file.</summary>
    File,

    /// <summary>A directory.</summary>
    Directory,

    /// <summary>A FIFO (named pipe): reading it blocks until someone writes.</summary>
    Fifo,

    /// <summary>A character or block device (for example /dev/null).</summary>
    Device,

    /// <summary>A socket.</summary>
    Socket,

    /// <summary>A chain of symbolic links that never ends (or is too long).</summary>
    SymlinkLoop,

    /// <summary>A symbolic link whose target does not exist.</summary>
    DanglingSymlink,

    /// <summary>Something the process may not look at, or another failure.</summary>
    Inaccessible,
}

/// <summary>
/// Checks of the paths sptc reads and writes, so that bad paths fail with one line before anything is opened:
/// an input must be a regular file (a FIFO would block, a device never ends); an output must not be a
/// directory, FIFO or device (renaming over <c>/dev/null</c> would destroy it); symbolic link loops are named.
/// </summary>
public static class FileChecks
{
    /// <summary>What <paramref name="path"/> names (links followed).</summary>
    public static PathKind Kind(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (OperatingSystem.IsLinux())
        {
            var kind = Posix.Stat(path, followLinks: true, out int errno);
            if (kind != null)
                return kind.Value;
            if (errno == Posix.ELOOP)
                return PathKind.SymlinkLoop;
            if (errno is 0 or Posix.ENOENT or Posix.ENOTDIR)
                return Posix.Stat(path, followLinks: false, out _) is PathKind ? PathKind.DanglingSymlink : PathKind.Missing;
            return PathKind.Inaccessible;
        }

        if (System.IO.Directory.Exists(path))
            return PathKind.Directory;
        return System.IO.File.Exists(path) ? PathKind.File : PathKind.Missing;
    }

    /// <summary>
    /// Throws <see cref="OnnxModelException"/> unless <paramref name="path"/> is a readable regular file;
    /// <paramref name="what"/> names it in the message ("model file", "data file").
    /// </summary>
    public static void RequireInputFile(string path, string what)
    {
        var kind = Kind(path);
        if (kind != PathKind.File)
            throw new OnnxModelException($"{what} '{path}' {Describe(kind)}");
    }

    /// <summary>
    /// Throws <see cref="OnnxModelException"/> unless <paramref name="path"/> can be created or replaced as a
    /// regular file: a non-empty name, an existing parent directory, and nothing there or a regular file.
    /// </summary>
    public static void RequireOutputFile(string path, string what)
    {
        string full = FullPath(path, what);
        RequireParent(full, path, what);
        var kind = Kind(full);
        if (kind is not (PathKind.Missing or PathKind.File))
            throw new OnnxModelException($"{what} '{path}' {Describe(kind)}; give a regular file path");
    }

    /// <summary>
    /// Throws <see cref="OnnxModelException"/> unless <paramref name="path"/> can be created as a directory (or is one):
    /// a non-empty name, an existing parent directory, and nothing there or a directory.
    /// </summary>
    public static void RequireOutputDirectory(string path, string what)
    {
        string full = FullPath(path, what);
        RequireParent(full, path, what);
        var kind = Kind(full);
        if (kind is not (PathKind.Missing or PathKind.Directory))
            throw new OnnxModelException($"{what} '{path}' {Describe(kind)}; give a directory path");
    }

    /// <summary>The path with every symbolic link resolved (null when it cannot be resolved).</summary>
    public static string? RealPath(string path)
    {
        if (OperatingSystem.IsLinux())
            return Posix.RealPath(path);
        try
        {
            var full = Path.GetFullPath(path);
            return System.IO.File.Exists(full) || System.IO.Directory.Exists(full)
                ? (new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full)
                : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Whether <paramref name="path"/> is <paramref name="directory"/> or inside it (both absolute, normalized).</summary>
    public static bool IsWithin(string path, string directory)
    {
        string dir = Path.TrimEndingDirectorySeparator(directory);
        return path.Equals(dir, StringComparison.Ordinal)
            || path.StartsWith(dir + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }

    /// <summary>The end of a message about a path of this kind: "does not exist", "is a FIFO", ...</summary>
    public static string Describe(PathKind kind) => kind switch
    {
        PathKind.Missing => "does not exist",
        PathKind.File => "is a file",
        PathKind.Directory => "is a directory",
        PathKind.Fifo => "is a FIFO (named pipe), not a regular file",
        PathKind.Device => "is a device, not a regular file",
        PathKind.Socket => "is a socket, not a regular file",
        PathKind.SymlinkLoop => "is a loop of symbolic links",
        PathKind.DanglingSymlink => "is a symbolic link to nothing",
        _ => "cannot be accessed",
    };

    private static string FullPath(string path, string what)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new OnnxModelException($"{what}: the path is empty");
        try
        {
            return Path.GetFullPath(path);
        }
        catch (Exception e) when (e is ArgumentException or PathTooLongException or NotSupportedException)
        {
            throw new OnnxModelException($"{what} '{path}' is not a usable path: {e.Message}", e);
        }
    }

    private static void RequireParent(string full, string path, string what)
    {
        string? parent = Path.GetDirectoryName(full);
        if (parent == null)
            throw new OnnxModelException($"{what} '{path}' names the root directory");
        var kind = Kind(parent);
        if (kind != PathKind.Directory)
            throw new OnnxModelException($"{what} '{path}': the directory '{parent}' {(kind == PathKind.File ? "is a file" : Describe(kind))}");
    }

    // Linux file status through statx, whose struct layout is the same on every architecture.
    private static unsafe class Posix
    {
        public const int ENOENT = 2;
        public const int ENOTDIR = 20;
        public const int ELOOP = 40;
        private const int AtFdCwd = -100;
        private const int AtSymlinkNoFollow = 0x100;
        private const uint StatxType = 0x1;
        private static bool _unavailable;

        [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
        private static extern int StatX(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte* buffer);

        [DllImport("libc", EntryPoint = "realpath", SetLastError = true)]
        private static extern IntPtr RealPathNative([MarshalAs(UnmanagedType.LPUTF8Str)] string path, IntPtr resolved);

        [DllImport("libc", EntryPoint = "free")]
        private static extern void Free(IntPtr p);

        /// <summary>The kind, or null with <paramref name="errno"/> set when stat fails.</summary>
        public static PathKind? Stat(string path, bool followLinks, out int errno)
        {
            errno = 0;
            if (_unavailable)
                return Managed(path);
            byte* buffer = stackalloc byte[256];
            int rc;
            try
            {
                rc = StatX(AtFdCwd, path, followLinks ? 0 : AtSymlinkNoFollow, StatxType, buffer);
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
            {
                _unavailable = true;
                return Managed(path);
            }
            if (rc != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return null;
            }
            // struct statx: stx_mode (u16) at byte 28; the file type is its S_IFMT bits.
            int mode = *(ushort*)(buffer + 28) & 0xF000;
            return mode switch
            {
                0x8000 => PathKind.File,
                0x4000 => PathKind.Directory,
                0x1000 => PathKind.Fifo,
                0x2000 or 0x6000 => PathKind.Device,
                0xC000 => PathKind.Socket,
                _ => PathKind.Inaccessible,
            };
        }

        public static string? RealPath(string path)
        {
            try
            {
                IntPtr p = RealPathNative(path, IntPtr.Zero);
                if (p == IntPtr.Zero)
                    return null;
                try
                {
                    return Marshal.PtrToStringUTF8(p);
                }
                finally
                {
                    Free(p);
                }
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
            {
                return System.IO.File.Exists(path) || System.IO.Directory.Exists(path) ? Path.GetFullPath(path) : null;
            }
        }

        private static PathKind? Managed(string path) =>
            System.IO.Directory.Exists(path) ? PathKind.Directory : System.IO.File.Exists(path) ? PathKind.File : null;
    }
}
