using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Spt.Runtime.Distributed;
using Spt.Runtime.Training;

namespace Spt.Cli;

/// <summary>
/// One rank of an MPI launch (<c>mpirun -np N sptc train ...</c>): MPI is initialized when the launcher's environment
/// says so, rank 0 alone prints, and a failing rank ends the whole job (<c>MPI_Abort</c>) after printing its one
/// line, so every rank exits non-zero. A rank that the launcher stops (Open MPI sends SIGTERM to the survivors when a
/// rank dies) says so on stderr before it exits.
/// </summary>
internal sealed class RankLaunch : IDisposable
{
    /// <summary>Environment variable: seconds a collective may wait for the other ranks (default 300).</summary>
    public const string TimeoutVariable = "SPTC_MPI_TIMEOUT";

    private readonly PosixSignalRegistration _sigterm;

    private RankLaunch(MpiWorld world, CliContext context)
    {
        World = world;
        // Plain lines, never a progress bar: the launcher forwards output through a pseudo-terminal even into a file.
        Output = new CliContext(world.Rank == 0 ? TextWriter.Synchronized(context.Out) : TextWriter.Null, context.Error);
        var error = context.Error;
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ =>
        {
            error.WriteLine($"sptc: error: {world.Who}: stopped by SIGTERM (the MPI launcher stops every rank when one fails or the job is cancelled)");
            error.Flush();
        });
    }

    /// <summary>The MPI world.</summary>
    public MpiWorld World { get; }

    /// <summary>Where this rank prints: the command's context on rank 0, a silent one elsewhere (errors still go to stderr).</summary>
    public CliContext Output { get; }

    /// <summary>Whether this is rank 0 (the one that writes files and prints).</summary>
    public bool IsPrimary => World.Rank == 0;

    /// <summary>
    /// Runs a command body under <see cref="CliContext.Guard"/>, as one rank when an MPI launcher started this process
    /// (the body gets the launch, else null, and the context to print to). On success every rank finalizes MPI; on
    /// failure the failing rank aborts the job with its exit code.
    /// </summary>
    public static int Guard(CliContext context, ParseResult parse, Func<RankLaunch?, CliContext, int> body)
    {
        RankLaunch? launch = null;
        var code = context.Guard(parse, () =>
        {
            launch = Start(context);
            return body(launch, launch?.Output ?? context);
        });
        if (launch is null)
        {
            return code;
        }

        if (code == ExitCodes.Ok)
        {
            code = context.Guard(parse, () =>
            {
                launch.Dispose();
                return ExitCodes.Ok;
            });
            if (code == ExitCodes.Ok)
            {
                return code;
            }
        }

        context.Error.Flush();
        launch.World.Abort(code);
        return code;
    }

    /// <summary>The MPI rank this process is, or null when no MPI launcher started it.</summary>
    public static RankLaunch? Start(CliContext context)
    {
        if (MpiLaunch.FromEnvironment() is null)
        {
            return null;
        }

        var text = Environment.GetEnvironmentVariable(TimeoutVariable);
        var seconds = 300.0;
        if (text is { Length: > 0 } && (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out seconds) || !(seconds > 0)))
        {
            throw new CliUsageException($"{TimeoutVariable} must be a positive number of seconds, got '{text}'");
        }

        return new RankLaunch(MpiWorld.Initialize(TimeSpan.FromSeconds(seconds)), context);
    }

    /// <summary>A fresh directory path of this rank's own (ranks other than 0 compile their copy of the artifact there).</summary>
    public static string PrivateDirectory(string prefix) =>
        Path.Combine(Path.GetTempPath(), $"{prefix}-{Environment.ProcessId}-{Guid.NewGuid():N}");

    /// <summary>
    /// The options of this rank: the gradient reducer for the training device (MPI over host memory, NCCL over CUDA
    /// memory), and no checkpoints or metrics except on rank 0. Rank 0 prints what is shared.
    /// </summary>
    public TrainerOptions Configure(CliContext output, TrainerOptions options)
    {
        var device = options.Device == ExecutionDevice.Auto
            ? (Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetAvailableProviders().Contains("CUDAExecutionProvider") ? ExecutionDevice.Cuda : ExecutionDevice.Cpu)
            : options.Device;
        output.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"data parallel: {World.Size} ranks ({World.Library}; rank 0 on {World.Host}), global batch {options.BatchSize} = {World.Size} x {options.BatchSize / World.Size} per rank, gradients summed with {(device == ExecutionDevice.Cuda ? "NCCL" : "MPI")}"));
        return options with
        {
            Device = device,
            Reducer = device == ExecutionDevice.Cuda ? NcclGradientReducer.Create(World) : new MpiGradientReducer(World),
            CheckpointDir = IsPrimary ? options.CheckpointDir : null,
            MetricsPath = IsPrimary ? options.MetricsPath : null,
        };
    }

    /// <summary>Finalizes MPI (every rank finished normally).</summary>
    public void Dispose()
    {
        _sigterm.Dispose();
        World.Dispose();
    }
}
