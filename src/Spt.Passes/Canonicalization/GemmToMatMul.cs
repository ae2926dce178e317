using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Patterns;
using Attribute = Spt.Ir.Attribute;

namespace Spt.Passes.Canonicalization;

/// <summary>
/// Splits <c>Gemm(A, B, C, alpha, beta, transA, transB)</c> into <c>MatMul(A', B') [* alpha] [+ beta * C]</c> so
/// that Linear layers look the same whatever the exporter chose. A constant B with <c>transB = 1</c> becomes a new
/// initializer <c>&lt;B&gt;_T</c> holding Bᵀ (recorded under <see cref="TransposedWeightFolding.MetadataKey"/>; B itself
/// goes once nothing else reads it); otherwise a Transpose node is inserted. The final node takes over the Gemm's
/// output name.
/// </summary>
public sealed class GemmToMatMul : IPass
{
    /// <inheritdoc />
    public string Name => "gemm-to-matmul";

    /// <inheritdoc />
    public bool Run(Model model, PassContext context)
    {
        var g = model.Graph;
        var editor = g.Edit();
        bool changed = false;
        foreach (var gemm in g.Nodes.Where(n => n.OpType == "Gemm" && n.IsDefaultDomain).ToList())
        {
            Split(model, editor, gemm);
            changed = true;
        }
        return changed;
    }

    private static void Split(Model model, GraphEditor editor, Node gemm)
    {
        var a = gemm.Inputs[0]!;
        var b = gemm.Inputs[1]!;
        var c = gemm.Inputs.Count > 2 ? gemm.Inputs[2] : null;
        float alpha = gemm.GetFloat("alpha", 1f), beta = gemm.GetFloat("beta", 1f);
        string prefix = gemm.Name.Length > 0 ? gemm.Name : "gemm";

        int count = 0;
        Node Insert(string op, Value?[] inputs, params Attribute[] attributes) =>
            editor.InsertBefore(gemm, editor.CreateNode(op, inputs, 1, attributes, name: $"{prefix}/{op}_{count++}"));

        if (gemm.GetInt("transA", 0) != 0)
            a = Insert("Transpose", [a], Attribute.FromInts("perm", [1, 0])).Outputs[0];
        if (gemm.GetInt("transB", 0) != 0)
        {
            if (ConstantValue.Of(b) is { Dims.Count: 2 } w && b.Initializer is not null && ConstArray.IsSupported(w.ElementType))
            {
                string name = editor.Graph.UniqueName(b.Name + "_T");
                var transposed = editor.AddInitializer(Rewriting.Transpose2D(w, name));
                Rewriting.RecordTransposedWeight(model, name, b.Name);
                b = transposed;
            }
            else
            {
                b = Insert("Transpose", [b], Attribute.FromInts("perm", [1, 0])).Outputs[0];
            }
        }
        var y = Insert("MatMul", [a, b]).Outputs[0];
        if (alpha != 1f)
            y = Insert("Mul", [y, editor.AddInitializer(Tensor.Scalar(editor.Graph.UniqueName(prefix + "/alpha"), alpha))]).Outputs[0];
        if (c is not null && beta != 0f)
        {
            if (beta != 1f)
                c = Insert("Mul", [c, editor.AddInitializer(Tensor.Scalar(editor.Graph.UniqueName(prefix + "/beta"), beta))]).Outputs[0];
            y = Insert("Add", [y, c]).Outputs[0];
        }
        Rewriting.ReplaceKeepingName(editor, gemm.Outputs[0], y);
    }
}
