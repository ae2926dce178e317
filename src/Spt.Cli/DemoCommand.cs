using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;
using Spt.Ir;
using Spt.Ir.Samples;
using Spt.Passes;
using Spt.Passes.Training;
using Spt.Runtime;
using Spt.Runtime.Data;
using Spt.Runtime.Training;

namespace Spt.Cli;

/// <summary>
/// <c>sptc demo</c>: the whole job on the built-in sample decoder: prove the rewrite faithful (exact mode against
/// the original in ORT), apply the SPT rewrite, fine-tune the dense and the SPT model on the embedded corpus with
/// the same data order, and print loss, time and memory side by side.
/// </summary>
internal static class DemoCommand
{
    public static Command Create(CliContext context)
    {
        var steps = new Option<long>("--steps") { Description = "Optimizer steps per model", DefaultValueFactory = _ => 60 };
        var batch = new Option<int>("--batch") { Description = "Sequences per step", DefaultValueFactory = _ => 4 };
        var seq = new Option<int>("--seq") { Description = "Sequence length (at most the sample's 256 positions)", DefaultValueFactory = _ => 256 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 3e-3 };
        var threads = new Option<int>("--threads") { Description = "ORT intra-op threads (0: ORT's default)", DefaultValueFactory = _ => 0 };
        var keep = new Option<string?>("--keep-dir") { Description = "Keep the models and training artifacts in this directory" };
        var json = new Option<bool>("--json") { Description = "Print the results as JSON instead of the table (progress goes to stderr)" };
        var command = new Command("demo", "Optimize the built-in sample model and fine-tune it dense vs SPT on a small embedded corpus")
        {
            steps, batch, seq, lr, threads, keep, json,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var work = parse.GetValue(keep) ?? Path.Combine(Path.GetTempPath(), "sptc-demo-" + Guid.NewGuid().ToString("N"));
            try
            {
                return Run(context, work, parse.GetValue(steps), parse.GetValue(batch), parse.GetValue(seq), parse.GetValue(lr), parse.GetValue(threads), parse.GetValue(json));
            }
            finally
            {
                if (parse.GetValue(keep) is null && Directory.Exists(work))
                {
                    Directory.Delete(work, recursive: true);
                }
            }
        }));
        return command;
    }

    /// <summary>
    /// The sample decoder the demo trains: 2 layers, d 256, 4 heads of 64, d_ff 1024, vocabulary 128 (ASCII), 256
    /// positions. Sized so that attention and the FFNs, not per-op overheads, set the step time: there the SPT model
    /// (sparse attention, half the FFN blocks, LoRA) is faster and leaner than dense full fine-tuning (at d 64 and 64
    /// positions it was slower), while 60 steps of batch 4 per model still take about a minute on 2 cores.
    /// </summary>
    public static SampleDecoderConfig SampleConfig { get; } = new(Layers: 2, DModel: 256, Heads: 4, DFf: 1024, Vocab: 128, MaxSequence: 256, Seed: 1);

    /// <summary>The SPT settings of the demo: a quarter of the keys per query, 2 of 4 FFN blocks per token, LoRA rank 16 in the FFNs (the SPT reference).</summary>
    public static SptOptions SptSettings { get; } = new() { TopKRatio = 0.25, Blocks = 4, Active = 2, LoraRank = 16 };

    private static int Run(CliContext output, string work, long steps, int batch, int seq, double lr, int threads, bool json)
    {
        // With --json, stdout carries only the JSON document; the progress lines go to stderr.
        var context = json ? new CliContext(output.Error, output.Error) : output;
        Directory.CreateDirectory(work);
        var total = Stopwatch.StartNew();

        // 1. The sample model, and the exact-mode rewrite checked against it.
        using var dense = SampleModels.TinyDecoder(SampleConfig);
        var densePath = Path.Combine(work, "sample.onnx");
        dense.Save(densePath);
        using (var exact = Model.Load(densePath))
        {
            var report = OptimizeFlags.Rewrite(exact, SptSettings with { Exact = true });
            var worst = ExactDifference(dense, exact, seq);
            context.Out.WriteLine(FormattableString.Invariant($"exact check: {report}; max |dense - exact SPT| over the outputs = {worst:0.0e+0}"));
            if (!(worst <= 1e-4))
            {
                throw new InvalidOperationException(FormattableString.Invariant($"the exact-mode rewrite differs from the dense model by {worst}"));
            }
        }

        // 2. The SPT rewrite proper.
        using var spt = Model.Load(densePath);
        context.Out.WriteLine(OptimizeFlags.Rewrite(spt, SptSettings));
        spt.Save(Path.Combine(work, "sample.spt.onnx"));

        // 3. Fine-tune both on the embedded corpus, same data and order.
        var (train, eval) = Dataset.FromText(EmbeddedCorpus.Text, seq, "embedded corpus").Split(0.1);
        context.Out.WriteLine(FormattableString.Invariant(
            $"corpus: {EmbeddedCorpus.Text.Length} bytes, {train.Count} train / {eval.Count} eval sequences of {seq} tokens; {steps} steps of batch {batch} per model"));
        var options = new TrainerOptions
        {
            Steps = steps,
            BatchSize = batch,
            LearningRate = lr,
            WarmupSteps = Math.Min(20, steps / 10),
            Schedule = LrScheduleKind.Cosine,
            EvalEvery = Math.Max(1, steps / 3),
            Seed = 1,
            Device = ExecutionDevice.Auto,
            IntraOpThreads = threads,
        };
        var rows = new List<(string Name, TrainingResult Result, double Eval0, long? Memory, long Params)>();
        foreach (var (name, model) in new[] { ("dense", dense), ("SPT", spt) })
        {
            var artifact = Path.Combine(work, name.ToLowerInvariant());
            var manifest = TrainingSetup.Compile(model, artifact, new TrainingOptions { Loss = LossKind.CausalLm, SourceName = name });
            using var trainer = new Trainer(artifact, train, eval, options);
            var eval0 = trainer.Evaluate().TaskLoss;
            var result = TrainCommand.RunWithProgress(context, trainer, options, name);
            rows.Add((name, result, eval0, trainer.MaxInUseBytes(), manifest.Trainable.Sum(p => p.ElementCount)));
        }

        var table = new Table().AddColumns("model", "trainable", "train loss first -> last", "eval loss before -> after", "time", "tokens/s", "peak ORT memory");
        foreach (var (name, r, eval0, memory, count) in rows)
        {
            table.AddRow(
                name,
                count.ToString("N0", CultureInfo.InvariantCulture),
                FormattableString.Invariant($"{r.FirstLoss:0.000} -> {r.FinalLoss:0.000}"),
                FormattableString.Invariant($"{eval0:0.000} -> {r.FinalEvalLoss:0.000}"),
                FormattableString.Invariant($"{r.Seconds:0.0} s"),
                r.TokensPerSecond.ToString("0", CultureInfo.InvariantCulture),
                TrainingSetup.Bytes(memory));
        }

        var (d, s) = (rows[0].Result.FinalEvalLoss!.Value, rows[1].Result.FinalEvalLoss!.Value);
        if (json)
        {
            output.WriteJson(new JsonObject
            {
                ["models"] = new JsonArray([.. rows.Select(row => (JsonNode)new JsonObject
                {
                    ["name"] = row.Name,
                    ["trainable_parameters"] = row.Params,
                    ["train_loss_first"] = row.Result.FirstLoss,
                    ["train_loss_last"] = row.Result.FinalLoss,
                    ["eval_loss_before"] = row.Eval0,
                    ["eval_loss_after"] = row.Result.FinalEvalLoss,
                    ["seconds"] = row.Result.Seconds,
                    ["tokens_per_second"] = row.Result.TokensPerSecond,
                    ["peak_ort_memory_bytes"] = row.Memory,
                })]),
                ["spt_eval_loss_vs_dense"] = (s - d) / d,
                ["seconds"] = total.Elapsed.TotalSeconds,
            });
        }
        else
        {
            context.Console.Write(table);
        }

        context.Out.WriteLine(FormattableString.Invariant(
            $"SPT eval loss is {100 * (s - d) / d:+0.0;-0.0}% vs dense; demo took {total.Elapsed.TotalSeconds:0} s"));
        return ExitCodes.Ok;
    }

    /// <summary>Largest absolute difference between the outputs of two models on the same generated inputs.</summary>
    private static double ExactDifference(Model reference, Model candidate, int seq)
    {
        var inputs = InputGenerator.Generate(reference, new InputGeneratorOptions { Batch = 2, Sequence = seq, Seed = 0 });
        List<KeyValuePair<string, TensorData>> expected, actual;
        using (var runner = new OrtModelRunner(reference))
        {
            expected = [.. runner.Run(inputs)];
        }

        using (var runner = new OrtModelRunner(candidate))
        {
            actual = [.. runner.Run(inputs)];
        }

        var byName = actual.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        return expected.Max(e => OutputComparison.Compare(e.Key, e.Value, byName[e.Key], 1e-4).MaxAbsDiff);
    }
}
