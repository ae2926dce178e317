using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Training;

namespace Spt.Cli;

/// <summary>What train, demo and bench share: compiling a model into a training-artifact directory.</summary>
internal static class TrainingSetup
{
    /// <summary>File name of the copy of the compiled model kept in an artifact directory (for export).</summary>
    public const string SourceCopy = "source.onnx";

    /// <summary>
    /// Compiles <paramref name="model"/> into <paramref name="directory"/> (training.json, grad/optimizer/eval graphs,
    /// the initial checkpoint) and keeps a copy of the model as source.onnx for <c>--export</c>.
    /// </summary>
    /// <remarks>
    /// All or nothing: the artifact is written to a staging directory beside <paramref name="directory"/>, read back,
    /// and only then renamed into place; on any failure nothing is left (missing parent directories created for it
    /// are removed again). An existing directory is replaced only when it is an artifact directory itself.
    /// </remarks>
    public static TrainingManifest Compile(Model model, string directory, TrainingOptions options)
    {
        var createdParent = CreateMissingParents(directory);
        try
        {
            using (var commit = new OutputCommit())
            {
                var staged = commit.AddDirectory(directory, "artifact directory",
                    replaceable: existing => File.Exists(Path.Combine(existing, TrainingManifest.FileName)));
                TrainingCompiler.CompileToDirectory(model, staged, options);
                model.Save(Path.Combine(staged, SourceCopy));
                TrainingManifest.Load(staged);
                commit.Commit();
            }

            return TrainingManifest.Load(directory);
        }
        catch
        {
            if (createdParent is not null)
            {
                Directory.Delete(createdParent, recursive: true);
            }

            throw;
        }
    }

    // Creates the missing ancestors of path (not path itself); returns the topmost one created, or null.
    private static string? CreateMissingParents(string path)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new CliUsageException("the output directory path is empty");
        }

        string? top = null;
        for (var dir = Path.GetDirectoryName(Path.GetFullPath(path)); dir is not null && FileChecks.Kind(dir) == PathKind.Missing; dir = Path.GetDirectoryName(dir))
        {
            top = dir;
        }

        if (top is not null)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        }

        return top;
    }

    /// <summary>Parses --task lm|seq2seq|classify|regress into the compiler's loss (seq2seq: token cross-entropy on the decoder's logits).</summary>
    public static LossKind TaskLoss(string task) => task.ToLowerInvariant() switch
    {
        "lm" or "causal_lm" or "seq2seq" => LossKind.CausalLm,
        "classify" => LossKind.Classify,
        "regress" or "regression" => LossKind.Mse,
        _ => throw new CliUsageException($"--task must be lm, seq2seq, classify or regress, got '{task}'"),
    };

    /// <summary>Parses --loss causal_lm|classify|mse.</summary>
    public static LossKind Loss(string loss) => loss.ToLowerInvariant() switch
    {
        "causal_lm" or "lm" => LossKind.CausalLm,
        "classify" => LossKind.Classify,
        "mse" => LossKind.Mse,
        _ => throw new CliUsageException($"--loss must be causal_lm, classify or mse, got '{loss}'"),
    };

    /// <summary>Parses --schedule constant|linear|cosine.</summary>
    public static LrScheduleKind Schedule(string name) => name.ToLowerInvariant() switch
    {
        "constant" => LrScheduleKind.Constant,
        "linear" => LrScheduleKind.Linear,
        "cosine" => LrScheduleKind.Cosine,
        _ => throw new CliUsageException($"--schedule must be constant, linear or cosine, got '{name}'"),
    };

    /// <summary>Parses --device auto|cpu|cuda.</summary>
    public static ExecutionDevice Device(string name) => name.ToLowerInvariant() switch
    {
        "auto" => ExecutionDevice.Auto,
        "cpu" => ExecutionDevice.Cpu,
        "cuda" => ExecutionDevice.Cuda,
        _ => throw new CliUsageException($"--device must be auto, cpu or cuda, got '{name}'"),
    };

    /// <summary>Bytes as "12.3 MiB".</summary>
    public static string Bytes(long? bytes) => bytes is not { } b ? "n/a"
        : b >= 1L << 30 ? FormattableString.Invariant($"{b / (double)(1L << 30):0.00} GiB")
        : FormattableString.Invariant($"{b / (double)(1L << 20):0.0} MiB");
}
