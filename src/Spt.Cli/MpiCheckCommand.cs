using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Spt.Runtime.Distributed;

namespace Spt.Cli;

/// <summary>
/// <c>mpirun -np N sptc mpi-check [--sizes 1,4,16,64]</c>: checks an MPI launch before a long run (every rank
/// reachable, all-reduce and broadcast correct and bitwise equal on every rank, MPI errors reported), then measures the
/// all-reduce bandwidth of the gradient reducer for buffers of the given sizes in MiB. Rank 0 prints.
/// </summary>
internal static class MpiCheckCommand
{
    public static Command Create(CliContext context)
    {
        var sizes = new Option<string>("--sizes") { Description = "All-reduce buffer sizes to time, in MiB (comma-separated; empty: no timing)", DefaultValueFactory = _ => "1,4,16,64" };
        var repeat = new Option<int>("--repeat") { Description = "Timed all-reduces per size (median reported)", DefaultValueFactory = _ => 10 };
        var command = new Command("mpi-check", "Check an MPI launch (run under mpirun) and measure all-reduce bandwidth") { sizes, repeat };
        command.SetAction(parse => RankLaunch.Guard(context, parse, (ranks, output) =>
        {
            if (ranks is null)
            {
                throw new CliUsageException("mpi-check runs under an MPI launcher: mpirun -np 2 sptc mpi-check");
            }

            if (parse.GetValue(repeat) < 1)
            {
                throw new CliUsageException($"--repeat must be at least 1 (got {parse.GetValue(repeat)})");
            }

            var mib = ParseSizes(parse.GetValue(sizes)!);
            var world = ranks.World;
            output.Out.WriteLine($"mpi-check: {world.Size} ranks, {world.Library}, rank 0 on {world.Host}");
            var checks = Check(world);
            output.Out.WriteLine($"mpi-check: {checks} checks passed on every rank");
            foreach (var size in mib)
            {
                var (seconds, busBandwidth) = Time(world, size, parse.GetValue(repeat));
                output.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"all-reduce {size,4} MiB: {seconds * 1000,8:0.00} ms  algorithm {size / 1024.0 / seconds,6:0.00} GiB/s  bus {busBandwidth / (1L << 30),6:0.00} GiB/s"));
            }

            return ExitCodes.Ok;
        }));
        return command;
    }

    // Values that make every rank's contribution distinct and the exact sum known: rank r adds (r + 1) · (i mod 7 + 1),
    // which sums to (i mod 7 + 1) · N(N + 1)/2, exact in float32 for these sizes.
    private static int Check(MpiWorld world)
    {
        var checks = 0;
        var n = world.Size;
        var reducer = new MpiGradientReducer(world, bucketBytes: 4096);
        void Expect(bool ok, string what)
        {
            if (!reducer.AllEqual(ok ? 1UL : 0UL) || !ok)
            {
                throw new Runtime.Distributed.DistributedException($"{world.Who}: mpi-check failed: {what}");
            }

            checks++;
        }

        foreach (var count in new[] { 1, 1023, (1 << 20) + 3 })
        {
            var data = new float[count];
            for (var i = 0; i < count; i++)
            {
                data[i] = (world.Rank + 1) * ((i % 7) + 1);
            }

            world.AllReduceSum(data);
            var exact = Enumerable.Range(0, count).All(i => data[i] == ((i % 7) + 1) * (n * (n + 1) / 2f));
            Expect(exact, $"all-reduce of {count} floats is not the exact sum");
            Expect(reducer.AllEqual(Hash(MemoryMarshal.AsBytes(data.AsSpan()))), $"all-reduce of {count} floats differs between ranks");
        }

        // The gradient reducer: tensors above and below the bucket size, a rank weight, and host scalars.
        var shapes = new[] { 3, 1500, 7, 1, 4000, 2 };
        var arrays = shapes.Select(s => Enumerable.Range(0, s).Select(i => (float)(world.Rank + 1) * (i % 5)).ToArray()).ToArray();
        var values = arrays.Select(a => OrtValue.CreateTensorValueFromMemory(a, [a.Length])).ToList();
        Span<float> scalars = [world.Rank + 1f, 1f];
        var weight = 1f / (world.Rank + 1);
        reducer.AllReduce(values, weight, scalars);
        Expect(arrays.All(a => a.Select((x, i) => Math.Abs(x - (n * (i % 5))) <= 1e-5f * n * 5).All(ok => ok)), "the bucketed weighted all-reduce is wrong");
        Expect(scalars[0] == n * (n + 1) / 2f && scalars[1] == n, "the all-reduced scalars are wrong");
        values.ForEach(v => v.Dispose());

        Span<long> words = [world.Rank == 0 ? 42 : -1, world.Rank];
        var buffer = new float[513];
        Array.Fill(buffer, world.Rank == 0 ? 3.5f : 0f);
        using (var tensor = OrtValue.CreateTensorValueFromMemory(buffer, [buffer.Length]))
        {
            reducer.Broadcast([tensor], words);
        }

        Expect(words[0] == 42 && words[1] == 0 && buffer.All(x => x == 3.5f), "broadcast from rank 0 is wrong");
        world.Barrier();
        checks++;

        // An MPI error comes back as a message, not a crash: a broadcast from a rank that does not exist.
        string? message = null;
        try
        {
            world.Broadcast(new byte[4], root: n);
        }
        catch (Runtime.Distributed.DistributedException e)
        {
            message = e.Message;
        }

        Expect(message is not null && message.Contains("MPI_Ibcast failed", StringComparison.Ordinal), $"an invalid root was not reported (got '{message}')");
        return checks;
    }

    private static (double Seconds, double BusBandwidth) Time(MpiWorld world, int mib, int repeat)
    {
        var data = GC.AllocateArray<float>(mib * (1 << 20) / sizeof(float), pinned: true);
        world.AllReduceSum(data);
        var times = new List<double>();
        for (var i = 0; i < repeat; i++)
        {
            world.Barrier();
            var watch = Stopwatch.StartNew();
            world.AllReduceSum(data);
            times.Add(watch.Elapsed.TotalSeconds);
        }

        // Every rank uses rank 0's median, so that all print the same.
        times.Sort();
        Span<float> median = [(float)times[times.Count / 2]];
        var root = MemoryMarshal.AsBytes(median);
        world.Broadcast(root);
        var seconds = (double)median[0];
        // Bus bandwidth: a ring all-reduce moves 2 (N - 1) / N of the buffer through each rank's link.
        return (seconds, 2.0 * (world.Size - 1) / world.Size * mib * (1 << 20) / seconds);
    }

    private static ulong Hash(ReadOnlySpan<byte> bytes)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in bytes)
        {
            hash = (hash ^ b) * 1099511628211UL;
        }

        return hash;
    }

    private static int[] ParseSizes(string text)
    {
        try
        {
            var sizes = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture)).ToArray();
            return sizes.All(s => s is >= 1 and <= 4096) ? sizes : throw new FormatException();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new CliUsageException($"--sizes must be comma-separated sizes in MiB from 1 to 4096, got '{text}'");
        }
    }
}
