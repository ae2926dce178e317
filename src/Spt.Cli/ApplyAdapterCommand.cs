using System.CommandLine;

namespace Spt.Cli;

/// <summary>
/// <c>sptc apply-adapter MODEL ADAPTER --out FILE [--merge-lora]</c>: puts the trained parameters of an adapter
/// file (written by <c>sptc train --adapter</c>) back into the model it was trained from.
/// </summary>
internal static class ApplyAdapterCommand
{
    public static Command Create(CliContext context)
    {
        var model = new Argument<string>("MODEL") { Description = "The model the adapter was trained from (e.g. the training artifact's source.onnx)" };
        var adapter = new Argument<string>("ADAPTER") { Description = "The adapter (safetensors) file" };
        var output = new Option<string>("--out", "-o") { Description = "Where to write the fine-tuned model", Required = true };
        var merge = new Option<bool>("--merge-lora") { Description = "Fold the LoRA factors into the base weights (W' = W + A·B)" };
        var command = new Command("apply-adapter", "Apply a trained adapter (safetensors) to its base model") { model, adapter, output, merge };
        command.SetAction(parse => context.Guard(parse, () =>
        {
            var modelPath = parse.GetRequiredValue(model);
            if (!File.Exists(modelPath))
            {
                throw new CliUsageException($"model file '{modelPath}' does not exist");
            }

            var note = Spt.Runtime.Export.Adapter.Apply(modelPath, parse.GetRequiredValue(adapter), parse.GetRequiredValue(output), parse.GetValue(merge));
            context.Out.WriteLine($"wrote {parse.GetRequiredValue(output)}: {note}");
            return ExitCodes.Ok;
        }));
        return command;
    }
}
