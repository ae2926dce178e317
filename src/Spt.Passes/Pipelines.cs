using Spt.Passes.Canonicalization;
using Spt.Passes.Lora;
using Spt.Passes.Recognition;
using Spt.Passes.Rewrites;

namespace Spt.Passes;

/// <summary>The standard pipelines, in one place. Each pass is listed explicitly, in the order it runs.</summary>
public static class Pipelines
{
    /// <summary>
    /// The SPT rewrite: recognize attention and FFN blocks and rewrite the selected ones to the SPT ops.
    /// </summary>
    public static Pipeline Optimize(SptOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var pipeline = new Pipeline("spt-optimize")
            // Models of opset 7 to 12 become opset 13 first: the rules below read axes, pads and ratios as inputs
            // and Softmax over one axis.
            .Add(new OpsetUpgrade())
            // Canonicalization first (Canonicalize.Standard's steps): recognizers then see MatMul(x, W) [+ b]
            // linears, folded shape arithmetic and no Identity/no-op nodes. TransposedWeightFolding is left out on
            // purpose: it rewrites every Linear weight (gigabytes for large models) while the recognizers read
            // MatMul(x, Transpose(W)) directly and ORT folds those Transposes when it loads the model; without it
            // the compile never touches weight data.
            .Add(new GemmToMatMul())
            .AddFixpoint(10,
                new NoOpElimination(),
                new ConstantFolding(),
                new CommonSubexpressionElimination(),
                new DeadCodeElimination())
            // Fused attention ops (ORT contrib, ONNX opset 23) become the same internal core as decomposed exports,
            // so growth, lowering and the report treat every attention alike.
            .Add(new FusedAttentionImport())
            // Stage one: MatMul -> [scale] [mask] -> Softmax [-> Dropout] -> MatMul becomes an AttentionCore.
            .Add(new AttentionCoreFusion())
            // Stage two needs every core in place: it numbers layers in graph order.
            .Add(new AttentionBlockGrowth())
            // FFN recognition reads linears and activations only; running it before the attention lowering keeps
            // the dense expansion of unselected attention cores (new MatMuls) out of its candidates.
            .Add(new RoutedFfnRewrite(options))
            // Stage three: lower each core to PQEncode/PQTopK/SparseAttention or expand it back to dense ops.
            .Add(new SparseAttentionLowering(options))
            // The rewrites leave the mask and shape arithmetic of replaced blocks behind when it had other readers.
            .Add(new DeadCodeElimination());
        if (options.LoraRank > 0)
        {
            // After the rewrites, the Linear layers left are the attention projections and heads: they get LoRA
            // factors (the routed FFNs already carry theirs as RoutedFFN inputs). Then the SPT parameter set is
            // recorded for training: LoRA factors, routers, codebooks and norms train, base weights stay frozen.
            pipeline
                .Add(new LoraPass(new LoraOptions { Rank = options.LoraRank, Seed = options.Seed }))
                .Add(new TrainableParameterMarking());
        }

        return pipeline;
    }
}
