using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Spt.Runtime.Distributed;

/// <summary>What the MPI launcher told this process through its environment.</summary>
/// <param name="Rank">This process's rank in the job.</param>
/// <param name="Size">Number of processes in the job.</param>
/// <param name="Launcher">Which environment variables said so (for messages).</param>
public sealed record MpiLaunch(int Rank, int Size, string Launcher)
{
    /// <summary>
    /// The launch this process is part of, or null when no MPI launcher started it. Open MPI's <c>mpirun</c> sets
    /// <c>OMPI_COMM_WORLD_RANK</c>/<c>_SIZE</c>; PMI launchers (MPICH's Hydra, Slurm's <c>srun --mpi=pmi2</c>) set
    /// <c>PMI_RANK</c>/<c>PMI_SIZE</c>.
    /// </summary>
    public static MpiLaunch? FromEnvironment(Func<string, string?>? variable = null)
    {
        variable ??= Environment.GetEnvironmentVariable;
        foreach (var (rank, size, name) in new[] { ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"), ("PMI_RANK", "PMI_SIZE", "PMI") })
        {
            if (int.TryParse(variable(rank), out var r) && int.TryParse(variable(size), out var s) && s >= 1 && r >= 0 && r < s)
            {
                return new MpiLaunch(r, s, name);
            }
        }

        return null;
    }
}

/// <summary>
/// <c>MPI_COMM_WORLD</c> of an MPI job, through a thin binding of libmpi's C API (<see cref="MpiLibrary"/>). Errors are
/// returned, not fatal (<c>MPI_ERRORS_RETURN</c>), and become a <see cref="DistributedException"/> naming the call,
/// the rank and MPI's own text. Every collective is started non-blocking and polled against
/// <see cref="Timeout"/>, so a rank whose peer died or hangs fails within a bounded time instead of waiting forever
/// (Open MPI's <c>mpirun</c> also ends the whole job when one rank exits without <c>MPI_Finalize</c>). Only the
/// thread that created the world may call it (<c>MPI_THREAD_FUNNELED</c>).
/// </summary>
public sealed unsafe class MpiWorld : IDisposable
{
    private static int _initialized;
    private readonly MpiLibrary.Api _mpi;
    private bool _finished;

    private MpiWorld(MpiLibrary.Api mpi, int rank, int size, TimeSpan timeout)
    {
        _mpi = mpi;
        Rank = rank;
        Size = size;
        Timeout = timeout;
        Library = mpi.Version();
        Host = mpi.ProcessorName();
    }

    /// <summary>This process's rank (0-based).</summary>
    public int Rank { get; }

    /// <summary>Number of ranks.</summary>
    public int Size { get; }

    /// <summary>The longest a collective may wait for the other ranks before this rank gives up.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>The MPI library's version line.</summary>
    public string Library { get; }

    /// <summary>This rank's host (<c>MPI_Get_processor_name</c>).</summary>
    public string Host { get; }

    /// <summary>"rank R of N" for messages.</summary>
    public string Who => $"rank {Rank} of {Size}";

    /// <summary>Initializes MPI (once per process) and returns the world communicator.</summary>
    /// <param name="timeout">Bound on every collective's wait (see <see cref="Timeout"/>).</param>
    /// <exception cref="DistributedException">libmpi is missing or not Open MPI, or initialization failed.</exception>
    public static MpiWorld Initialize(TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero)
        {
            throw new DistributedException($"the MPI timeout must be positive (got {timeout.TotalSeconds} s)");
        }

        var mpi = MpiLibrary.Functions;
        if (Interlocked.Exchange(ref _initialized, 1) == 1)
        {
            throw new InvalidOperationException("MPI is initialized once per process");
        }

        int provided;
        Check(mpi, mpi.InitThread(null, null, MpiLibrary.ThreadFunneled, &provided), "MPI_Init_thread", null);
        Check(mpi, mpi.CommSetErrhandler(mpi.CommWorld, mpi.ErrorsReturn), "MPI_Comm_set_errhandler", null);
        int rank, size;
        Check(mpi, mpi.CommRank(mpi.CommWorld, &rank), "MPI_Comm_rank", null);
        Check(mpi, mpi.CommSize(mpi.CommWorld, &size), "MPI_Comm_size", null);
        return new MpiWorld(mpi, rank, size, timeout);
    }

    /// <summary>In-place sum over all ranks of <paramref name="count"/> floats at <paramref name="data"/> (host memory).</summary>
    public void AllReduceSum(nint data, long count) => Wait(StartAllReduceSum(data, count), "MPI_Iallreduce");

    /// <summary>In-place sum over all ranks of <paramref name="data"/>.</summary>
    public void AllReduceSum(Span<float> data)
    {
        fixed (float* p = data)
        {
            AllReduceSum((nint)p, data.Length);
        }
    }

    /// <summary>In-place maximum over all ranks of <paramref name="data"/>.</summary>
    public void AllReduceMax(Span<int> data)
    {
        fixed (int* p = data)
        {
            var request = (nint)0;
            Check(_mpi.Iallreduce(MpiLibrary.InPlace, (nint)p, data.Length, _mpi.Int, _mpi.OpMax, _mpi.CommWorld, &request), "MPI_Iallreduce");
            Wait([request], "MPI_Iallreduce");
        }
    }

    /// <summary>
    /// Starts in-place float sums of <paramref name="count"/> values at <paramref name="data"/>, in pieces of at most
    /// 2^30 elements (MPI counts are ints); the memory must stay put until <see cref="Wait"/> returns.
    /// </summary>
    public nint[] StartAllReduceSum(nint data, long count)
    {
        const long piece = 1L << 30;
        var requests = new List<nint>();
        for (long offset = 0; offset < count; offset += piece)
        {
            var request = (nint)0;
            Check(_mpi.Iallreduce(MpiLibrary.InPlace, data + (nint)(offset * sizeof(float)), (int)Math.Min(piece, count - offset),
                _mpi.Float, _mpi.OpSum, _mpi.CommWorld, &request), "MPI_Iallreduce");
            requests.Add(request);
        }

        return [.. requests];
    }

    /// <summary>Copies <paramref name="data"/> of rank <paramref name="root"/> into every rank's <paramref name="data"/>.</summary>
    public void Broadcast(Span<byte> data, int root = 0)
    {
        fixed (byte* p = data)
        {
            Broadcast((nint)p, data.Length, root);
        }
    }

    /// <summary>Broadcasts <paramref name="bytes"/> bytes at <paramref name="data"/> (host memory) from rank <paramref name="root"/>.</summary>
    public void Broadcast(nint data, long bytes, int root = 0)
    {
        const long piece = 1L << 30;
        var requests = new List<nint>();
        for (long offset = 0; offset < bytes || (bytes == 0 && offset == 0); offset += piece)
        {
            var request = (nint)0;
            Check(_mpi.Ibcast(data + (nint)offset, (int)Math.Min(piece, bytes - offset), _mpi.Byte, root, _mpi.CommWorld, &request), "MPI_Ibcast");
            requests.Add(request);
            if (bytes == 0)
            {
                break;
            }
        }

        Wait([.. requests], "MPI_Ibcast");
    }

    /// <summary>Waits until every rank has reached the barrier.</summary>
    public void Barrier()
    {
        var request = (nint)0;
        Check(_mpi.Ibarrier(_mpi.CommWorld, &request), "MPI_Ibarrier");
        Wait([request], "MPI_Ibarrier");
    }

    /// <summary>
    /// Polls <paramref name="requests"/> until all are complete, yielding the CPU after a short spin; throws when
    /// <see cref="Timeout"/> passes first (a peer died or hangs: the caller should then <see cref="Abort"/>).
    /// </summary>
    public void Wait(nint[] requests, string operation)
    {
        var watch = Stopwatch.StartNew();
        var pending = requests.Length;
        var done = new bool[requests.Length];
        var polls = 0L;
        while (pending > 0)
        {
            for (var i = 0; i < requests.Length; i++)
            {
                if (done[i])
                {
                    continue;
                }

                int flag;
                var request = requests[i];
                Check(_mpi.Test(&request, &flag, 0), "MPI_Test");
                requests[i] = request;
                if (flag != 0)
                {
                    done[i] = true;
                    pending--;
                }
            }

            if (pending == 0)
            {
                return;
            }

            // Spin for the first ~0.1 ms (shared-memory collectives finish in microseconds), then yield, then sleep.
            polls++;
            if (polls > 200)
            {
                if (watch.Elapsed > Timeout)
                {
                    throw new DistributedException($"{Who}: {operation} did not complete within {Timeout.TotalSeconds:0} s: another rank has " +
                        "stopped or hangs (raise the limit with SPTC_MPI_TIMEOUT=SECONDS if a rank is legitimately slower)");
                }

                if (polls > 20_000)
                {
                    Thread.Sleep(1);
                }
                else
                {
                    Thread.Yield();
                }
            }
        }
    }

    /// <summary>Ends every rank of the job with <paramref name="exitCode"/> (<c>MPI_Abort</c>); does not return normally.</summary>
    public void Abort(int exitCode)
    {
        _finished = true;
        _mpi.Abort(_mpi.CommWorld, exitCode);
        Environment.Exit(exitCode);
    }

    /// <summary><c>MPI_Finalize</c>: call only when every rank finishes normally.</summary>
    public void Dispose()
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        int finalized;
        if (_mpi.Finalized(&finalized) == MpiLibrary.Success && finalized == 0)
        {
            Check(_mpi.Finalize(), "MPI_Finalize");
        }
    }

    private void Check(int code, string call) => Check(_mpi, code, call, this);

    private static void Check(MpiLibrary.Api mpi, int code, string call, MpiWorld? world)
    {
        if (code != MpiLibrary.Success)
        {
            throw new DistributedException($"{(world is null ? "" : world.Who + ": ")}{call} failed: {mpi.Describe(code)}");
        }
    }

    /// <summary>The address of a span over native memory (an ORT tensor's buffer, which the GC never moves).</summary>
    internal static nint AddressOf(Span<byte> nativeMemory) =>
        (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetReference(nativeMemory));
}
