using System.Runtime.InteropServices;
using System.Text;

namespace Spt.Runtime.Distributed;

/// <summary>
/// The C API of Open MPI's <c>libmpi</c>, bound at run time with <see cref="NativeLibrary"/>. In Open MPI every
/// handle (<c>MPI_Comm</c>, <c>MPI_Datatype</c>, <c>MPI_Op</c>, <c>MPI_Errhandler</c>, <c>MPI_Request</c>) is a
/// pointer, and the predefined ones are the addresses of exported globals (<c>MPI_COMM_WORLD</c> is
/// <c>&amp;ompi_mpi_comm_world</c>), so they are resolved with <see cref="NativeLibrary.GetExport"/>. MPICH's handles are
/// 32-bit integers fixed in its <c>mpi.h</c> (a different ABI): it is detected and refused with a clear message.
/// </summary>
internal static unsafe class MpiLibrary
{
    /// <summary><c>MPI_SUCCESS</c>.</summary>
    public const int Success = 0;

    /// <summary><c>MPI_THREAD_FUNNELED</c>: only the thread that initialized MPI calls it.</summary>
    public const int ThreadFunneled = 1;

    /// <summary>Open MPI's <c>MPI_IN_PLACE</c> (<c>(void*)1</c>).</summary>
    public static readonly nint InPlace = 1;

    private const int MaxErrorString = 256;

    private static readonly Lazy<Api> Loaded = new(Load);

    /// <summary>The bound functions and predefined handles (loads libmpi on first use).</summary>
    /// <exception cref="DistributedException">No usable Open MPI library.</exception>
    public static Api Functions => Loaded.Value;

    /// <summary>Function pointers and handles of one loaded libmpi.</summary>
    public sealed class Api
    {
        public required string LibraryPath { get; init; }

        public required nint CommWorld { get; init; }

        public required nint Float { get; init; }

        public required nint Byte { get; init; }

        public required nint Int { get; init; }

        public required nint OpSum { get; init; }

        public required nint OpMax { get; init; }

        public required nint ErrorsReturn { get; init; }

        public required delegate* unmanaged[Cdecl]<int*, int> Initialized { get; init; }

        public required delegate* unmanaged[Cdecl]<int*, int> Finalized { get; init; }

        public required delegate* unmanaged[Cdecl]<int*, byte***, int, int*, int> InitThread { get; init; }

        public required delegate* unmanaged[Cdecl]<int> Finalize { get; init; }

        public required delegate* unmanaged[Cdecl]<nint, int, int> Abort { get; init; }

        public required delegate* unmanaged[Cdecl]<nint, int*, int> CommRank { get; init; }

        public required delegate* unmanaged[Cdecl]<nint, int*, int> CommSize { get; init; }

        public required delegate* unmanaged[Cdecl]<nint, nint, int> CommSetErrhandler { get; init; }

        // (sendbuf, recvbuf, count, datatype, op, comm, request*)
        public required delegate* unmanaged[Cdecl]<nint, nint, int, nint, nint, nint, nint*, int> Iallreduce { get; init; }

        // (buffer, count, datatype, root, comm, request*)
        public required delegate* unmanaged[Cdecl]<nint, int, nint, int, nint, nint*, int> Ibcast { get; init; }

        public required delegate* unmanaged[Cdecl]<nint, nint*, int> Ibarrier { get; init; }

        // (request*, flag*, status*): status is MPI_STATUS_IGNORE (null).
        public required delegate* unmanaged[Cdecl]<nint*, int*, nint, int> Test { get; init; }

        public required delegate* unmanaged[Cdecl]<int, byte*, int*, int> ErrorString { get; init; }

        public required delegate* unmanaged[Cdecl]<byte*, int*, int> GetLibraryVersion { get; init; }

        public required delegate* unmanaged[Cdecl]<byte*, int*, int> GetProcessorName { get; init; }

        /// <summary><c>MPI_Error_string</c> of <paramref name="code"/>, or the bare number when MPI cannot name it.</summary>
        public string Describe(int code)
        {
            var buffer = stackalloc byte[MaxErrorString + 1];
            var length = 0;
            return ErrorString(code, buffer, &length) == Success && length > 0
                ? Encoding.ASCII.GetString(buffer, Math.Min(length, MaxErrorString)).Trim()
                : $"MPI error {code}";
        }

        /// <summary>The first line of <c>MPI_Get_library_version</c>.</summary>
        public string Version()
        {
            // MPI_MAX_LIBRARY_VERSION_STRING is 256 in Open MPI and 8192 in MPICH.
            var buffer = new byte[8193];
            var length = 0;
            fixed (byte* p = buffer)
            {
                if (GetLibraryVersion(p, &length) != Success)
                {
                    return "unknown MPI library";
                }
            }

            return Encoding.ASCII.GetString(buffer, 0, Math.Clamp(length, 0, buffer.Length)).Split('\n')[0].Trim().TrimEnd('\0');
        }

        /// <summary><c>MPI_Get_processor_name</c> (the host name).</summary>
        public string ProcessorName()
        {
            var buffer = stackalloc byte[257];
            var length = 0;
            return GetProcessorName(buffer, &length) == Success ? Encoding.ASCII.GetString(buffer, Math.Clamp(length, 0, 256)) : "?";
        }
    }

    /// <summary>Library names tried in order: Open MPI 4.x/5.x (<c>libmpi.so.40</c>), then the unversioned name.</summary>
    internal static readonly string[] Candidates = ["libmpi.so.40", "libmpi.so"];

    private static Api Load()
    {
        var path = Environment.GetEnvironmentVariable("SPTC_LIBMPI");
        nint handle = 0;
        foreach (var name in path is { Length: > 0 } ? [path] : Candidates)
        {
            if (NativeLibrary.TryLoad(name, out handle))
            {
                path = name;
                break;
            }
        }

        if (handle == 0)
        {
            throw new DistributedException("this process was started by an MPI launcher, but Open MPI's libmpi (libmpi.so.40) " +
                "cannot be loaded: install Open MPI (Debian: openmpi-bin libopenmpi-dev) or set SPTC_LIBMPI to its path");
        }

        if (!NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out var world))
        {
            var mpich = NativeLibrary.TryGetExport(handle, "MPIR_Err_return_comm", out _) || NativeLibrary.TryGetExport(handle, "MPIR_Process", out _);
            throw new DistributedException($"{path} is {(mpich ? "MPICH" : "not Open MPI")}: sptc binds Open MPI's ABI (pointer handles); " +
                "launch with Open MPI's mpirun and libmpi.so.40");
        }

        nint F(string name) => NativeLibrary.TryGetExport(handle, name, out var address)
            ? address
            : throw new DistributedException($"{path} has no symbol '{name}' (an Open MPI older than 3.0?)");

        return new Api
        {
            LibraryPath = path!,
            CommWorld = world,
            Float = F("ompi_mpi_float"),
            Byte = F("ompi_mpi_byte"),
            Int = F("ompi_mpi_int"),
            OpSum = F("ompi_mpi_op_sum"),
            OpMax = F("ompi_mpi_op_max"),
            ErrorsReturn = F("ompi_mpi_errors_return"),
            Initialized = (delegate* unmanaged[Cdecl]<int*, int>)F("MPI_Initialized"),
            Finalized = (delegate* unmanaged[Cdecl]<int*, int>)F("MPI_Finalized"),
            InitThread = (delegate* unmanaged[Cdecl]<int*, byte***, int, int*, int>)F("MPI_Init_thread"),
            Finalize = (delegate* unmanaged[Cdecl]<int>)F("MPI_Finalize"),
            Abort = (delegate* unmanaged[Cdecl]<nint, int, int>)F("MPI_Abort"),
            CommRank = (delegate* unmanaged[Cdecl]<nint, int*, int>)F("MPI_Comm_rank"),
            CommSize = (delegate* unmanaged[Cdecl]<nint, int*, int>)F("MPI_Comm_size"),
            CommSetErrhandler = (delegate* unmanaged[Cdecl]<nint, nint, int>)F("MPI_Comm_set_errhandler"),
            Iallreduce = (delegate* unmanaged[Cdecl]<nint, nint, int, nint, nint, nint, nint*, int>)F("MPI_Iallreduce"),
            Ibcast = (delegate* unmanaged[Cdecl]<nint, int, nint, int, nint, nint*, int>)F("MPI_Ibcast"),
            Ibarrier = (delegate* unmanaged[Cdecl]<nint, nint*, int>)F("MPI_Ibarrier"),
            Test = (delegate* unmanaged[Cdecl]<nint*, int*, nint, int>)F("MPI_Test"),
            ErrorString = (delegate* unmanaged[Cdecl]<int, byte*, int*, int>)F("MPI_Error_string"),
            GetLibraryVersion = (delegate* unmanaged[Cdecl]<byte*, int*, int>)F("MPI_Get_library_version"),
            GetProcessorName = (delegate* unmanaged[Cdecl]<byte*, int*, int>)F("MPI_Get_processor_name"),
        };
    }
}
