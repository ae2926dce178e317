using Spt.Ir;
using Spt.Passes.Canonicalization;
using Spt.Passes.Lora;

namespace Spt.Passes.Training;

/// <summary>
/// Folds trained LoRA factors into their base weights for inference: <c>y = x·W (+ b) + (x·A)·B</c> (the layout
/// <see cref="LoraPass"/> writes: A [d_in, r], B [r, d_out]) becomes <c>y = x·W' (+ b)</c> with
/// <c>W' = W + A·B</c> (for a weight stored transposed, <c>Wᵀ' = Wᵀ + (A·B)ᵀ</c>). The output keeps its name; the
/// factors, their nodes and their names in <c>spt.trainable</c> go. A factor pair whose base weight is shared with
/// another reader is left unmerged (with a note). LoRA inside spt operators (routed FFNs) is not touched: those
/// ops take their factors as inputs. A dense model merged this way runs in stock ONNX Runtime.
/// </summary>
public sealed class LoraMergePass : IPass
{
    /// <inheritdoc />
    public string Name => "lora-merge";

    /// <summary>How many factor pairs the last run folded.</summary>
    public int Merged { get; private set; }

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        ArgumentNullException.ThrowIfNull(model);
        var g = model.Graph;
        var editor = g.Edit();
        var removed = new HashSet<string>(StringComparer.Ordinal);
        Merged = 0;
        foreach (var add in g.Nodes.Where(n => n.IsDefaultDomain && n.OpType == "Add").ToList())
        {
            if (Match(add) is not { } m)
                continue;
            var (y, w, transposed, a, b) = m;
            var wt = w.Initializer!;
            if (w.Uses.Count != 1)
            {
                context.Info(Name, $"base weight '{w.Name}' has {w.Uses.Count} readers; its LoRA factors stay unmerged", add);
                continue;
            }

            var delta = Product(a.Initializer!, b.Initializer!);                    // [d_in, d_out]
            long rows = wt.Dims[0], cols = wt.Dims[1];
            var merged = wt.ToFloatArray();
            for (long i = 0; i < rows; i++)
                for (long j = 0; j < cols; j++)
                    merged[(i * cols) + j] += transposed ? delta[(j * rows) + i] : delta[(i * cols) + j];
            editor.SetInitializer(w, Tensor.Create(w.Name, merged, rows, cols));

            var sum = add.Outputs[0];
            var name = sum.Name;
            editor.ReplaceAllUsesWith(sum, y, replaceGraphOutputs: true);
            editor.Rename(sum, g.UniqueName(name + "_unmerged"));
            editor.Rename(y, name);
            removed.Add(a.Name);
            removed.Add(b.Name);
            Merged++;
        }

        if (Merged == 0)
            return false;
        new DeadCodeElimination().Run(model, context);
        for (var i = 0; i < model.Metadata.Count; i++)
        {
            if (model.Metadata[i].Key == LoraPass.TrainableKey)
                model.Metadata[i] = new(LoraPass.TrainableKey, string.Join(",", model.Metadata[i].Value.Split(',').Where(n => !removed.Contains(n))));
        }

        context.Info(Name, $"folded {Merged} LoRA factor pairs into their base weights");
        return true;
    }

    // Add(y, MatMul(MatMul(x, A), B)) with y = MatMul(x, W) or Add(MatMul(x, W), bias) in either operand order,
    // W a 2-D float initializer (or Transpose(W) with perm 1,0), A and B 2-D float initializers.
    private static (Value Y, Value W, bool Transposed, Value A, Value B)? Match(Node add)
    {
        for (var side = 0; side < 2; side++)
        {
            if (add.Inputs[1 - side] is not { Producer: { OpType: "MatMul" } mb } || mb.Inputs[1] is not { Initializer: { Dims.Count: 2 } } b
                || mb.Inputs[0] is not { Producer: { OpType: "MatMul" } ma } || ma.Inputs[1] is not { Initializer: { Dims.Count: 2 } } a
                || ma.Inputs[0] is not { } x || add.Inputs[side] is not { } y)
                continue;
            var linear = y.Producer;
            if (linear is { OpType: "Add" })
                linear = linear.Inputs.Select(i => i?.Producer).FirstOrDefault(p => p is { OpType: "MatMul" });
            if (linear is not { OpType: "MatMul" } || !ReferenceEquals(linear.Inputs[0], x) || linear.Inputs[1] is not { } weight)
                continue;
            if (weight.Initializer is { Dims.Count: 2, ElementType: ElementType.Float })
                return (y, weight, false, a, b);
            if (weight.Producer is { OpType: "Transpose" } t && t.Inputs[0] is { Initializer: { Dims.Count: 2, ElementType: ElementType.Float } } wt
                && t.GetInts("perm") is null or [1, 0])
                return (y, wt, true, a, b);
        }
        return null;
    }

    // A [n, r] · B [r, m] -> [n, m], in double.
    private static float[] Product(Tensor a, Tensor b)
    {
        long n = a.Dims[0], r = a.Dims[1], m = b.Dims[1];
        var av = a.ToFloatArray();
        var bv = b.ToFloatArray();
        var result = new float[n * m];
        for (long i = 0; i < n; i++)
            for (long j = 0; j < m; j++)
            {
                double s = 0;
                for (long k = 0; k < r; k++)
                    s += (double)av[(i * r) + k] * bv[(k * m) + j];
                result[(i * m) + j] = (float)s;
            }
        return result;
    }
}
