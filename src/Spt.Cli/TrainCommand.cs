using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Training;

namespace Spt.Cli;

/// <summary>
/// <c>sptc train MODEL.onnx --data FILE [...]</c>: compiles the model for training into a work directory (or takes
/// an artifact directory written by <c>sptc compile-training</c> as MODEL), then fine-tunes it on the data with
/// the ORT trainer. Exit codes: 0 done; 2 bad input (missing files, bad data, a model that cannot feed the loss,
/// bad flags); 5 (<see cref="ExitCodes.Diverged"/>) the loss became NaN/Inf (the last good checkpoint is kept); 6 (<see cref="ExitCodes.Interrupted"/>) SIGINT/SIGTERM: the step under way finished and was checkpointed.
/// </summary>
internal static class TrainCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<string>("MODEL") { Description = "The ONNX model to fine-tune, or a training-artifact directory from 'sptc compile-training'" };
        var data = new Option<string>("--data")
        {
            Description = "Training data: CSV/TSV/JSONL text records (with --tokenizer), a text file (tokenized, or byte-level without --tokenizer), " +
                "or JSONL with input_ids (+ attention_mask, labels or label)",
            Required = true,
        };
        var task = new Option<string>("--task")
        {
            Description = "lm (causal language modelling), seq2seq (an encoder-decoder learns JSONL 'labels' from 'input_ids'), classify or regress (MSE on a float label)",
            DefaultValueFactory = _ => "lm",
        };
        var decoderStart = new Option<long>("--decoder-start-id")
        {
            Description = "seq2seq: the token that starts the decoder's inputs (the labels shifted right behind it)",
            DefaultValueFactory = _ => 0,
        };
        var padId = new Option<long>("--pad-id")
        {
            Description = "Pre-tokenized JSONL: the id that pads input_ids and a decoder's inputs past its target (text records pad with the tokenizer's)",
            DefaultValueFactory = _ => 0,
        };
        var steps = new Option<long>("--steps") { Description = "Optimizer steps", DefaultValueFactory = _ => 100 };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch (under mpirun: the global batch, split evenly over the ranks)", DefaultValueFactory = _ => 8 };
        var seq = new Option<int?>("--seq") { Description = "Sequence length (text: chunk size, default 128; JSONL: default the longest line)" };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 1e-3 };
        var warmup = new Option<long>("--warmup") { Description = "Linear warm-up steps", DefaultValueFactory = _ => 0 };
        var schedule = new Option<string>("--schedule") { Description = "constant, linear or cosine", DefaultValueFactory = _ => "cosine" };
        var accumulate = new Option<int>("--accumulate") { Description = "Micro-batches per optimizer step (gradients summed on the device)", DefaultValueFactory = _ => 1 };
        var evalEvery = new Option<long>("--eval-every") { Description = "Evaluate on the held-out split every N steps (0: at the end only)", DefaultValueFactory = _ => 0 };
        var evalFraction = new Option<double>("--eval-fraction") { Description = "Fraction of the data held out for evaluation (the tail)", DefaultValueFactory = _ => 0.1 };
        var checkpointDir = new Option<string?>("--checkpoint-dir") { Description = "Where checkpoints go (step-NNNNNNNN/state.onnx)" };
        var checkpointEvery = new Option<long>("--checkpoint-every") { Description = "Checkpoint every N steps (0: at evaluations and at the end)", DefaultValueFactory = _ => 0 };
        var keep = new Option<int>("--keep") { Description = "Checkpoints to keep", DefaultValueFactory = _ => 3 };
        var resume = new Option<bool>("--resume") { Description = "Continue from the newest checkpoint in --checkpoint-dir" };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the data order", DefaultValueFactory = _ => 0 };
        var metrics = new Option<string?>("--metrics") { Description = "Write per-step metrics as JSONL to this file" };
        var export = new Option<string?>("--export") { Description = "Write the fine-tuned model for inference to this file" };
        var mergeLora = new Option<bool>("--merge-lora") { Description = "With --export: fold the LoRA factors into the base weights (W' = W + A·B)" };
        var bestMetric = new Option<string?>("--best-metric") { Description = "Keep the best evaluation by eval_loss, accuracy, macro_f1 or perplexity (CHECKPOINT_DIR/best; --export and --adapter then write it)" };
        var patience = new Option<int>("--patience") { Description = "Stop after N evaluations without a better --best-metric (0: never)", DefaultValueFactory = _ => 0 };
        var adapter = new Option<string?>("--adapter") { Description = "Write only the trained parameters to this safetensors file (apply with 'sptc apply-adapter')" };
        var device = new Option<string>("--device") { Description = "auto, cpu or cuda", DefaultValueFactory = _ => "auto" };
        var workDir = new Option<string?>("--work-dir") { Description = "Where the training graphs are compiled (default: CHECKPOINT_DIR/artifact, else a temporary directory)" };
        var frozen = new Option<string?>("--frozen") { Description = "Freeze parameters whose names match this regular expression" };
        var threads = new Option<int>("--threads") { Description = "ORT intra-op threads (0: ORT's default)", DefaultValueFactory = _ => 0 };
        var codebookInit = new Option<string>("--codebook-init")
        {
            Description = "With --optimize: fit the PQ codebooks to the model's queries and keys on the first training batches (data), or keep them N(0, 1) (random)",
            DefaultValueFactory = _ => "data",
        };
        codebookInit.AcceptOnlyFromAmong("data", "random");
        var plot = new Option<string?>("--plot")
        {
            Description = "Draw the loss and metric curves beside --metrics (png, the default, or svg: the metrics file's name with that extension)",
            Arity = ArgumentArity.ZeroOrOne,
        };
        plot.AcceptOnlyFromAmong("png", "svg");
        var optimize = OptimizeFlags.Create();
        var command = new Command("train", "Fine-tune a model on a text or JSONL file with ONNX Runtime")
        {
            model, data, task, steps, batch, seq, lr, warmup, schedule, accumulate, evalEvery, evalFraction, checkpointDir,
            checkpointEvery, keep, resume, seed, metrics, export, device, workDir, frozen, threads, mergeLora, adapter, bestMetric, patience,
            codebookInit, plot, decoderStart, padId,
        };
        optimize.AddTo(command);
        var dataFlags = DataFlags.Create();
        dataFlags.AddTo(command);
        // Under an MPI launcher, each rank runs this body (see RankLaunch): rank 0 prints and writes files.
        command.SetAction(parse => RankLaunch.Guard(context, parse, (ranks, output) =>
        {
            var modelPath = parse.GetRequiredValue(model);
            var checkpoints = parse.GetValue(checkpointDir);
            if (parse.GetValue(resume) && checkpoints is null)
            {
                throw new CliUsageException("--resume needs --checkpoint-dir");
            }

            // --plot [png|svg] draws from the metrics file, so it needs one.
            var plotFormat = parse.GetResult(plot) is null ? null : parse.GetValue(plot) ?? "png";
            if (plotFormat is not null && parse.GetValue(metrics) is null)
            {
                throw new CliUsageException("--plot draws the curves of --metrics: give --metrics FILE too");
            }

            var fraction = parse.GetValue(evalFraction);
            if (fraction is < 0 or >= 1)
            {
                throw new CliUsageException($"--eval-fraction must be in [0, 1), got {fraction}");
            }

            var options = new TrainerOptions
            {
                Steps = parse.GetValue(steps),
                BatchSize = parse.GetValue(batch),
                Accumulate = parse.GetValue(accumulate),
                LearningRate = parse.GetValue(lr),
                WarmupSteps = parse.GetValue(warmup),
                Schedule = TrainingSetup.Schedule(parse.GetValue(schedule)!),
                EvalEvery = parse.GetValue(evalEvery),
                CheckpointDir = checkpoints,
                CheckpointEvery = parse.GetValue(checkpointEvery),
                Keep = parse.GetValue(keep),
                Seed = parse.GetValue(seed),
                MetricsPath = parse.GetValue(metrics),
                // Resolved now, so that --device cuda without a CUDA provider fails before any compiling.
                Device = Trainer.ResolveDevice(TrainingSetup.Device(parse.GetValue(device)!)),
                IntraOpThreads = parse.GetValue(threads),
                BestMetric = parse.GetValue(bestMetric),
                Patience = parse.GetValue(patience),
            };
            options.Validate();
            var seq2seq = string.Equals(parse.GetValue(task), "seq2seq", StringComparison.OrdinalIgnoreCase);
            var loss = Directory.Exists(modelPath)
                ? TrainingSetup.Loss(TrainingManifest.Load(modelPath).Loss.Kind)
                : TrainingSetup.TaskLoss(parse.GetValue(task)!);

            // The data first: the label map sizes an added head, and a bad file fails before any compiling.
            using var tokenizer = dataFlags.OpenTokenizer(parse, output);
            var knownLabels = LabelMap.TryLoad(Directory.Exists(modelPath) ? modelPath
                : parse.GetValue(workDir) ?? (checkpoints is not null ? Path.Combine(checkpoints, "artifact") : modelPath + ".none"));
            var dataset = DataFiles.Load(parse.GetRequiredValue(data), dataFlags.Request(parse, tokenizer, loss, parse.GetValue(seq),
                parse.GetValue(resume) ? knownLabels : null, Dataset.DefaultIgnoreIndex, sequenceTargets: seq2seq, padId: parse.GetValue(padId)));

            // Before anything is compiled: the checkpoint directory is free, and fresh runs do not mix with old checkpoints
            // (rank 0 owns the directory).
            if (checkpoints is not null && ranks is not { IsPrimary: false })
            {
                CheckpointStore.Preflight(checkpoints, parse.GetValue(resume));
            }

            // Folders this run creates are removed again if it fails before a checkpoint exists in them.
            var created = (ranks is { IsPrimary: false } ? [] : new[] { checkpoints, parse.GetValue(workDir), checkpoints is null ? null : Path.Combine(checkpoints, "artifact") })
                .OfType<string>().Where(d => d.Length > 0 && FileChecks.Kind(d) == PathKind.Missing).ToList();
            try
            {
                return CompileAndTrain();
            }
            catch
            {
                foreach (var dir in created.Where(d => Directory.Exists(d) && !Directory.EnumerateDirectories(d, "step-*").Any()).Reverse())
                {
                    OutputCommit.DeleteDirectory(dir);
                }

                throw;
            }

            int CompileAndTrain()
            {
            // The artifact: a given directory, or the model compiled into the work directory.
            string artifact;
            string? temp = null;
            if (Directory.Exists(modelPath))
            {
                if (optimize.Requested(parse))
                {
                    throw new CliUsageException("--optimize applies to a model file, not to an artifact directory");
                }

                artifact = modelPath;
            }
            else
            {
                artifact = ranks is { IsPrimary: false } ? temp = RankLaunch.PrivateDirectory("sptc-train-rank")
                    : parse.GetValue(workDir)
                    ?? (checkpoints is not null ? Path.Combine(checkpoints, "artifact") : temp = Path.Combine(Path.GetTempPath(), "sptc-train-" + Guid.NewGuid().ToString("N")));
                using var source = ModelFiles.Load(new FileInfo(modelPath));
                if (seq2seq && !TrainingCompiler.DataInputsOf(source).Any(i => i.Role == "decoder_input_ids"))
                {
                    throw new CliUsageException($"--task seq2seq needs an encoder-decoder: '{modelPath}' has no decoder input (decoder_input_ids)");
                }

                var sptReport = optimize.Apply(parse, source);
                if (sptReport is not null)
                {
                    output.Out.WriteLine(sptReport);
                }

                if (dataFlags.AddHeadIfNeeded(parse, source, loss, dataset) is { } head)
                {
                    output.Out.WriteLine(head);
                }

                if (sptReport is not null && parse.GetValue(codebookInit) == "data"
                    && CodebookCalibration.Calibrate(source, dataset.Split(fraction).Train, seed: (int)parse.GetValue(seed), threads: parse.GetValue(threads)) is { Count: > 0 } fits)
                {
                    output.Out.WriteLine(FormattableString.Invariant(
                        $"codebooks: {fits.Count} fitted to the queries and keys of the first training batches ({fits[0].Rows:N0} rows each); mean L1 distance to the nearest codeword {fits.Average(f => f.MeanDistanceBefore):0.00} -> {fits.Average(f => f.MeanDistanceAfter):0.00}"));
                }

                TrainingSetup.Compile(source, artifact, new TrainingOptions
                {
                    Loss = loss,
                    FrozenPattern = parse.GetValue(frozen),
                    DecoderStartId = parse.GetValue(decoderStart),
                    SourceName = Path.GetFileName(modelPath),
                });
                dataset.Labels?.Save(artifact);
            }

            try
            {
                var primary = ranks is not { IsPrimary: false };
                return Train(output, artifact, dataset, fraction, ranks?.Configure(output, options) ?? options, parse.GetValue(resume),
                    primary ? parse.GetValue(export) : null, primary && parse.GetValue(mergeLora), primary ? parse.GetValue(adapter) : null,
                    primary ? plotFormat : null, Path.GetFileName(modelPath));
            }
            finally
            {
                if (temp is not null && Directory.Exists(temp))
                {
                    Directory.Delete(temp, recursive: true);
                }
            }
            }
        }));
        return command;
    }

    private static int Train(CliContext context, string artifact, Dataset data, double evalFraction,
        TrainerOptions options, bool resume, string? export, bool mergeLora = false, string? adapter = null, string? plotFormat = null, string? modelName = null)
    {
        if (mergeLora && export is null)
        {
            throw new CliUsageException("--merge-lora applies to --export: give the file to export to");
        }

        var manifest = TrainingManifest.Load(artifact);
        var (train, eval) = data.Split(evalFraction);
        using var trainer = new Trainer(artifact, train, eval, options);
        if (resume)
        {
            var from = trainer.ResumeFromLatest(warning => context.Error.WriteLine($"sptc: warning: {warning}"));
            context.Out.WriteLine(from is null
                ? "no checkpoint to resume from; starting at step 0"
                : $"resuming from {from} (step {trainer.Step})");
        }

        context.Out.WriteLine(FormattableString.Invariant(
            $"training {manifest.Trainable.Count()} of {manifest.Parameters.Count} parameter tensors ({manifest.Trainable.Sum(p => p.ElementCount):N0} values) on {trainer.Device.ToString().ToLowerInvariant()}: {train.Count} train / {eval.Count} eval sequences of {train.SequenceLength} tokens, steps {trainer.Step + 1}..{options.Steps}"));

        TrainingResult result;
        using (Interrupts.Graceful())
        {
            result = RunWithProgress(context, trainer, options);
        }

        if (plotFormat is not null && options.MetricsPath is { } metricsPath && File.Exists(metricsPath))
        {
            var plotPath = MetricsPlot.PathFor(metricsPath, plotFormat);
            var drawn = MetricsPlot.Write(metricsPath, plotPath, plotFormat, $"sptc train {modelName}".TrimEnd());
            context.Out.WriteLine($"plot: {plotPath} ({string.Join(", ", drawn.Select(s => s.Name))})");
        }

        if (Interrupts.Received is { } signal)
        {
            context.Error.WriteLine($"sptc: {signal} received: stopped after step {result.LastStep}" + (result.LastCheckpoint is { } at
                ? $"; checkpoint {at} (continue with --resume)"
                : "; no --checkpoint-dir, so nothing was saved"));
            return ExitCodes.Interrupted;
        }

        context.Out.WriteLine(FormattableString.Invariant(
            $"done: steps {result.FirstStep}..{result.LastStep}, loss {result.FirstLoss:0.0000} -> {result.FinalLoss:0.0000}") +
            (result.FinalEvalLoss is { } e ? FormattableString.Invariant($", eval loss {e:0.0000}") : "") +
            FormattableString.Invariant($", {result.TokensPerSecond:0} tokens/s, {result.Seconds:0.0} s, peak ORT memory {TrainingSetup.Bytes(trainer.MaxInUseBytes())}"));
        if (result.LastCheckpoint is { } checkpoint)
        {
            context.Out.WriteLine($"checkpoint: {checkpoint}");
        }

        if (result.Best is { } best)
        {
            context.Out.WriteLine(FormattableString.Invariant($"best: {best.Metric} {best.Value:0.0000} at step {best.Step}") +
                (result.StoppedEarly ? $" (stopped early: {options.Patience} evaluations without improvement)" : "") +
                (best.StateFile is { } state ? $", {state}" : ""));
            if (best.StateFile is { } bestState && (export is not null || adapter is not null))
            {
                trainer.LoadCheckpoint(bestState);
            }
        }

        if (export is not null)
        {
            var source = Path.Combine(artifact, TrainingSetup.SourceCopy);
            if (!File.Exists(source))
            {
                throw new CliUsageException($"--export needs the compiled model, but {artifact} has no {TrainingSetup.SourceCopy}");
            }

            trainer.ExportInference(source, export, data.Labels is { } map ? [new(LabelMap.MetadataKey, map.ToJson())] : null);
            context.Out.WriteLine($"exported: {export}" + (mergeLora ? $" ({Spt.Runtime.Export.Adapter.MergeLoraInPlace(export)})" : ""));
        }

        if (adapter is not null)
        {
            var trainable = manifest.Trainable.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
            var tensors = trainer.ParameterTensors().Where(t => trainable.Contains(t.Name)).ToList();
            var meta = new List<KeyValuePair<string, string>> { new("base", manifest.SourceModel["name"]?.GetValue<string>() ?? ""), new("steps", trainer.Step.ToString(CultureInfo.InvariantCulture)) };
            if (data.Labels is { } labels)
            {
                meta.Add(new(LabelMap.MetadataKey, labels.ToJson()));
            }

            Spt.Runtime.Export.Adapter.Write(adapter, tensors, meta);
            context.Out.WriteLine(FormattableString.Invariant($"adapter: {adapter} ({tensors.Count} tensors, {tensors.Sum(t => t.ElementCount):N0} values; base: {Path.Combine(artifact, TrainingSetup.SourceCopy)})"));
        }

        return ExitCodes.Ok;
    }

    /// <summary>A Spectre progress bar (loss, tokens/s, ETA) on a terminal; plain lines when output is redirected.</summary>
    internal static TrainingResult RunWithProgress(CliContext context, Trainer trainer, TrainerOptions options, string label = "train")
    {
        if (!context.Console.Profile.Capabilities.Ansi)
        {
            var every = Math.Max(1, options.Steps / 20);
            return trainer.Run(r =>
            {
                if (r.Step % every == 0 || r.Step == r.TotalSteps || r.EvalLoss is not null)
                {
                    context.Out.WriteLine(StepLine(label, r));
                }
            }, cancel: Interrupts.Token);
        }

        TrainingResult? result = null;
        context.Console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(label, maxValue: options.Steps);
                task.Value = trainer.Step;
                result = trainer.Run(r =>
                {
                    task.Value = r.Step;
                    task.Description = Markup.Escape(FormattableString.Invariant(
                        $"{label} {r.Step}/{r.TotalSteps} loss {r.Loss:0.000} {r.TokensPerSecond:0} tok/s") +
                        (r.EvalLoss is { } e ? FormattableString.Invariant($" eval {e:0.000}") : ""));
                }, cancel: Interrupts.Token);
            });
        return result!;
    }

    private static string StepLine(string label, StepReport r) => string.Create(CultureInfo.InvariantCulture,
        $"{label} step {r.Step}/{r.TotalSteps}  loss {r.Loss:0.0000}  lr {r.LearningRate:0.###e+0}  grad_norm {r.GradNorm:0.000}  {r.TokensPerSecond:0} tok/s") +
        (r.Eval is { } ev ? "  " + ev.ToString().Replace(",", "", StringComparison.Ordinal)
            : r.EvalLoss is { } e ? string.Create(CultureInfo.InvariantCulture, $"  eval_loss {e:0.0000}") : "");
}
