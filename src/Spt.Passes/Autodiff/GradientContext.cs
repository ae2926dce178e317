using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Autodiff;

/// <summary>
/// The state of one gradient rule application: the forward node, the gradients flowing into its outputs, which
/// inputs need gradients, and an emitter for the backward nodes (named <c>grad/&lt;forward node&gt;/...</c>).
/// Helpers cover what many rules share: reducing a broadcast gradient back to an input's shape.
/// </summary>
public sealed class GradientContext : IGradientContext
{
    private readonly IReadOnlyList<Value?> _outputGrads;
    private readonly IReadOnlyList<bool> _needs;
    private readonly Action<int, Value> _add;
    private readonly Func<Node, int, Value> _materialize;

    internal GradientContext(Node node, IReadOnlyList<Value?> outputGrads, IReadOnlyList<bool> needs, OpEmitter emitter,
        ShapeFacts facts, Action<int, Value> add, Func<Node, int, Value> materialize)
    {
        Node = node;
        _outputGrads = outputGrads;
        _needs = needs;
        Emit = emitter;
        Facts = facts;
        _add = add;
        _materialize = materialize;
    }

    /// <inheritdoc />
    public Node Node { get; }

    /// <summary>The emitter for backward nodes.</summary>
    public OpEmitter Emit { get; }

    /// <summary>Static ranks and shapes of forward values.</summary>
    public ShapeFacts Facts { get; }

    /// <summary>The default-domain opset.</summary>
    public long Opset => Emit.Opset;

    /// <summary>Forward input <paramref name="i"/> (null when absent).</summary>
    public Value? X(int i) => i < Node.Inputs.Count ? Node.Inputs[i] : null;

    /// <summary>Forward input <paramref name="i"/>, which must be present.</summary>
    public Value In(int i) => X(i) ?? throw new InvalidOperationException($"input {i} of {OnnxModelException.Describe(Node)} is absent");

    /// <summary>Forward output <paramref name="i"/>.</summary>
    public Value Y(int i = 0) => Node.Outputs[i];

    /// <summary>The gradient of output 0 (the rule is only called when some output has one).</summary>
    public Value DY => _outputGrads[0] ?? throw new InvalidOperationException("output 0 has no gradient");

    /// <summary>Rank of a forward value, or null.</summary>
    public int? Rank(Value? v) => Facts.Rank(v);

    /// <inheritdoc />
    public Value? OutputGradient(int outputIndex) => outputIndex < _outputGrads.Count ? _outputGrads[outputIndex] : null;

    /// <inheritdoc />
    public bool NeedsGradient(int inputIndex) => inputIndex < _needs.Count && _needs[inputIndex];

    /// <inheritdoc />
    public void AddGradient(int inputIndex, Value gradient)
    {
        if (!NeedsGradient(inputIndex))
            throw new InvalidOperationException($"rule for {Node.OpType} set a gradient for input {inputIndex}, which needs none");
        _add(inputIndex, gradient);
    }

    /// <summary>Adds a gradient for input <paramref name="i"/> when it needs one; <paramref name="make"/> runs only then.</summary>
    public void Grad(int i, Func<Value> make)
    {
        if (NeedsGradient(i))
            _add(i, make());
    }

    /// <inheritdoc />
    public Value SavedOutput(int outputIndex) => _materialize(Node, outputIndex);

    /// <summary>Appends a node of any domain; outputs not <paramref name="wanted"/> stay omitted.</summary>
    public IReadOnlyList<Value> EmitNode(string domain, string opType, IReadOnlyList<Value?> inputs, IReadOnlyList<bool> wanted,
        IEnumerable<Ir.Attribute> attributes) => Emit.Node(opType, inputs, wanted.Count, attributes, domain, wanted);

    IReadOnlyList<Value> IGradientContext.Emit(string domain, string opType, IReadOnlyList<Value?> inputs,
        IReadOnlyList<bool> wanted, IEnumerable<Ir.Attribute> attributes) => EmitNode(domain, opType, inputs, wanted, attributes);

    /// <inheritdoc />
    public Exception Fail(string problem) => OnnxModelException.ForNode(Node, "cannot differentiate: " + problem);

    /// <summary>Appends a one-output node.</summary>
    public Value Op(string opType, params Value?[] inputs) => Emit.Op(opType, inputs);

    /// <summary>Appends a one-output node with attributes.</summary>
    public Value Op(string opType, Value?[] inputs, params (string Name, object Value)[] attributes) => Emit.Op(opType, inputs, attributes);

    /// <summary>A float32 scalar.</summary>
    public Value C(float value) => Emit.Scalar(value);

    /// <summary>
    /// Reduces <paramref name="grad"/> (shaped like the broadcast result, of rank <paramref name="gradRank"/> when
    /// known) to the shape of <paramref name="input"/>: sums the broadcast axes. Statically when the input's shape is
    /// known, else with Shape/Equal/NonZero computing the axes at run time (opset 13+).
    /// </summary>
    public Value ReduceTo(Value grad, Value input, int? gradRank, int matrixAxes = 0)
    {
        if (SymbolicReductionAxes(input, gradRank, matrixAxes) is { } decided)
        {
            var (lead, axes) = decided;
            var reduced = lead == 0 ? grad : Emit.ReduceSum(grad, [.. Enumerable.Range(0, lead).Select(i => (long)i)], keepDims: false);
            return axes.Length == 0 ? reduced : Emit.ReduceSum(reduced, axes, keepDims: true);
        }
        int? ra = Rank(input);
        if (Facts.StaticShape(input) is { } sa && gradRank is { } rz && rz >= sa.Length)
        {
            // [..., lead] x sa: sum the leading axes and the axes where the input has size 1.
            var axes = new List<long>();
            for (int i = 0; i < rz - sa.Length; i++)
                axes.Add(i);
            for (int i = 0; i < sa.Length; i++)
            {
                if (sa[i] == 1)
                    axes.Add(rz - sa.Length + i);
            }
            if (axes.Count == 0)
                return grad;
            var summed = Emit.ReduceSum(grad, [.. axes], keepDims: true);
            return rz == sa.Length ? summed : Op("Reshape", summed, Emit.Ints(sa));
        }
        if (ra is { } r && gradRank is { } rg && r == rg)
        {
            // Same rank: sum where the dims differ (there the input has size 1), keepdims.
            var differ = Op("Not", Op("Equal", Emit.Shape(input), Emit.Shape(grad)));
            return Emit.ReduceSumDynamic(grad, Op("Reshape", Op("NonZero", differ), Emit.Ints(-1)));
        }
        if (ra is { } r2 && gradRank is { } rg2 && rg2 > r2)
        {
            var lead = Emit.ReduceSum(grad, [.. Enumerable.Range(0, rg2 - r2).Select(i => (long)i)], keepDims: false);
            return ReduceTo(lead, input, r2);
        }
        // Unknown ranks: pad the input's shape with leading ones to the gradient's rank, then as above.
        var sz = Emit.Shape(grad);
        var sInput = Emit.Shape(input);
        var pad = Op("Sub", Op("Size", sz), Op("Size", sInput));
        var ones = Op("ConstantOfShape", [Emit.Unsqueeze(pad, 0)], ("value", Tensor.Create("value", [1L], 1)));
        var padded = Op("Concat", [ones, sInput], ("axis", 0L));
        var axesDyn = Op("Reshape", Op("NonZero", Op("Not", Op("Equal", padded, sz))), Emit.Ints(-1));
        return Op("Reshape", Emit.ReduceSumDynamic(grad, axesDyn), sInput);
    }

    /// <summary>
    /// The broadcast axes of <paramref name="input"/> against this node's output 0 (whose shape the gradient has, but
    /// for the last <paramref name="matrixAxes"/> axes of a MatMul operand, which are never broadcast), decided from
    /// symbolic shapes: the leading axes the input lacks, then (counted after those) the axes where the input has
    /// size 1 and the output may not. Null when some axis cannot be decided (an unknown dim, or a symbol the output
    /// does not share), which leaves it to run time.
    /// </summary>
    private (int Lead, long[] Axes)? SymbolicReductionAxes(Value input, int? gradRank, int matrixAxes)
    {
        if (Node.Outputs.Count == 0 || Facts.Dims(input) is not { } si || Facts.Dims(Y()) is not { } sy ||
            gradRank != sy.Count || sy.Count < si.Count)
        {
            return null;
        }

        int lead = sy.Count - si.Count;
        var axes = new List<long>();
        for (int i = 0; i < si.Count - matrixAxes; i++)
        {
            Dim a = si[i], y = sy[lead + i];
            if (a.Value == 1)
            {
                if (y.Value != 1)
                    axes.Add(i);  // a broadcast axis (summing a size-1 axis is harmless if it is one at run time)
            }
            else if (a.Value is > 1 || y.Value == 1 || (!string.IsNullOrEmpty(a.Param) && a.Param == y.Param))
            {
                // Not broadcast: a size above 1 is the output's size, an output of size 1 means the input's is 1,
                // and a symbol the output shares is the same size.
            }
            else
            {
                return null;
            }
        }

        return (lead, [.. axes]);
    }

    /// <summary>Swaps the last two axes of a value of rank <paramref name="rank"/> (Einsum when the rank is unknown).</summary>
    public Value TransposeLast2(Value x, int? rank)
    {
        if (rank is { } r)
        {
            if (r < 2)
                throw new InvalidOperationException("TransposeLast2 of a value of rank < 2");
            var perm = Enumerable.Range(0, r).Select(i => (long)i).ToArray();
            (perm[r - 2], perm[r - 1]) = (perm[r - 1], perm[r - 2]);
            return Op("Transpose", [x], ("perm", perm));
        }
        if (Opset < 12)
            throw Fail("the rank of a MatMul operand is unknown and Einsum needs opset 12");
        return Op("Einsum", [x], ("equation", "...ij->...ji"));
    }

    /// <summary>Constant axes of a reduction node: the axes input (from the given opset) or attribute; null = all.</summary>
    public long[]? ReductionAxes(long axesInputSince)
    {
        if (Opset >= axesInputSince)
        {
            if (X(1) is not { } a)
                return null;
            return ConstantValue.Ints(a) ?? throw Fail("the reduction axes are computed at run time; only constant axes are supported");
        }
        return Node.GetInts("axes")?.ToArray();
    }
}
