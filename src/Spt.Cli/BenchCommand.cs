using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.Ir;
using Spt.Passes;
using Spt.Passes.Training;
using Spt.Runtime.Data;
using Spt.Runtime.Memory;
using Spt.Runtime.Training;

namespace Spt.Cli;

/// <summary>
/// <c>sptc bench MODEL.onnx [--seq 512,1024,2048] [--batch B] [--steps N] [--lora R] [--variants ...] [--profile DIR] [--json FILE]</c>:
/// training-step time, peak memory and start-up time of the baselines a user picks between: dense full fine-tuning,
/// dense LoRA (rank R, every Linear), the SPT rewrite with LoRA R and the SPT rewrite without LoRA. Each (variant,
/// sequence length) is measured in a child process (<c>sptc bench-worker</c>) so that peak RSS and allocator peaks do
/// not mix: the median step time (with min and max) over N steps after warm-up, ORT's allocator <c>MaxInUse</c>
/// (resident parameters, optimizer state, gradients and activations; C API <c>AllocatorGetStats</c>), the process's
/// peak RSS (<c>VmHWM</c>) and the start-up: compiling the training graphs plus creating the sessions.
/// </summary>
internal static class BenchCommand
{
    /// <summary>The variants, in the order they are measured and printed.</summary>
    internal static readonly string[] AllVariants = ["dense", "dense-lora", "spt-lora", "spt"];

    public static Command Create(CliContext context)
    {
        var model = new Argument<FileInfo>("MODEL") { Description = "The ONNX model to benchmark" };
        var seqs = new Option<string>("--seq") { Description = "Comma-separated sequence lengths", DefaultValueFactory = _ => "512,1024,2048" };
        var batch = new Option<int>("--batch") { Description = "Sequences per step", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "Timed steps per measurement (median reported)", DefaultValueFactory = _ => 5 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps first", DefaultValueFactory = _ => 1 };
        var json = new Option<string?>("--json") { Description = "Also write the results as JSON to this file" };
        var task = new Option<string>("--task") { Description = "lm or classify", DefaultValueFactory = _ => "lm" };
        var dense = new Option<bool>("--dense-only") { Description = "Measure only the dense model (same as --variants dense)" };
        var variantsOption = new Option<string?>("--variants")
        {
            Description = "Comma-separated variants: dense (full fine-tuning), dense-lora (LoRA --lora on every Linear), " +
                "spt-lora (the SPT rewrite with LoRA --lora), spt (the SPT rewrite without LoRA); default: all that apply",
        };
        var profile = new Option<string?>("--profile") { Description = "Write ONNX Runtime's per-node profile of each measurement into this directory and print time by op type" };
        var threads = new Option<int>("--threads") { Description = "ORT intra-op threads (0: ORT's default)", DefaultValueFactory = _ => 0 };
        var device = new Option<string>("--device") { Description = "auto, cpu or cuda", DefaultValueFactory = _ => "auto" };
        var ranks = new Option<string?>("--ranks") { Description = "Also time data-parallel steps on this host with these rank counts (e.g. 2,4; mpirun -np N; --batch is the global batch; --threads applies per rank)" };
        var optimize = OptimizeFlags.Create();
        var command = new Command("bench", "Time training steps, start-up and peak memory: dense full, dense LoRA, SPT + LoRA, SPT")
        {
            model, seqs, batch, steps, warmup, json, task, dense, variantsOption, profile, threads, device, ranks,
        };
        optimize.AddTo(command, includeSwitch: false);
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var lengths = ParseLengths(parse.GetValue(seqs)!);
            DataParallelBench.RefuseMpiLaunch();
            var rankCounts = parse.GetValue(ranks) is { } r ? DataParallelBench.ParseRanks(r, parse.GetValue(batch)) : [];
            if (parse.GetValue(batch) < 1 || parse.GetValue(steps) < 1 || parse.GetValue(warmup) < 0)
            {
                throw new CliUsageException("--batch and --steps must be at least 1, --warmup at least 0");
            }

            var sptOptions = optimize.Options(parse);
            var wanted = ChooseVariants(parse.GetValue(variantsOption), parse.GetValue(dense), sptOptions);
            var profileDir = parse.GetValue(profile) is { } pd ? Path.GetFullPath(pd) : null;
            if (profileDir is not null)
            {
                if (File.Exists(profileDir))
                {
                    throw new CliUsageException($"--profile: '{profileDir}' is a file, not a directory");
                }

                Directory.CreateDirectory(profileDir);
            }

            // Resolved before anything is compiled, so that a missing CUDA provider is one line, at once.
            var onDevice = Trainer.ResolveDevice(TrainingSetup.Device(parse.GetValue(device)!)).ToString().ToLowerInvariant();
            var modelFile = parse.GetRequiredValue(model);
            var loss = TrainingSetup.TaskLoss(parse.GetValue(task)!);
            var work = Path.Combine(Path.GetTempPath(), "sptc-bench-" + Guid.NewGuid().ToString("N"));
            try
            {
                var variants = new List<(string Name, string Artifact)>();
                var compileSeconds = new Dictionary<string, double>();
                foreach (var name in wanted)
                {
                    var clock = Stopwatch.StartNew();
                    using var source = ModelFiles.Load(modelFile);
                    var rewrite = name switch
                    {
                        "dense" => null,
                        "dense-lora" => sptOptions with { Attention = AttentionMode.Keep, Ffn = FfnMode.Keep },
                        "spt-lora" => sptOptions,
                        _ => sptOptions with { LoraRank = 0 },
                    };
                    if (rewrite is not null)
                    {
                        context.Out.WriteLine($"{name}: {OptimizeFlags.Rewrite(source, rewrite)}");
                    }

                    var dir = Path.Combine(work, name);
                    TrainingSetup.Compile(source, dir, new TrainingOptions { Loss = loss, SourceName = modelFile.Name });
                    compileSeconds[name] = clock.Elapsed.TotalSeconds;
                    variants.Add((name, dir));
                }

                var results = new JsonArray();
                var hasLora = variants.Any(v => v.Name == "dense-lora");
                var table = new Table().AddColumns("seq", "model", "step ms (min-max)", "MaxInUse", "peak RSS", "start-up s (compile+sessions)", "time vs dense");
                if (hasLora)
                {
                    table.AddColumn("time vs dense LoRA");
                }

                table.AddColumns("MaxInUse vs dense", "RSS vs dense");
                foreach (var seq in lengths)
                {
                    var row = new JsonObject { ["seq"] = seq };
                    foreach (var (name, artifact) in variants)
                    {
                        var profilePrefix = profileDir is null ? null : Path.Combine(profileDir, $"{name}-seq{Str(seq)}");
                        var m = RunWorker(artifact, seq, parse.GetValue(batch), parse.GetValue(steps), parse.GetValue(warmup), parse.GetValue(threads), onDevice,
                            profilePrefix: profilePrefix);
                        m["compile_s"] = compileSeconds[name];
                        m["startup_s"] = compileSeconds[name] + (m["session_s"]?.GetValue<double>() ?? 0);
                        if (row["dense"] is JsonObject denseRow)
                        {
                            m["vs_dense"] = Ratios(denseRow, m);
                        }

                        if (name != "dense-lora" && row["dense-lora"] is JsonObject loraRow)
                        {
                            m["vs_dense_lora"] = Ratios(loraRow, m);
                        }

                        row[name] = m;
                        var vsDense = m["vs_dense"] as JsonObject;
                        var cells = new List<string>
                        {
                            Str(seq), name,
                            FormattableString.Invariant($"{Ms(m, "median_step_s")} ({Ms(m, "min_step_s")}-{Ms(m, "max_step_s")})"),
                            TrainingSetup.Bytes(m["max_in_use_bytes"]?.GetValue<long>()),
                            TrainingSetup.Bytes(m["peak_rss_bytes"]?.GetValue<long>()),
                            FormattableString.Invariant($"{m["startup_s"]!.GetValue<double>():0.0} ({compileSeconds[name]:0.0}+{m["session_s"]?.GetValue<double>() ?? 0:0.0})"),
                            Ratio(vsDense, "time"),
                        };
                        if (hasLora)
                        {
                            cells.Add(Ratio(m["vs_dense_lora"] as JsonObject, "time"));
                        }

                        cells.AddRange([Ratio(vsDense, "max_in_use"), Ratio(vsDense, "peak_rss")]);
                        table.AddRow([.. cells]);
                        if (profilePrefix is not null)
                        {
                            m["profile"] = ProfileSummary.Summarize(profilePrefix, parse.GetValue(steps) + parse.GetValue(warmup));
                        }

                        context.Out.Flush();
                    }

                    results.Add(row);
                }

                context.Console.Write(table);
                if (profileDir is not null)
                {
                    foreach (var row in results.Select(r => r!.AsObject()))
                    {
                        foreach (var (name, _) in variants)
                        {
                            ProfileSummary.Print(context, $"{name} at --seq {row["seq"]}", row[name]!["profile"]!.AsObject());
                        }
                    }

                    context.Out.WriteLine($"profiles in {profileDir}");
                }

                var scaling = rankCounts.Length == 0 ? null : DataParallelBench.Run(context, results, variants, rankCounts,
                    (artifact, seq, n) => RunWorker(artifact, seq, parse.GetValue(batch), parse.GetValue(steps), parse.GetValue(warmup), parse.GetValue(threads), onDevice, n));
                if (parse.GetValue(json) is { } jsonPath)
                {
                    var doc = new JsonObject
                    {
                        ["model"] = modelFile.FullName,
                        ["batch"] = parse.GetValue(batch),
                        ["steps"] = parse.GetValue(steps),
                        ["warmup"] = parse.GetValue(warmup),
                        ["task"] = parse.GetValue(task),
                        ["lora"] = sptOptions.LoraRank,
                        ["variants"] = new JsonArray([.. variants.Select(v => (JsonNode)v.Name)]),
                        ["results"] = results,
                    };
                    if (scaling is not null)
                    {
                        doc["scaling"] = scaling;
                    }

                    File.WriteAllText(jsonPath, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                    context.Out.WriteLine($"wrote {jsonPath}");
                }

                return ExitCodes.Ok;
            }
            finally
            {
                if (Directory.Exists(work))
                {
                    Directory.Delete(work, recursive: true);
                }
            }
        }));
        return command;
    }

    /// <summary>
    /// The variants to measure: those named by --variants, or by default dense, dense LoRA and SPT + LoRA when a LoRA
    /// rank is given, and SPT without LoRA (skipped when the flags keep both attention and FFN dense).
    /// </summary>
    internal static IReadOnlyList<string> ChooseVariants(string? list, bool denseOnly, SptOptions options)
    {
        var sptRewrites = options.Attention == AttentionMode.Sparse || options.Ffn == FfnMode.Routed;
        if (denseOnly)
        {
            if (list is not null)
            {
                throw new CliUsageException("give --dense-only or --variants, not both");
            }

            return ["dense"];
        }

        if (list is null)
        {
            return [.. AllVariants.Where(v => v switch
            {
                "dense-lora" => options.LoraRank > 0,
                "spt-lora" => options.LoraRank > 0 && sptRewrites,
                "spt" => sptRewrites,
                _ => true,
            })];
        }

        var names = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(n => n.ToLowerInvariant()).ToList();
        var unknown = names.Count == 0 ? list : names.FirstOrDefault(n => !AllVariants.Contains(n));
        if (unknown is not null)
        {
            throw new CliUsageException($"--variants: '{unknown}' is not one of {string.Join(", ", AllVariants)}");
        }

        if (options.LoraRank == 0 && names.FirstOrDefault(n => n is "dense-lora" or "spt-lora") is { } lora)
        {
            throw new CliUsageException($"--variants {lora} needs a LoRA rank: give --lora R");
        }

        if (!sptRewrites && names.FirstOrDefault(n => n is "spt" or "spt-lora") is { } spt)
        {
            throw new CliUsageException($"--variants {spt}: --attention keep --ffn keep leaves nothing for the SPT rewrite to do");
        }

        return [.. AllVariants.Where(names.Contains)];
    }

    /// <summary>The hidden worker: measures one artifact at one sequence length and prints one JSON line.</summary>
    public static Command CreateWorker(CliContext context)
    {
        var artifact = new Argument<string>("ARTIFACT") { Description = "Training-artifact directory" };
        var seq = new Option<int>("--seq") { Required = true };
        var batch = new Option<int>("--batch") { DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 5 };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 0 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "auto" };
        var profile = new Option<string?>("--profile");
        var command = new Command("bench-worker", "Measure one training artifact (used by sptc bench)") { artifact, seq, batch, steps, warmup, threads, device, profile };
        command.Hidden = true;
        command.SetAction(parse => RankLaunch.Guard(context, parse, (ranks, output) =>
        {
            var dir = parse.GetRequiredValue(artifact);
            var vocab = Vocabulary(dir);
            var total = parse.GetValue(steps) + parse.GetValue(warmup);
            var data = Dataset.Synthetic(parse.GetValue(batch) * total, parse.GetValue(seq), vocab, seed: 1);
            var options = new TrainerOptions
            {
                Steps = total,
                BatchSize = parse.GetValue(batch),
                LearningRate = 1e-4,
                Schedule = LrScheduleKind.Constant,
                Device = TrainingSetup.Device(parse.GetValue(device)!),
                IntraOpThreads = parse.GetValue(threads),
                ProfilePrefix = parse.GetValue(profile),
            };
            var sessions = Stopwatch.StartNew();
            using var trainer = new Trainer(dir, data, null, ranks?.Configure(output, options) ?? options);
            var sessionSeconds = sessions.Elapsed.TotalSeconds;
            var times = new List<double>();
            var loss = 0.0;
            double? firstStep = null;
            for (var i = 0; i < total; i++)
            {
                var report = trainer.TrainStep();
                loss = report.Loss;
                firstStep ??= report.Seconds;
                if (i >= parse.GetValue(warmup))
                {
                    times.Add(report.Seconds);
                }
            }

            times.Sort();
            var median = times.Count % 2 == 1 ? times[times.Count / 2] : (times[(times.Count / 2) - 1] + times[times.Count / 2]) / 2;
            output.Out.WriteLine(new JsonObject
            {
                ["median_step_s"] = median,
                ["min_step_s"] = times[0],
                ["max_step_s"] = times[^1],
                ["session_s"] = sessionSeconds,
                ["first_step_s"] = firstStep,
                ["max_in_use_bytes"] = trainer.MaxInUseBytes(),
                ["peak_rss_bytes"] = AllocatorStats.PeakRssBytes(),
                ["device"] = trainer.Device.ToString().ToLowerInvariant(),
                ["last_loss"] = double.IsFinite(loss) ? loss : null,
                ["tokens_per_s"] = trainer.TokensPerStep / median,
                ["ranks"] = ranks?.World.Size ?? 1,
            }.ToJsonString());
            return ExitCodes.Ok;
        }));
        return command;
    }

    // In a method of its own: a local of the (once-run, unoptimized) worker action would keep eval.onnx's model, and
    // its constants, reachable for the whole measurement.
    private static long Vocabulary(string artifactDirectory)
    {
        var manifest = TrainingManifest.Load(artifactDirectory);
        using var eval = Model.Load(Path.Combine(artifactDirectory, manifest.EvalGraph));
        return ModelLimits.Of(eval.Graph, manifest.Input(DataRole.InputIds)?.Name ?? "input_ids").Vocabulary ?? Dataset.ByteVocabulary;
    }

    private static JsonObject RunWorker(string artifact, int seq, int batch, int steps, int warmup, int threads, string device, int ranks = 1, string? profilePrefix = null)
    {
        var (file, prefix) = SelfInvocation();
        if (ranks > 1)
        {
            (file, prefix) = DataParallelBench.UnderMpirun(ranks, file, prefix);
        }

        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        DataParallelBench.AllowRoot(start);
        foreach (var a in prefix.Concat(["bench-worker", artifact, "--seq", Str(seq), "--batch", Str(batch), "--steps", Str(steps), "--warmup", Str(warmup), "--threads", Str(threads), "--device", device]))
        {
            start.ArgumentList.Add(a);
        }

        if (profilePrefix is not null)
        {
            start.ArgumentList.Add("--profile");
            start.ArgumentList.Add(profilePrefix);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {file}");
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            var message = stderr.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault() ?? $"exit code {process.ExitCode}";
            throw new CliUsageException($"the measurement at --seq {seq} failed: {message.Replace("sptc: error: ", "", StringComparison.Ordinal)}");
        }

        var line = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
        return JsonNode.Parse(line)!.AsObject();
    }

    /// <summary>How to start this sptc again: its apphost, or the dotnet host with this assembly.</summary>
    private static (string File, string[] Prefix) SelfInvocation()
    {
        var assembly = typeof(BenchCommand).Assembly.Location;
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host))
        {
            var process = Environment.ProcessPath;
            host = process is not null && Path.GetFileNameWithoutExtension(process) == "dotnet" ? process : "dotnet";
        }

        return (host, ["exec", assembly]);
    }

    private static string Ms(JsonObject m, string key) => (m[key]!.GetValue<double>() * 1000).ToString("0", CultureInfo.InvariantCulture);

    private static JsonObject Ratios(JsonObject dense, JsonObject spt)
    {
        static double? R(JsonObject a, JsonObject b, string key) =>
            a[key] is { } x && b[key] is { } y && x.GetValue<double>() > 0 ? y.GetValue<double>() / x.GetValue<double>() : null;
        return new JsonObject
        {
            ["time"] = R(dense, spt, "median_step_s"),
            ["max_in_use"] = R(dense, spt, "max_in_use_bytes"),
            ["peak_rss"] = R(dense, spt, "peak_rss_bytes"),
        };
    }

    private static string Ratio(JsonObject? ratios, string key) =>
        ratios?[key]?.GetValue<double>() is { } r ? r.ToString("0.00", CultureInfo.InvariantCulture) + "x" : "";

    private static int[] ParseLengths(string text)
    {
        try
        {
            var lengths = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture)).ToArray();
            return lengths.Length > 0 && lengths.All(l => l >= 2) ? lengths : throw new FormatException();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new CliUsageException($"--seq must be comma-separated lengths of at least 2, got '{text}'");
        }
    }

    private static string Str(int v) => v.ToString(CultureInfo.InvariantCulture);
}
