using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spt.Runtime.Training;

namespace Spt.Runtime.Distributed;

/// <summary>
/// Sums CUDA-resident gradient accumulators with NCCL (<c>libnccl.so.2</c>, bound at run time): rank 0 creates the
/// communicator's unique id and broadcasts it over MPI, every rank joins with <c>ncclCommInitRank</c>, and the
/// accumulators are reduced in place in one NCCL group on the legacy default stream; the weight of a rank is applied
/// by NCCL itself (<c>ncclRedOpCreatePreMulSum</c>). Host scalars and agreement checks go over MPI. One GPU per rank:
/// each rank sees only the GPU of its node-local rank (<c>CUDA_VISIBLE_DEVICES</c>, set before CUDA starts unless the
/// launcher set it). Waits are bounded like MPI's: a dead peer makes the others abort the communicator and fail.
/// This path is compiled everywhere but only runs where NCCL and a GPU exist.
/// </summary>
public sealed unsafe class NcclGradientReducer : IGradientReducer, IDisposable
{
    private const int Float32 = 7;
    private const int Uint8 = 1;
    private const int Sum = 0;
    private const int ScalarHostImmediate = 1;
    private const int CudaErrorNotReady = 600;

    private readonly MpiWorld _world;
    private readonly Nccl _nccl;
    private nint _comm;

    private NcclGradientReducer(MpiWorld world, Nccl nccl, nint comm)
    {
        _world = world;
        _nccl = nccl;
        _comm = comm;
    }

    /// <inheritdoc />
    public int Rank => _world.Rank;

    /// <inheritdoc />
    public int Size => _world.Size;

    /// <inheritdoc />
    public bool CanScale => false;

    /// <summary>Joins the NCCL communicator of <paramref name="world"/> (collective over all ranks).</summary>
    /// <exception cref="DistributedException">NCCL or the CUDA runtime cannot be loaded, or NCCL fails.</exception>
    public static NcclGradientReducer Create(MpiWorld world)
    {
        ArgumentNullException.ThrowIfNull(world);
        PinLocalDevice();
        var nccl = Nccl.Load(world);
        var id = new byte[128];
        fixed (byte* p = id)
        {
            if (world.Rank == 0)
            {
                nccl.Check(nccl.GetUniqueId(p), "ncclGetUniqueId");
            }

            world.Broadcast(id);
            nint comm;
            nccl.Check(nccl.CommInitRank(&comm, world.Size, *(UniqueId*)p, world.Rank), "ncclCommInitRank");
            return new NcclGradientReducer(world, nccl, comm);
        }
    }

    /// <inheritdoc />
    public bool Supports(ExecutionDevice device) => device == ExecutionDevice.Cuda;

    /// <inheritdoc />
    public void AllReduce(IReadOnlyList<OrtValue> buffers, float weight, Span<float> scalars)
    {
        var created = Sum;
        if (weight != 1f)
        {
            // buffer ← Σ_r weight_r · buffer_r, the weight read from host memory when the call is enqueued.
            _nccl.Check(_nccl.RedOpCreatePreMulSum(&created, &weight, Float32, ScalarHostImmediate, _comm), "ncclRedOpCreatePreMulSum");
        }

        var op = created;

        try
        {
            Enqueue(buffers, (p, count) => _nccl.AllReduce(p, p, (nuint)count, Float32, op, _comm, 0), "ncclAllReduce", float32: true);
        }
        finally
        {
            if (op != Sum)
            {
                _nccl.RedOpDestroy(op, _comm);
            }
        }

        _world.AllReduceSum(scalars);
    }

    /// <inheritdoc />
    public void Scale(IReadOnlyList<OrtValue> buffers, float factor) =>
        throw new NotSupportedException("NCCL reduction cannot rescale device buffers on its own");

    /// <inheritdoc />
    public void Broadcast(IReadOnlyList<OrtValue> buffers, Span<long> words)
    {
        _world.Broadcast(MemoryMarshal.AsBytes(words));
        Enqueue(buffers, (p, bytes) => _nccl.Broadcast(p, p, (nuint)bytes, Uint8, 0, _comm, 0), "ncclBroadcast", float32: false);
    }

    /// <inheritdoc />
    public bool AllEqual(ulong value) => new MpiGradientReducer(_world).AllEqual(value);

    /// <inheritdoc />
    public void Dispose()
    {
        if (_comm != 0)
        {
            _nccl.CommDestroy(_comm);
            _comm = 0;
        }
    }

    // One NCCL group over every buffer, on the legacy default stream (which waits for ORT's finished work), then a
    // bounded wait: on timeout or an asynchronous NCCL error the communicator is aborted and the rank fails.
    private void Enqueue(IReadOnlyList<OrtValue> buffers, Func<nint, long, int> call, string name, bool float32)
    {
        _nccl.CheckCuda(_nccl.DeviceSynchronize(), "cudaDeviceSynchronize");
        _nccl.Check(_nccl.GroupStart(), "ncclGroupStart");
        foreach (var buffer in buffers)
        {
            var info = buffer.GetTensorTypeAndShape();
            if (float32 && info.ElementDataType != TensorElementType.Float)
            {
                throw new DistributedException($"data-parallel training reduces float32 gradients; this artifact has a {info.ElementDataType} gradient");
            }

            var raw = buffer.GetTensorMutableRawData();
            _nccl.Check(call(MpiWorld.AddressOf(raw), float32 ? info.ElementCount : raw.Length), name);
        }

        _nccl.Check(_nccl.GroupEnd(), "ncclGroupEnd");
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var status = _nccl.StreamQuery(0);
            if (status == 0)
            {
                return;
            }

            if (status != CudaErrorNotReady)
            {
                _nccl.CheckCuda(status, name);
            }

            int async;
            _nccl.CommGetAsyncError(_comm, &async);
            if (async != 0 || watch.Elapsed > _world.Timeout)
            {
                _nccl.CommAbort(_comm);
                _comm = 0;
                throw new DistributedException(async != 0
                    ? $"{_world.Who}: {name} failed: {_nccl.Describe(async)}"
                    : $"{_world.Who}: {name} did not complete within {_world.Timeout.TotalSeconds:0} s: another rank has stopped or hangs");
            }

            Thread.Sleep(0);
        }
    }

    // Ranks of one node share its GPUs by node-local rank; the variable must be in the native environment before the
    // CUDA runtime initializes (Environment.SetEnvironmentVariable does not reach it on Unix).
    private static void PinLocalDevice()
    {
        if (Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") is { Length: > 0 })
        {
            return;
        }

        var local = Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_RANK") ?? Environment.GetEnvironmentVariable("MPI_LOCALRANKID");
        if (int.TryParse(local, out var device) && device >= 0)
        {
            SetEnv("CUDA_VISIBLE_DEVICES", device.ToString(System.Globalization.CultureInfo.InvariantCulture), 1);
        }
    }

    [DllImport("libc", EntryPoint = "setenv")]
    private static extern int SetEnv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    [StructLayout(LayoutKind.Sequential, Size = 128)]
    private struct UniqueId
    {
        private fixed byte _internal[128];
    }

    private sealed class Nccl
    {
        private readonly MpiWorld _world;

        private Nccl(MpiWorld world) => _world = world;

        public delegate* unmanaged[Cdecl]<byte*, int> GetUniqueId { get; private init; }

        public delegate* unmanaged[Cdecl]<nint*, int, UniqueId, int, int> CommInitRank { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, nint, nuint, int, int, nint, nint, int> AllReduce { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, nint, nuint, int, int, nint, nint, int> Broadcast { get; private init; }

        public delegate* unmanaged[Cdecl]<int*, void*, int, int, nint, int> RedOpCreatePreMulSum { get; private init; }

        public delegate* unmanaged[Cdecl]<int, nint, int> RedOpDestroy { get; private init; }

        public delegate* unmanaged[Cdecl]<int> GroupStart { get; private init; }

        public delegate* unmanaged[Cdecl]<int> GroupEnd { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, int*, int> CommGetAsyncError { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, int> CommAbort { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, int> CommDestroy { get; private init; }

        public delegate* unmanaged[Cdecl]<int, byte*> GetErrorString { get; private init; }

        public delegate* unmanaged[Cdecl]<int> DeviceSynchronize { get; private init; }

        public delegate* unmanaged[Cdecl]<nint, int> StreamQuery { get; private init; }

        public delegate* unmanaged[Cdecl]<int, byte*> CudaErrorString { get; private init; }

        public static Nccl Load(MpiWorld world)
        {
            var nccl = Open(world, ["libnccl.so.2", "libnccl.so"], "NCCL (libnccl.so.2)");
            var cudart = Open(world, ["libcudart.so.13", "libcudart.so.12", "libcudart.so"], "the CUDA runtime (libcudart)");
            nint F(nint library, string name) => NativeLibrary.TryGetExport(library, name, out var address)
                ? address
                : throw new DistributedException($"{world.Who}: the loaded NCCL/CUDA runtime has no '{name}' (NCCL 2.11 or later is needed)");
            return new Nccl(world)
            {
                GetUniqueId = (delegate* unmanaged[Cdecl]<byte*, int>)F(nccl, "ncclGetUniqueId"),
                CommInitRank = (delegate* unmanaged[Cdecl]<nint*, int, UniqueId, int, int>)F(nccl, "ncclCommInitRank"),
                AllReduce = (delegate* unmanaged[Cdecl]<nint, nint, nuint, int, int, nint, nint, int>)F(nccl, "ncclAllReduce"),
                Broadcast = (delegate* unmanaged[Cdecl]<nint, nint, nuint, int, int, nint, nint, int>)F(nccl, "ncclBroadcast"),
                RedOpCreatePreMulSum = (delegate* unmanaged[Cdecl]<int*, void*, int, int, nint, int>)F(nccl, "ncclRedOpCreatePreMulSum"),
                RedOpDestroy = (delegate* unmanaged[Cdecl]<int, nint, int>)F(nccl, "ncclRedOpDestroy"),
                GroupStart = (delegate* unmanaged[Cdecl]<int>)F(nccl, "ncclGroupStart"),
                GroupEnd = (delegate* unmanaged[Cdecl]<int>)F(nccl, "ncclGroupEnd"),
                CommGetAsyncError = (delegate* unmanaged[Cdecl]<nint, int*, int>)F(nccl, "ncclCommGetAsyncError"),
                CommAbort = (delegate* unmanaged[Cdecl]<nint, int>)F(nccl, "ncclCommAbort"),
                CommDestroy = (delegate* unmanaged[Cdecl]<nint, int>)F(nccl, "ncclCommDestroy"),
                GetErrorString = (delegate* unmanaged[Cdecl]<int, byte*>)F(nccl, "ncclGetErrorString"),
                DeviceSynchronize = (delegate* unmanaged[Cdecl]<int>)F(cudart, "cudaDeviceSynchronize"),
                StreamQuery = (delegate* unmanaged[Cdecl]<nint, int>)F(cudart, "cudaStreamQuery"),
                CudaErrorString = (delegate* unmanaged[Cdecl]<int, byte*>)F(cudart, "cudaGetErrorString"),
            };
        }

        public string Describe(int code) => Marshal.PtrToStringUTF8((nint)GetErrorString(code)) ?? $"NCCL error {code}";

        public void Check(int code, string call)
        {
            if (code != 0)
            {
                throw new DistributedException($"{_world.Who}: {call} failed: {Describe(code)}");
            }
        }

        public void CheckCuda(int code, string call)
        {
            if (code != 0)
            {
                throw new DistributedException($"{_world.Who}: {call} failed: CUDA error {code} ({Marshal.PtrToStringUTF8((nint)CudaErrorString(code))})");
            }
        }

        private static nint Open(MpiWorld world, string[] names, string what)
        {
            foreach (var name in names)
            {
                if (NativeLibrary.TryLoad(name, out var handle))
                {
                    return handle;
                }
            }

            throw new DistributedException($"{world.Who}: data-parallel CUDA training needs {what}, which cannot be loaded");
        }
    }
}
