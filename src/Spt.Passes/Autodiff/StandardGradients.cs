using Spt.Ir;
using Spt.Passes.Analysis;

namespace Spt.Passes.Autodiff;

/// <summary>
/// Gradient rules of stock ONNX ops (default domain), one short method per op. Each comment states the derivative;
/// broadcasting inputs get their gradient summed back to their shape (<see cref="GradientContext.ReduceTo"/>).
/// </summary>
public static class StandardGradients
{
    /// <summary>Ops whose outputs carry no gradient, with the reason.</summary>
    public static IReadOnlyDictionary<string, string> NoGradient { get; } = new Dictionary<string, string>
    {
        ["Shape"] = "shape values", ["Size"] = "element counts", ["Range"] = "integer ranges",
        ["ConstantOfShape"] = "constant fill", ["EyeLike"] = "constant fill", ["NonZero"] = "integer positions",
        ["Equal"] = "comparison", ["Less"] = "comparison", ["Greater"] = "comparison", ["LessOrEqual"] = "comparison",
        ["GreaterOrEqual"] = "comparison", ["Not"] = "boolean logic", ["And"] = "boolean logic", ["Or"] = "boolean logic",
        ["Xor"] = "boolean logic", ["IsNaN"] = "predicate", ["IsInf"] = "predicate",
        ["ArgMax"] = "integer selection", ["ArgMin"] = "integer selection", ["OneHot"] = "integer encoding",
        ["Floor"] = "piecewise constant", ["Ceil"] = "piecewise constant", ["Round"] = "piecewise constant",
        ["Sign"] = "piecewise constant", ["Mod"] = "integer arithmetic", ["BitShift"] = "integer arithmetic",
        ["RandomNormal"] = "random source", ["RandomUniform"] = "random source",
        ["RandomNormalLike"] = "random source", ["RandomUniformLike"] = "random source",
        ["Bernoulli"] = "random source", ["Multinomial"] = "random source", ["Constant"] = "constant",
    };

    /// <summary>Registers every stock rule and no-gradient entry.</summary>
    public static void Register(GradientRegistry r)
    {
        foreach (var (op, reason) in NoGradient)
            r.RegisterNoGradient("", op, reason);
        var rules = new (string Op, GradientRule Rule)[]
        {
            ("Add", Add), ("Sub", Sub), ("Mul", Mul), ("Div", Div), ("Pow", Pow), ("Sum", Sum), ("Mean", Mean),
            ("Max", MaxMin), ("Min", MaxMin),
            ("Neg", g => g.Grad(0, () => g.Op("Neg", g.DY))),
            ("Identity", g => g.Grad(0, () => g.DY)),
            ("Exp", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Y()))),
            ("Log", g => g.Grad(0, () => g.Op("Div", g.DY, g.In(0)))),
            ("Abs", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Sign", g.In(0))))),
            // d sqrt(x) = 0.5 / sqrt(x)
            ("Sqrt", g => g.Grad(0, () => g.Op("Div", g.Op("Mul", g.DY, g.C(0.5f)), g.Y()))),
            // d (1/x) = -1/x^2 = -y^2
            ("Reciprocal", g => g.Grad(0, () => g.Op("Neg", g.Op("Mul", g.DY, g.Op("Mul", g.Y(), g.Y()))))),
            // d erf(x) = 2/sqrt(pi) exp(-x^2)
            ("Erf", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Mul", g.C(1.1283791670955126f),
                g.Op("Exp", g.Op("Neg", g.Op("Mul", g.In(0), g.In(0)))))))),
            // d tanh = 1 - y^2
            ("Tanh", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Sub", g.C(1f), g.Op("Mul", g.Y(), g.Y()))))),
            // d sigmoid = y (1 - y)
            ("Sigmoid", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Mul", g.Y(), g.Op("Sub", g.C(1f), g.Y()))))),
            ("Relu", g => g.Grad(0, () => g.Op("Where", g.Op("Greater", g.In(0), g.C(0f)), g.DY, g.C(0f)))),
            ("LeakyRelu", g => g.Grad(0, () => g.Op("Where", g.Op("Greater", g.In(0), g.C(0f)), g.DY,
                g.Op("Mul", g.DY, g.C(g.Node.GetFloat("alpha", 0.01f)))))),
            ("Softplus", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Sigmoid", g.In(0))))),
            ("Sin", g => g.Grad(0, () => g.Op("Mul", g.DY, g.Op("Cos", g.In(0))))),
            ("Cos", g => g.Grad(0, () => g.Op("Neg", g.Op("Mul", g.DY, g.Op("Sin", g.In(0)))))),
            ("Gelu", Gelu),
            ("Softmax", Softmax), ("LogSoftmax", LogSoftmax), ("LayerNormalization", LayerNormalization),
            ("ReduceSum", g => ReduceSumMean(g, mean: false)), ("ReduceMean", g => ReduceSumMean(g, mean: true)),
            ("ReduceMax", ReduceMaxMin), ("ReduceMin", ReduceMaxMin),
            ("Reshape", BackToInputShape), ("Squeeze", BackToInputShape), ("Unsqueeze", BackToInputShape),
            ("Flatten", BackToInputShape),
            ("Transpose", Transpose),
            ("Expand", g => g.Grad(0, () => g.ReduceTo(g.DY, g.In(0), g.Rank(g.Y())))),
            ("Slice", Slice), ("Split", Split), ("Concat", Concat),
            ("Gather", Gather), ("GatherElements", GatherElements),
            ("Where", Where), ("Cast", Cast), ("Dropout", Dropout), ("Clip", Clip),
            ("Trilu", g => g.Grad(0, () => g.EmitNode("", "Trilu", [g.DY, g.X(1)], [true], g.Node.Attributes.ToList())[0])),
            ("CumSum", CumSum),
            ("MatMul", MatMul), ("Gemm", Gemm), ("Conv", ConvGradient.Rule),
        };
        foreach (var (op, rule) in rules)
            r.Register("", op, rule);
    }

    private static int? OutRank(GradientContext g) => g.Rank(g.Y());

    // y = a + b
    private static void Add(GradientContext g)
    {
        g.Grad(0, () => g.ReduceTo(g.DY, g.In(0), OutRank(g)));
        g.Grad(1, () => g.ReduceTo(g.DY, g.In(1), OutRank(g)));
    }

    // y = a - b
    private static void Sub(GradientContext g)
    {
        g.Grad(0, () => g.ReduceTo(g.DY, g.In(0), OutRank(g)));
        g.Grad(1, () => g.ReduceTo(g.Op("Neg", g.DY), g.In(1), OutRank(g)));
    }

    // y = a * b
    private static void Mul(GradientContext g)
    {
        g.Grad(0, () => g.ReduceTo(g.Op("Mul", g.DY, g.In(1)), g.In(0), OutRank(g)));
        g.Grad(1, () => g.ReduceTo(g.Op("Mul", g.DY, g.In(0)), g.In(1), OutRank(g)));
    }

    // y = a / b: da = dy / b, db = -dy * y / b
    private static void Div(GradientContext g)
    {
        g.Grad(0, () => g.ReduceTo(g.Op("Div", g.DY, g.In(1)), g.In(0), OutRank(g)));
        g.Grad(1, () => g.ReduceTo(g.Op("Neg", g.Op("Div", g.Op("Mul", g.DY, g.Y()), g.In(1))), g.In(1), OutRank(g)));
    }

    // y = a^b: da = dy * b * a^(b-1), db = dy * y * log(a)
    private static void Pow(GradientContext g)
    {
        var b = g.In(1);
        var exponent = b.ElementType is { } t && t != ElementType.Float ? g.Emit.Cast(b, ElementType.Float) : b;
        g.Grad(0, () =>
        {
            var constant = ConstantValue.Floats(b);
            var local = constant is [2f]
                ? g.Op("Mul", g.In(0), g.C(2f))
                : g.Op("Mul", exponent, g.Op("Pow", g.In(0), g.Op("Sub", exponent, g.C(1f))));
            return g.ReduceTo(g.Op("Mul", g.DY, local), g.In(0), OutRank(g));
        });
        g.Grad(1, () => g.ReduceTo(g.Op("Mul", g.DY, g.Op("Mul", g.Y(), g.Op("Log", g.In(0)))), b, OutRank(g)));
    }

    // y = sum_i x_i
    private static void Sum(GradientContext g)
    {
        for (int i = 0; i < g.Node.Inputs.Count; i++)
        {
            int k = i;
            g.Grad(k, () => g.ReduceTo(g.DY, g.In(k), OutRank(g)));
        }
    }

    // y = mean_i x_i
    private static void Mean(GradientContext g)
    {
        var scaled = g.Op("Div", g.DY, g.C(g.Node.Inputs.Count));
        for (int i = 0; i < g.Node.Inputs.Count; i++)
        {
            int k = i;
            g.Grad(k, () => g.ReduceTo(scaled, g.In(k), OutRank(g)));
        }
    }

    // y = max/min_i x_i: the gradient goes to the inputs equal to y, split evenly between ties.
    private static void MaxMin(GradientContext g)
    {
        int n = g.Node.Inputs.Count;
        if (n == 1)
        {
            g.Grad(0, () => g.DY);
            return;
        }
        var masks = Enumerable.Range(0, n).Select(i => g.Emit.Cast(g.Op("Equal", g.In(i), g.Y()), ElementType.Float)).ToList();
        var share = g.Op("Div", g.DY, g.Emit.Sum(masks));
        for (int i = 0; i < n; i++)
        {
            int k = i;
            g.Grad(k, () => g.ReduceTo(g.Op("Mul", share, masks[k]), g.In(k), OutRank(g)));
        }
    }

    // Gelu(x) = x Phi(x): d = Phi(x) + x phi(x) (approximate = none only)
    private static void Gelu(GradientContext g)
    {
        if (g.Node.GetString("approximate", "none") != "none")
            throw g.Fail("only Gelu with approximate = \"none\" has a gradient rule");
        g.Grad(0, () =>
        {
            var x = g.In(0);
            var cdf = g.Op("Mul", g.C(0.5f), g.Op("Add", g.C(1f), g.Op("Erf", g.Op("Mul", x, g.C(0.70710678118654752f)))));
            var pdf = g.Op("Mul", g.C(0.3989422804014327f), g.Op("Exp", g.Op("Mul", g.C(-0.5f), g.Op("Mul", x, x))));
            return g.Op("Mul", g.DY, g.Op("Add", cdf, g.Op("Mul", x, pdf)));
        });
    }

    // The axes a Softmax/LogSoftmax normalizes over: [axis] from opset 13, [axis, rank) before (2-D coercion).
    private static long[] SoftmaxAxes(GradientContext g)
    {
        long axis = g.Node.GetInt("axis", g.Opset >= 13 ? -1 : 1);
        if (g.Opset >= 13)
            return [axis];
        int rank = g.Rank(g.In(0)) ?? throw g.Fail("the input rank is unknown (needed for a Softmax before opset 13)");
        if (axis < 0)
            axis += rank;
        return [.. Enumerable.Range((int)axis, rank - (int)axis).Select(i => (long)i)];
    }

    // y = softmax(x): dx = y * (dy - sum(dy * y))
    private static void Softmax(GradientContext g) => g.Grad(0, () =>
    {
        var s = g.Emit.ReduceSum(g.Op("Mul", g.DY, g.Y()), SoftmaxAxes(g), keepDims: true);
        return g.Op("Mul", g.Y(), g.Op("Sub", g.DY, s));
    });

    // y = log softmax(x): dx = dy - exp(y) * sum(dy)
    private static void LogSoftmax(GradientContext g) => g.Grad(0, () =>
    {
        var s = g.Emit.ReduceSum(g.DY, SoftmaxAxes(g), keepDims: true);
        return g.Op("Sub", g.DY, g.Op("Mul", g.Op("Exp", g.Y()), s));
    });

    // y = xhat * scale + bias, xhat = (x - mean) * inv, inv = 1/sqrt(var + eps), statistics recomputed here:
    // dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * scale.
    private static void LayerNormalization(GradientContext g)
    {
        if (g.OutputGradient(1) != null || g.OutputGradient(2) != null)
            throw g.Fail("the Mean/InvStdDev outputs feed the loss; only the gradient of Y is supported");
        long axis = g.Node.GetInt("axis", -1);
        long[] axes;
        if (axis < 0)
        {
            axes = [.. Enumerable.Range((int)axis, (int)-axis).Select(i => (long)i)];
        }
        else
        {
            int rank = g.Rank(g.In(0)) ?? throw g.Fail("the input rank is unknown and axis is not negative");
            axes = [.. Enumerable.Range((int)axis, rank - (int)axis).Select(i => (long)i)];
        }
        var e = g.Emit;
        var x = g.In(0);
        var xc = g.Op("Sub", x, e.ReduceMean(x, axes, keepDims: true));
        var variance = e.ReduceMean(g.Op("Mul", xc, xc), axes, keepDims: true);
        var inv = g.Op("Reciprocal", g.Op("Sqrt", g.Op("Add", variance, g.C(g.Node.GetFloat("epsilon", 1e-5f)))));
        var xhat = g.Op("Mul", xc, inv);
        g.Grad(0, () =>
        {
            var dxhat = g.Op("Mul", g.DY, g.In(1));
            var m1 = e.ReduceMean(dxhat, axes, keepDims: true);
            var m2 = e.ReduceMean(g.Op("Mul", dxhat, xhat), axes, keepDims: true);
            return g.Op("Mul", inv, g.Op("Sub", g.Op("Sub", dxhat, m1), g.Op("Mul", xhat, m2)));
        });
        g.Grad(1, () => g.ReduceTo(g.Op("Mul", g.DY, xhat), g.In(1), OutRank(g)));
        g.Grad(2, () => g.ReduceTo(g.DY, g.In(2), OutRank(g)));
    }

    // dy of a reduction brought back to keepdims form (Unsqueeze at the reduced axes when keepdims = 0).
    private static Value KeepDimsForm(GradientContext g, Value v, long[]? axes)
    {
        if (g.Node.GetInt("keepdims", 1) == 1 || axes == null)
            return v;
        return g.Emit.Unsqueeze(v, axes);
    }

    // y = sum/mean over axes: dx = expand(dy) (/ count)
    private static void ReduceSumMean(GradientContext g, bool mean) => g.Grad(0, () =>
    {
        var axes = g.ReductionAxes(mean ? 18 : 13);
        if (axes is { Length: 0 } && g.Node.GetInt("noop_with_empty_axes", 0) == 1)
            return g.DY;
        if (axes is { Length: 0 })
            axes = null;
        var x = g.In(0);
        var dx = g.Op("Expand", KeepDimsForm(g, g.DY, axes), g.Emit.Shape(x));
        if (!mean)
            return dx;
        var count = g.Op("Div", g.Emit.Cast(g.Op("Size", x), ElementType.Float), g.Emit.Cast(g.Op("Size", g.Y()), ElementType.Float));
        return g.Op("Div", dx, count);
    });

    // y = max/min over axes: dx = dy at the arg positions, split evenly between ties.
    private static void ReduceMaxMin(GradientContext g) => g.Grad(0, () =>
    {
        var axes = g.ReductionAxes(18);
        if (axes is { Length: 0 })
            axes = null;
        var x = g.In(0);
        var mask = g.Emit.Cast(g.Op("Equal", x, KeepDimsForm(g, g.Y(), axes)), ElementType.Float);
        var count = g.Emit.ReduceSum(mask, axes, keepDims: true);
        return g.Op("Mul", g.Op("Div", KeepDimsForm(g, g.DY, axes), count), mask);
    });

    // Reshape/Squeeze/Unsqueeze/Flatten: dx = reshape(dy, shape(x))
    private static void BackToInputShape(GradientContext g) =>
        g.Grad(0, () => g.Op("Reshape", g.DY, g.Emit.Shape(g.In(0))));

    // y = transpose(x, perm): dx = transpose(dy, inverse(perm)); no perm reverses, which is its own inverse.
    private static void Transpose(GradientContext g) => g.Grad(0, () =>
    {
        var perm = g.Node.GetInts("perm");
        if (perm == null)
            return g.Op("Transpose", g.DY);
        var inverse = new long[perm.Count];
        for (int i = 0; i < perm.Count; i++)
            inverse[perm[i]] = i;
        return g.Op("Transpose", [g.DY], ("perm", inverse));
    });

    // y = x[slices]: the same Slice applied to the flat positions of x says where dy goes; scatter it into zeros.
    private static void Slice(GradientContext g) => g.Grad(0, () =>
    {
        if (g.Opset < 11)
            throw g.Fail("Slice gradients need opset 11 or later (Range, ScatterElements)");
        var x = g.In(0);
        var e = g.Emit;
        var shape = e.Shape(x);
        var count = g.Op("Size", x);
        var positions = g.Op("Reshape", g.Op("Range", e.IntScalar(0), count, e.IntScalar(1)), shape);
        var sliceInputs = new List<Value?> { positions };
        sliceInputs.AddRange(g.Node.Inputs.Skip(1));
        var picked = g.EmitNode("", "Slice", sliceInputs, [true], g.Node.Attributes.ToList())[0];
        var flat = g.Op("ScatterElements", [e.Zeros(e.Unsqueeze(count, 0)), g.Op("Reshape", picked, e.Ints(-1)),
            g.Op("Reshape", g.DY, e.Ints(-1))], ("axis", 0L));
        return g.Op("Reshape", flat, shape);
    });

    // [y_0, y_1, ...] = split(x, axis): dx = concat(dy_i or zeros, axis)
    private static void Split(GradientContext g) => g.Grad(0, () =>
    {
        var parts = new List<Value?>();
        for (int i = 0; i < g.Node.Outputs.Count; i++)
            parts.Add(g.OutputGradient(i) ?? g.Emit.ZerosLike(g.SavedOutput(i)));
        return g.Op("Concat", [.. parts], ("axis", g.Node.GetInt("axis", 0)));
    });

    // y = concat(x_0, x_1, ..., axis): dx_i = dy[offset_i : offset_i + size_i] along axis
    private static void Concat(GradientContext g)
    {
        long axis = g.Node.GetInt("axis", 0);
        var e = g.Emit;
        Value? offset = e.Ints(0);
        for (int i = 0; i < g.Node.Inputs.Count; i++)
        {
            var x = g.In(i);
            long? staticSize = g.Facts.StaticShape(x) is { } s ? s[axis < 0 ? s.Length + axis : axis] : null;
            var size = staticSize is { } ss ? e.Ints(ss) : g.Op("Gather", [e.Shape(x), e.Ints(axis)], ("axis", 0L));
            var end = g.Op("Add", offset, size);
            var start = offset;
            g.Grad(i, () => g.Op("Slice", g.DY, start, end, e.Ints(axis)));
            offset = end;
        }
    }

    // Negative indices counted from the end of dimension `axis` of data, as int64.
    private static Value NormalizedIndices(GradientContext g, Value indices, Value dataShape, long axis)
    {
        var idx = indices.ElementType == ElementType.Int64 ? indices : g.Emit.Cast(indices, ElementType.Int64);
        var dim = g.Op("Gather", [dataShape, g.Emit.IntScalar(axis)], ("axis", 0L));
        return g.Op("Where", g.Op("Less", idx, g.Emit.IntScalar(0)), g.Op("Add", idx, dim), idx);
    }

    // zeros(shape) with updates [idx..., rest...] added at rows idx of axis 0 (duplicates add up).
    private static Value ScatterAddRows(GradientContext g, Value shape, Value idx, Value updates)
    {
        var e = g.Emit;
        if (g.Opset >= 16)
            return g.Op("ScatterND", [e.Zeros(shape), e.Unsqueeze(idx, -1), updates], ("reduction", "add"));
        // Before opset 16: one-hot rows, then [V, N] x [N, rest].
        var flat = g.Op("Reshape", idx, e.Ints(-1));
        var rows = g.Op("Gather", [shape, e.Ints(0)], ("axis", 0L));
        var onehot = g.Op("OneHot", [flat, rows, g.Op("Constant", [], ("value", Tensor.Create("value", [0f, 1f], 2)))], ("axis", -1L));
        var n = e.Unsqueeze(g.Op("Size", flat), 0);
        var upd = g.Op("Reshape", updates, g.Op("Concat", [n, e.Ints(-1)], ("axis", 0L)));
        var summed = g.Op("MatMul", g.Op("Transpose", [onehot], ("perm", new long[] { 1, 0 })), upd);
        return g.Op("Reshape", summed, shape);
    }

    // y = gather(data, idx, axis): d data = scatter-add of dy at the gathered rows.
    private static void Gather(GradientContext g) => g.Grad(0, () =>
    {
        var data = g.In(0);
        var e = g.Emit;
        var shape = e.Shape(data);
        long axis = g.Node.GetInt("axis", 0);
        var idx = NormalizedIndices(g, g.In(1), shape, axis);
        if (axis < 0)
            axis += g.Rank(data) ?? throw g.Fail("negative axis with unknown data rank");
        if (axis == 0)
            return ScatterAddRows(g, shape, idx, g.DY);
        int r = g.Rank(data) ?? throw g.Fail("Gather along an inner axis needs the data rank");
        int q = g.Rank(g.In(1)) ?? throw g.Fail("Gather along an inner axis needs the indices rank");
        // Move the gathered axis to the front: data [d_axis, d_<axis, d_>axis], dy [idx..., d_<axis, d_>axis].
        var permData = new List<long> { axis };
        permData.AddRange(Enumerable.Range(0, r).Where(i => i != axis).Select(i => (long)i));
        var permDy = new List<long>();
        permDy.AddRange(Enumerable.Range((int)axis, q).Select(i => (long)i));
        permDy.AddRange(Enumerable.Range(0, (int)axis).Select(i => (long)i));
        permDy.AddRange(Enumerable.Range((int)axis + q, r - 1 - (int)axis).Select(i => (long)i));
        var shapeT = g.Op("Gather", [shape, e.Ints([.. permData])], ("axis", 0L));
        var dyT = g.Op("Transpose", [g.DY], ("perm", permDy.ToArray()));
        var scattered = ScatterAddRows(g, shapeT, idx, dyT);
        var inverse = new long[r];
        for (int i = 0; i < r; i++)
            inverse[permData[i]] = i;
        return g.Op("Transpose", [scattered], ("perm", inverse));
    });

    // y = gather_elements(data, idx, axis): d data = scatter-elements-add of dy.
    private static void GatherElements(GradientContext g) => g.Grad(0, () =>
    {
        if (g.Opset < 16)
            throw g.Fail("GatherElements gradients need ScatterElements with reduction (opset 16)");
        var data = g.In(0);
        long axis = g.Node.GetInt("axis", 0);
        var shape = g.Emit.Shape(data);
        var idx = NormalizedIndices(g, g.In(1), shape, axis);
        return g.Op("ScatterElements", [g.Emit.Zeros(shape), idx, g.DY], ("axis", axis), ("reduction", "add"));
    });

    // y = where(c, a, b): da = where(c, dy, 0), db = where(c, 0, dy)
    private static void Where(GradientContext g)
    {
        g.Grad(1, () => g.ReduceTo(g.Op("Where", g.In(0), g.DY, g.C(0f)), g.In(1), OutRank(g)));
        g.Grad(2, () => g.ReduceTo(g.Op("Where", g.In(0), g.C(0f), g.DY), g.In(2), OutRank(g)));
    }

    // y = cast(x): dx = cast(dy) back to x's type
    private static void Cast(GradientContext g) =>
        g.Grad(0, () => g.Emit.Cast(g.DY, g.Facts.ElementTypeOf(g.In(0)) ?? ElementType.Float));

    // Training mode: y = x * mask / (1 - ratio), so dx = dy * mask / (1 - ratio); inference mode: identity.
    private static void Dropout(GradientContext g) => g.Grad(0, () =>
    {
        var trainingMode = g.Opset >= 12 ? g.X(2) : null;
        if (trainingMode == null)
            return g.DY;
        var constant = trainingMode.Initializer ?? ConstantValue.Of(trainingMode);
        bool? training = constant?.ElementType == ElementType.Bool ? constant.ToArray<byte>()[0] != 0 : null;
        if (training == false)
            return g.DY;
        var ratio = g.X(1) is { } r ? (r.ElementType is { } t && t != ElementType.Float ? g.Emit.Cast(r, ElementType.Float) : r) : g.C(0.5f);
        var scale = g.Op("Reciprocal", g.Op("Sub", g.C(1f), ratio));
        var masked = g.Op("Mul", g.Op("Mul", g.DY, g.Emit.Cast(g.SavedOutput(1), ElementType.Float)), scale);
        return training == true ? masked : g.Op("Where", trainingMode, masked, g.DY);
    });

    // y = clip(x, lo, hi): dx = dy where lo <= x <= hi (bounds inclusive, as torch.clamp)
    private static void Clip(GradientContext g) => g.Grad(0, () =>
    {
        var x = g.In(0);
        Value? lo = g.Opset >= 11 ? g.X(1) : g.Node.GetAttribute("min") != null ? g.C(g.Node.GetFloat("min", 0)) : null;
        Value? hi = g.Opset >= 11 ? g.X(2) : g.Node.GetAttribute("max") != null ? g.C(g.Node.GetFloat("max", 0)) : null;
        Value? keep = null;
        if (lo != null)
            keep = g.Op("Not", g.Op("Less", x, lo));
        if (hi != null)
        {
            var below = g.Op("Not", g.Op("Greater", x, hi));
            keep = keep == null ? below : g.Op("And", keep, below);
        }
        return keep == null ? g.DY : g.Op("Where", keep, g.DY, g.C(0f));
    });

    // y = cumsum(x, axis): dx = cumsum(dy, axis) in the other direction
    private static void CumSum(GradientContext g) => g.Grad(0, () =>
        g.Op("CumSum", [g.DY, g.In(1)], ("exclusive", g.Node.GetInt("exclusive", 0)), ("reverse", 1 - g.Node.GetInt("reverse", 0))));

    // y = a @ b (numpy semantics: 1-D operands promoted, batch dims broadcast)
    private static void MatMul(GradientContext g)
    {
        var a = g.In(0);
        var b = g.In(1);
        int? ra = g.Rank(a), rb = g.Rank(b);
        var dy = g.DY;
        var e = g.Emit;
        if (ra == 1 && rb == 1)
        {
            // y = <a, b>
            g.Grad(0, () => g.Op("Mul", dy, b));
            g.Grad(1, () => g.Op("Mul", dy, a));
            return;
        }
        if (ra == 1)
        {
            // a [K] as [1, K]; dy [..., N] as [..., 1, N]
            int r = rb!.Value;
            var dy2 = e.Unsqueeze(dy, -2);
            g.Grad(0, () =>
            {
                var full = g.Op("MatMul", dy2, g.TransposeLast2(b, r)); // [..., 1, K]
                var summed = r > 2 ? e.ReduceSum(full, [.. Enumerable.Range(0, r - 2).Select(i => (long)i)], keepDims: false) : full;
                return g.Op("Reshape", summed, e.Shape(a));
            });
            g.Grad(1, () => g.Op("MatMul", e.Unsqueeze(a, 1), dy2));
            return;
        }
        if (rb == 1)
        {
            // b [K] as [K, 1]; dy [..., M] as [..., M, 1]
            int r = ra!.Value;
            var dy2 = e.Unsqueeze(dy, -1);
            g.Grad(0, () => g.Op("MatMul", dy2, e.Unsqueeze(b, 0)));
            g.Grad(1, () =>
            {
                var full = g.Op("MatMul", g.TransposeLast2(a, r), dy2); // [..., K, 1]
                var summed = r > 2 ? e.ReduceSum(full, [.. Enumerable.Range(0, r - 2).Select(i => (long)i)], keepDims: false) : full;
                return g.Op("Reshape", summed, e.Shape(b));
            });
            return;
        }
        int? ry = g.Rank(g.Y());
        if (rb == 2)
        {
            // A weight: da = dy @ b^T has a's shape; db = flatten(a)^T @ flatten(dy) sums the batch in one product.
            g.Grad(0, () => g.Op("MatMul", dy, g.TransposeLast2(b, 2)));
            g.Grad(1, () =>
            {
                if (ra == 2)
                    return g.Op("MatMul", g.TransposeLast2(a, 2), dy);
                var bShape = e.Shape(b);
                var k = g.Op("Gather", [bShape, e.Ints(0)], ("axis", 0L));
                var n = g.Op("Gather", [bShape, e.Ints(1)], ("axis", 0L));
                var a2 = g.Op("Reshape", a, g.Op("Concat", [e.Ints(-1), k], ("axis", 0L))); // [T, K]
                var dy2 = g.Op("Reshape", dy, g.Op("Concat", [e.Ints(-1), n], ("axis", 0L))); // [T, N]
                return g.Op("Gemm", [a2, dy2], ("transA", 1L));
            });
            return;
        }
        g.Grad(0, () => g.ReduceTo(g.Op("MatMul", dy, g.TransposeLast2(b, rb)), a, ry, matrixAxes: 2));
        g.Grad(1, () => g.ReduceTo(g.Op("MatMul", g.TransposeLast2(a, ra), dy), b, ry, matrixAxes: 2));
    }

    // y = alpha * a' @ b' + beta * c, a' = transA ? a^T : a, b' = transB ? b^T : b
    private static void Gemm(GradientContext g)
    {
        long ta = g.Node.GetInt("transA", 0), tb = g.Node.GetInt("transB", 0);
        float alpha = g.Node.GetFloat("alpha", 1f), beta = g.Node.GetFloat("beta", 1f);
        var a = g.In(0);
        var b = g.In(1);
        var dy = g.DY;
        // da' = alpha dy b'^T; da = da' or its transpose.
        g.Grad(0, () => ta == 0
            ? g.Op("Gemm", [dy, b], ("alpha", alpha), ("transA", 0L), ("transB", 1 - tb))
            : g.Op("Gemm", [b, dy], ("alpha", alpha), ("transA", tb), ("transB", 1L)));
        // db' = alpha a'^T dy; db = db' or its transpose.
        g.Grad(1, () => tb == 0
            ? g.Op("Gemm", [a, dy], ("alpha", alpha), ("transA", 1 - ta), ("transB", 0L))
            : g.Op("Gemm", [dy, a], ("alpha", alpha), ("transA", 1L), ("transB", ta)));
        g.Grad(2, () =>
        {
            var dc = g.ReduceTo(dy, g.In(2), 2);
            return beta == 1f ? dc : g.Op("Mul", dc, g.C(beta));
        });
    }
}
