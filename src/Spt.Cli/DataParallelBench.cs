using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.Runtime.Distributed;

namespace Spt.Cli;

/// <summary>
/// <c>sptc bench --ranks 2,4</c>: the training step of N data-parallel ranks on this host (the worker started under
/// <c>mpirun -np N</c>, the global batch fixed), against the 1-process step of the main table: speedup
/// <c>t1 / tN</c> and scaling efficiency <c>t1 / (N · tN)</c> (strong scaling).
/// </summary>
internal static class DataParallelBench
{
    /// <summary>sptc bench starts its own ranks; a bench that is itself an MPI rank would start nested jobs.</summary>
    public static void RefuseMpiLaunch()
    {
        if (MpiLaunch.FromEnvironment() is not null)
        {
            throw new CliUsageException("sptc bench starts its own ranks (--ranks 2,4): run it without mpirun");
        }
    }

    /// <summary>Parses --ranks: rank counts of at least 2 that divide the global batch.</summary>
    public static int[] ParseRanks(string text, int batch)
    {
        int[] counts;
        try
        {
            counts = [.. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture)).Where(n => n != 1).Distinct()];
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new CliUsageException($"--ranks must be comma-separated rank counts, got '{text}'");
        }

        if (counts.Contains(0))
        {
            throw new CliUsageException("--ranks must be at least 1");
        }

        if (counts.FirstOrDefault(n => batch % n != 0) is > 0 and var bad)
        {
            throw new CliUsageException($"--ranks {bad}: every rank count must divide the global --batch {batch}");
        }

        return counts;
    }

    /// <summary>The command line that starts <paramref name="file"/> <paramref name="prefix"/> as <paramref name="ranks"/> ranks on this host.</summary>
    public static (string File, string[] Prefix) UnderMpirun(int ranks, string file, string[] prefix)
    {
        var mpirun = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists)
            ?? throw new CliUsageException("--ranks needs Open MPI's mpirun on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)");
        return (mpirun, ["-np", ranks.ToString(CultureInfo.InvariantCulture), "--oversubscribe", "--bind-to", "none", file, .. prefix]);
    }

    /// <summary>Open MPI refuses to run as root unless told; a bench that the root user started may start its ranks.</summary>
    public static void AllowRoot(ProcessStartInfo start)
    {
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
    }

    /// <summary>Measures every (sequence length, variant) at each rank count and prints the scaling table; returns it as JSON.</summary>
    public static JsonArray Run(CliContext context, JsonArray results, IReadOnlyList<(string Name, string Artifact)> variants, int[] rankCounts,
        Func<string, int, int, JsonObject> measure)
    {
        var scaling = new JsonArray();
        var table = new Table().AddColumns("seq", "model", "ranks", "step (ms)", "tokens/s", "speedup", "efficiency");
        foreach (var row in results.Select(r => r!.AsObject()))
        {
            var seq = row["seq"]!.GetValue<int>();
            foreach (var (name, artifact) in variants)
            {
                var single = row[name]!.AsObject();
                var t1 = single["median_step_s"]!.GetValue<double>();
                Add(table, seq, name, 1, single, t1);
                foreach (var n in rankCounts)
                {
                    var m = measure(artifact, seq, n);
                    var tn = m["median_step_s"]!.GetValue<double>();
                    Add(table, seq, name, n, m, t1);
                    scaling.Add(new JsonObject
                    {
                        ["seq"] = seq,
                        ["model"] = name,
                        ["ranks"] = n,
                        ["median_step_s"] = tn,
                        ["tokens_per_s"] = m["tokens_per_s"]?.GetValue<double>(),
                        ["single_step_s"] = t1,
                        ["speedup"] = t1 / tn,
                        ["efficiency"] = t1 / (n * tn),
                    });
                }
            }
        }

        context.Console.Write(table);
        return scaling;
    }

    private static void Add(Table table, int seq, string name, int ranks, JsonObject m, double t1)
    {
        var t = m["median_step_s"]!.GetValue<double>();
        table.AddRow(seq.ToString(CultureInfo.InvariantCulture), name, ranks.ToString(CultureInfo.InvariantCulture),
            (t * 1000).ToString("0.0", CultureInfo.InvariantCulture),
            (m["tokens_per_s"]?.GetValue<double>() ?? 0).ToString("0", CultureInfo.InvariantCulture),
            (t1 / t).ToString("0.00", CultureInfo.InvariantCulture) + "x",
            (t1 / (ranks * t)).ToString("0%", CultureInfo.InvariantCulture));
    }
}
