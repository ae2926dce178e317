using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Canonicalization;
using Spt.Passes.Lora;

namespace Spt.Passes.Rewrites;

/// <summary>
/// Records the SPT fine-tuning parameter set in model metadata (<see cref="LoraPass.TrainableKey"/> and
/// <see cref="LoraPass.FrozenKey"/>), for the LoRA configuration of the method: LoRA factors (added by
/// <see cref="LoraPass"/> or fed to RoutedFFN), the routers, the PQ codebooks and every normalization parameter
/// (LayerNormalization scale and bias, decomposed LayerNorm and RMSNorm weights) train; RoutedFFN's base weights
/// are frozen. Everything else is left out of the trainable list, so training keeps it frozen.
/// </summary>
public sealed class TrainableParameterMarking : IPass
{
    /// <inheritdoc />
    public string Name => "mark-trainable";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var trainable = new List<string>();
        var frozen = new List<string>();
        foreach (var node in model.Graph.Nodes)
        {
            if (RoutedFfnOps.RoutedFfn.Is(node))
            {
                AddInitializers(node, RoutedFfnOps.AdaptedWeights, trainable);
                AddInitializers(node, RoutedFfnOps.BaseWeights, frozen);
            }
            else if (AttentionOps.PQEncode.Is(node))
            {
                AddInitializers(node, [AttentionOps.PQCodebook], trainable);
            }
            else if (node.IsDefaultDomain && node.OpType is "LayerNormalization" or "SimplifiedLayerNormalization" or "RMSNormalization")
            {
                AddInitializers(node, [1, 2], trainable);
            }
            else if (node.IsDefaultDomain && node.OpType is "Mul" or "Add" && IsDecomposedNormAffine(node, out var parameter))
            {
                trainable.Add(parameter.Name);
            }
        }

        var before = model.Metadata.ToList();
        LoraPass.Append(model, LoraPass.TrainableKey, trainable);
        LoraPass.Append(model, LoraPass.FrozenKey, frozen);
        var changed = !before.SequenceEqual(model.Metadata);
        if (changed)
        {
            context.Info(Name, $"{LoraPass.ReadList(model, LoraPass.TrainableKey).Count} trainable initializers recorded");
        }

        return changed;
    }

    private static void AddInitializers(Node node, IReadOnlyList<int> inputs, List<string> names)
    {
        foreach (var i in inputs)
        {
            if (i < node.Inputs.Count && Rewriting.WeightInitializer(node.Inputs[i]) is { } v && !names.Contains(v.Name))
            {
                names.Add(v.Name);
            }
        }
    }

    // Mul(w, n) or Add(b, n) with w/b a 1-D float initializer and n the output of a normalization: a value whose
    // producers, a few elementwise steps back, include a ReduceMean (x / sqrt(mean(x²) + eps), (x - mean) / std).
    private static bool IsDecomposedNormAffine(Node node, out Value parameter)
    {
        parameter = null!;
        var operands = node.Inputs;
        if (operands.Count != 2)
        {
            return false;
        }

        for (var i = 0; i < 2; i++)
        {
            if (operands[i] is { IsInitializer: true, Initializer: { } t } p && t.Dims.Count == 1
                && t.ElementType == ElementType.Float && operands[1 - i] is { } other && ComesFromNormalization(other, node.OpType))
            {
                parameter = p;
                return true;
            }
        }

        return false;
    }

    private static bool ComesFromNormalization(Value value, string affineOp)
    {
        // The bias Add of a decomposed LayerNorm reads the scale Mul's output.
        if (affineOp == "Add" && value.Producer is { OpType: "Mul" } scale && IsDecomposedNormAffine(scale, out _))
        {
            return true;
        }

        var frontier = new Queue<(Value Value, int Depth)>([(value, 0)]);
        while (frontier.Count > 0)
        {
            var (v, depth) = frontier.Dequeue();
            if (v.Producer is not { } p || depth > 4)
            {
                continue;
            }

            if (p.OpType == "ReduceMean")
            {
                return true;
            }

            if (p.OpType is "Mul" or "Div" or "Sub" or "Add" or "Sqrt" or "Reciprocal" or "Pow" or "Cast")
            {
                foreach (var input in p.Inputs)
                {
                    if (input is { IsInitializer: false })
                    {
                        frontier.Enqueue((input, depth + 1));
                    }
                }
            }
        }

        return false;
    }
}
