using System.CommandLine;
using Spt.Ir;
using Spt.Ir.Samples;

namespace Spt.Cli;

/// <summary><c>sptc sample --out FILE [--layers L --d-model D --heads H --d-ff F --vocab V --max-seq S]</c>: writes the built-in sample decoder.</summary>
internal static class SampleCommand
{
    public static Command Create(CliContext context)
    {
        var output = new Option<string>("--out", "-o") { Description = "Where to write the model", Required = true };
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 2, Description = "Decoder blocks" };
        var dModel = new Option<int>("--d-model") { DefaultValueFactory = _ => 64, Description = "Hidden width" };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 4, Description = "Attention heads" };
        var dFf = new Option<int>("--d-ff") { DefaultValueFactory = _ => 256, Description = "FFN width" };
        var vocab = new Option<int>("--vocab") { DefaultValueFactory = _ => 128, Description = "Vocabulary" };
        var maxSeq = new Option<int>("--max-seq") { DefaultValueFactory = _ => 64, Description = "Positions" };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1, Description = "Seed of the weights" };
        var command = new Command("sample", "Write the built-in sample decoder (a PyTorch-style GPT/OPT export) of a chosen size")
        {
            output, layers, dModel, heads, dFf, vocab, maxSeq, seed,
        };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var config = new SampleDecoderConfig(parse.GetValue(layers), parse.GetValue(dModel),
                parse.GetValue(heads), parse.GetValue(dFf), parse.GetValue(vocab), parse.GetValue(maxSeq), parse.GetValue(seed));
            try
            {
                config.Validate();
            }
            catch (ArgumentException e)
            {
                throw new CliUsageException(e.Message);
            }

            using var commit = new OutputCommit();
            var staged = commit.AddFile(parse.GetRequiredValue(output), "output model");
            using (var model = SampleModels.TinyDecoder(config))
            {
                model.Save(staged);
            }

            commit.Commit();

            context.Out.WriteLine($"wrote {parse.GetRequiredValue(output)}: {config}");
            return ExitCodes.Ok;
        }));
        return command;
    }
}
