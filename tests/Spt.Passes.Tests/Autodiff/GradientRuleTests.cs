using Spt.Ir;
using static Spt.Passes.Tests.Autodiff.GradientCheck;

namespace Spt.Passes.Tests.Autodiff;

/// <summary>
/// One finite-difference check per gradient rule (and per variant: broadcasting, attributes, opset differences,
/// static and symbolic shapes), each on a tiny random graph run in ORT in float32. Central differences with
/// h = 1e-2 on losses of order 1 are accurate to about 1e-4 relative; the bound is 1e-2.
/// </summary>
public sealed class GradientRuleTests
{
    private const double Tolerance = 1e-2;

    private static readonly Dictionary<string, Func<long, bool, Case>> Cases = new()
    {
        ["Add broadcast [2,3,4]+[4]"] = (o, s) => Binary(o, s, "Add", [2, 3, 4], [4]),
        ["Add broadcast [2,3,4]+[3,1]"] = (o, s) => Binary(o, s, "Add", [2, 3, 4], [3, 1]),
        ["Add broadcast [1,3,1]+[2,1,4]"] = (o, s) => Binary(o, s, "Add", [1, 3, 1], [2, 1, 4]),
        ["Sub broadcast"] = (o, s) => Binary(o, s, "Sub", [2, 3], [2, 1]),
        ["Mul broadcast"] = (o, s) => Binary(o, s, "Mul", [2, 3, 4], [3, 4]),
        ["Mul same value twice"] = (o, s) => Unary(o, s, "Square", [3, 4], -1, 1, (b, x) => b.Op("Mul", x, x)),
        ["Div broadcast"] = (o, s) => Binary(o, s, "Div", [2, 3], [3], bLo: 0.5f, bHi: 2f),
        ["Pow constant 2"] = (o, s) => Unary(o, s, "Pow2", [3, 4], -1, 1, (b, x) => b.Op("Pow", x, b.Initializer(Tensor.Scalar("e", 2f)))),
        ["Pow both inputs"] = (o, s) => Binary(o, s, "Pow", [3, 4], [4], lo: 0.5f, hi: 2f, bLo: 0.5f, bHi: 2.5f),
        ["Sqrt"] = (o, s) => Unary(o, s, "Sqrt", [3, 4], 0.5f, 2f),
        ["Reciprocal"] = (o, s) => Unary(o, s, "Reciprocal", [3, 4], 0.5f, 2f),
        ["Exp"] = (o, s) => Unary(o, s, "Exp", [3, 4]),
        ["Log"] = (o, s) => Unary(o, s, "Log", [3, 4], 0.5f, 2f),
        ["Neg"] = (o, s) => Unary(o, s, "Neg", [3, 4]),
        ["Abs"] = (o, s) => Unary(o, s, "Abs", [3, 4], 0.2f, 1f),
        ["Erf"] = (o, s) => Unary(o, s, "Erf", [3, 4]),
        ["Tanh"] = (o, s) => Unary(o, s, "Tanh", [3, 4]),
        ["Sigmoid"] = (o, s) => Unary(o, s, "Sigmoid", [3, 4]),
        ["Relu"] = (o, s) => Unary(o, s, "Relu", [3, 4]),
        ["Sin Cos"] = (o, s) => Unary(o, s, "SinCos", [3, 4], -1, 1, (b, x) => b.Op("Mul", b.Op("Sin", x), b.Op("Cos", x))),
        ["Identity"] = (o, s) => Unary(o, s, "Identity", [3, 4]),
        ["Softmax last axis"] = (o, s) => Unary(o, s, "Softmax", [2, 3, 4], -2, 2, (b, x) => b.Op("Softmax", [x], ("axis", -1L))),
        ["Softmax axis 1"] = (o, s) => Unary(o, s, "Softmax", [2, 3, 4], -2, 2, (b, x) => b.Op("Softmax", [x], ("axis", 1L))),
        ["LogSoftmax"] = (o, s) => Unary(o, s, "LogSoftmax", [2, 3, 4], -2, 2, (b, x) => b.Op("LogSoftmax", [x], ("axis", -1L))),
        ["LayerNormalization"] = (o, s) => LayerNorm(o, s, -1),
        ["LayerNormalization axis -2"] = (o, s) => LayerNorm(o, s, -2),
        ["ReduceSum keepdims 0"] = (o, s) => Reduce(o, s, "ReduceSum", [1], keep: false),
        ["ReduceSum all"] = (o, s) => Reduce(o, s, "ReduceSum", null, keep: false),
        ["ReduceMean keepdims 1"] = (o, s) => Reduce(o, s, "ReduceMean", [-1], keep: true),
        ["ReduceMean two axes"] = (o, s) => Reduce(o, s, "ReduceMean", [0, 2], keep: false),
        ["ReduceMax"] = (o, s) => Reduce(o, s, "ReduceMax", [2], keep: false),
        ["Reshape"] = (o, s) => Unary(o, s, "Reshape", [2, 3, 4], -1, 1, (b, x) => b.Op("Reshape", x, b.Initializer("shape", [6L, -1], 2))),
        ["Transpose"] = (o, s) => Unary(o, s, "Transpose", [2, 3, 4], -1, 1, (b, x) => b.Op("Transpose", [x], ("perm", new long[] { 2, 0, 1 }))),
        ["Transpose no perm"] = (o, s) => Unary(o, s, "Transpose", [2, 3, 4]),
        ["Unsqueeze Squeeze"] = (o, s) => Unary(o, s, "UnsqueezeSqueeze", [3, 4], -1, 1, (b, x) =>
            o >= 13 ? b.Op("Squeeze", b.Op("Unsqueeze", x, b.Initializer("a", [0L], 1)), b.Initializer("a2", [0L], 1))
                    : b.Op("Squeeze", [b.Op("Unsqueeze", [x], ("axes", new long[] { 0 }))], ("axes", new long[] { 0 }))),
        ["Flatten"] = (o, s) => Unary(o, s, "Flatten", [2, 3, 4], -1, 1, (b, x) => b.Op("Flatten", [x], ("axis", 2L))),
        ["Slice steps and negative indices"] = (o, s) => Unary(o, s, "Slice", [4, 6], -1, 1, (b, x) => b.Op("Slice", x,
            b.Initializer("starts", [-1L, 1], 2), b.Initializer("ends", [-5L, 100], 2), b.Initializer("axes", [1L, 0], 2), b.Initializer("steps", [-2L, 2], 2))),
        ["Split with unused output"] = (o, s) => Unary(o, s, "Split", [2, 6], -1, 1, (b, x) =>
        {
            var parts = o >= 13
                ? b.Ops("Split", [x, b.Initializer("split", [1L, 2, 3], 3)], 3, ("axis", 1L))
                : b.Ops("Split", [x], 3, ("axis", 1L), ("split", new long[] { 1, 2, 3 }));
            return b.Op("Concat", [parts[2], parts[0]], ("axis", 1L));
        }),
        ["Concat"] = (o, s) => Binary(o, s, "Concat", [2, 3], [2, 5], build: (b, x, y) => b.Op("Concat", [x, y, x], ("axis", -1L))),
        ["Gather embedding repeated and negative ids"] = (o, s) => Unary(o, s, "Gather", [5, 3], -1, 1, (b, x) =>
            b.Op("Gather", x, b.Initializer("ids", [0L, 4, -1, 2, 0, 0], 2, 3))),
        ["Gather axis 1"] = (o, s) => Unary(o, s, "Gather1", [2, 5, 3], -1, 1, (b, x) =>
            b.Op("Gather", [x, b.Initializer("ids", [1L, 1, -2], 3)], ("axis", 1L))),
        ["GatherElements"] = (o, s) => Unary(o, s, "GatherElements", [3, 4], -1, 1, (b, x) =>
            b.Op("GatherElements", [x, b.Initializer("ids", [0L, 0, 3, 1, 2, -1], 3, 2)], ("axis", 1L))),
        ["Where"] = (o, s) => Binary(o, s, "Where", [2, 3], [3], build: (b, x, y) =>
            b.Op("Where", b.Op("Greater", x, b.Initializer(Tensor.Scalar("z", 0f))), x, y)),
        ["Cast round trip"] = (o, s) => Unary(o, s, "Cast", [3, 4], -1, 1, (b, x) =>
            b.Op("Cast", [b.Op("Mul", b.Op("Cast", [x], ("to", (long)ElementType.Double)), b.Initializer(Tensor.Scalar("two", 2.0)))], ("to", (long)ElementType.Float))),
        ["Expand"] = (o, s) => Unary(o, s, "Expand", [3, 1], -1, 1, (b, x) => b.Op("Expand", x, b.Initializer("shape", [2L, 3, 4], 3))),
        ["Max Min"] = (o, s) => Binary(o, s, "MaxMin", [2, 3], [3], build: (b, x, y) => b.Op("Add", b.Op("Max", x, y), b.Op("Min", x, y))),
        ["Clip"] = (o, s) => Unary(o, s, "Clip", [3, 4], -1, 1, (b, x) => o >= 11
            ? b.Op("Clip", x, b.Initializer(Tensor.Scalar("lo", -0.5f)), b.Initializer(Tensor.Scalar("hi", 0.5f)))
            : b.Op("Clip", [x], ("min", -0.5f), ("max", 0.5f))),
        ["Trilu"] = (o, s) => Unary(o, s, "Trilu", [2, 4, 4], -1, 1, (b, x) => b.Op("Trilu", [x, b.Initializer(Tensor.Scalar("k", 1L))], ("upper", 0L))),
        ["CumSum reverse"] = (o, s) => Unary(o, s, "CumSum", [3, 4], -1, 1, (b, x) =>
            b.Op("CumSum", [x, b.Initializer(Tensor.Scalar("axis", 1L))], ("reverse", 1L))),
        ["MatMul batched x weight"] = (o, s) => Binary(o, s, "MatMul", [2, 3, 4], [4, 5]),
        ["MatMul broadcast batch"] = (o, s) => Binary(o, s, "MatMul", [2, 1, 3, 4], [3, 4, 5]),
        ["MatMul 2-D x 3-D"] = (o, s) => Binary(o, s, "MatMul", [3, 4], [2, 4, 5]),
        ["MatMul 1-D x 3-D"] = (o, s) => Binary(o, s, "MatMul", [4], [2, 4, 5]),
        ["MatMul 3-D x 1-D"] = (o, s) => Binary(o, s, "MatMul", [2, 3, 4], [4]),
        ["MatMul 1-D x 1-D"] = (o, s) => Binary(o, s, "MatMul", [4], [4]),
        ["Gemm"] = (o, s) => GemmCase(o, s, 0, 0, 1f, 1f),
        ["Gemm transA transB alpha beta"] = (o, s) => GemmCase(o, s, 1, 1, 0.7f, 1.3f),
        ["Gemm transB"] = (o, s) => GemmCase(o, s, 0, 1, 1f, 0.5f),
        ["Dropout inference"] = (o, s) => Unary(o, s, "Dropout", [3, 4], -1, 1, (b, x) => b.Op("Dropout", x, b.Initializer(Tensor.Scalar("ratio", 0.3f)))),
        ["Conv 1-D pads"] = (o, s) => ConvCase(o, s, [2, 3, 7], [4, 3, 3], ("pads", new long[] { 1, 1 })),
        ["Conv 2-D stride, asymmetric pads, dilation"] = (o, s) => ConvCase(o, s, [1, 2, 7, 6], [3, 2, 3, 2],
            ("strides", new long[] { 2, 2 }), ("pads", new long[] { 1, 0, 1, 1 }), ("dilations", new long[] { 1, 2 })),
        ["Conv 2-D patches (stride = kernel)"] = (o, s) => ConvCase(o, s, [2, 3, 8, 8], [4, 3, 4, 4], ("strides", new long[] { 4, 4 })),
        ["Conv 2-D auto_pad SAME_UPPER stride 2"] = (o, s) => ConvCase(o, s, [1, 2, 5, 5], [2, 2, 3, 3],
            ("strides", new long[] { 2, 2 }), ("auto_pad", "SAME_UPPER")),
    };

    // Strided Conv input gradients need static spatial sizes: these run with static shapes only.
    private static readonly HashSet<string> StaticOnly =
        ["Conv 2-D stride, asymmetric pads, dilation", "Conv 2-D patches (stride = kernel)", "Conv 2-D auto_pad SAME_UPPER stride 2"];

    public static TheoryData<string, long, bool> AllCases()
    {
        var data = new TheoryData<string, long, bool>();
        foreach (var name in Cases.Keys)
        {
            data.Add(name, 17, false);
            if (!StaticOnly.Contains(name))
                data.Add(name, 17, true);
        }
        // Opset differences: axes as attributes (13 vs 18 for ReduceMean), Split/Squeeze/Unsqueeze, ScatterND reduction.
        foreach (var name in new[] { "ReduceSum keepdims 0", "ReduceMean two axes", "ReduceMax", "Unsqueeze Squeeze", "Split with unused output",
                     "Gather embedding repeated and negative ids", "Gather axis 1", "Softmax axis 1", "LayerNormalization", "Clip" })
        {
            data.Add(name, 13, true);
            data.Add(name, 18, true);
        }
        data.Add("Gather embedding repeated and negative ids", 14, false);
        return data;
    }

    [Theory]
    [MemberData(nameof(AllCases))]
    public void RuleMatchesFiniteDifferences(string name, long opset, bool symbolic)
    {
        double error = Run(Cases[name](opset, symbolic));
        Assert.True(error <= Tolerance, $"{name} (opset {opset}, {(symbolic ? "symbolic" : "static")} shapes): relative error {error:E2}");
    }

    private static Case Unary(long opset, bool symbolic, string op, long[] dims, float lo = -1, float hi = 1, Func<GraphBuilder, Value, Value>? build = null)
    {
        var (b, feeds) = Start(opset, symbolic, ("x", dims, lo, hi));
        var x = b.Graph.FindValue("x")!;
        var y = build != null ? build(b, x) : b.Op(op, x);
        return new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["x"] };
    }

    private static Case Binary(long opset, bool symbolic, string op, long[] a, long[] bDims, float lo = -1, float hi = 1,
        float bLo = -1, float bHi = 1, Func<GraphBuilder, Value, Value, Value>? build = null)
    {
        var (b, feeds) = Start(opset, symbolic, ("a", a, lo, hi), ("b", bDims, bLo, bHi));
        var x = b.Graph.FindValue("a")!;
        var y = b.Graph.FindValue("b")!;
        var output = build != null ? build(b, x, y) : b.Op(op, x, y);
        return new Case { Builder = b, Output = output, Feeds = feeds, Differentiate = ["a", "b"] };
    }

    private static Case LayerNorm(long opset, bool symbolic, long axis)
    {
        long[] norm = axis == -1 ? [4] : [3, 4];
        var (b, feeds) = Start(opset, symbolic, ("x", [2, 3, 4], -2, 2), ("scale", norm, 0.5f, 1.5f), ("bias", norm, -1, 1));
        Value V(string n) => b.Graph.FindValue(n)!;
        Value y;
        if (opset >= 17)
        {
            y = b.Op("LayerNormalization", [V("x"), V("scale"), V("bias")], ("axis", axis), ("epsilon", 1e-5f));
        }
        else
        {
            // Before opset 17: the decomposed form exporters write (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add).
            long[] axes = axis == -1 ? [-1] : [-2, -1];
            var mean = b.Op("ReduceMean", [V("x")], ("axes", axes));
            var xc = b.Op("Sub", V("x"), mean);
            var variance = b.Op("ReduceMean", [b.Op("Pow", xc, b.Initializer(Tensor.Scalar("two", 2f)))], ("axes", axes));
            var normed = b.Op("Div", xc, b.Op("Sqrt", b.Op("Add", variance, b.Initializer(Tensor.Scalar("eps", 1e-5f)))));
            y = b.Op("Add", b.Op("Mul", normed, V("scale")), V("bias"));
        }
        return new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["x", "scale", "bias"] };
    }

    private static Case Reduce(long opset, bool symbolic, string op, long[]? axes, bool keep)
    {
        var (b, feeds) = Start(opset, symbolic, ("x", [2, 3, 4], -1, 1));
        var x = b.Graph.FindValue("x")!;
        bool axesInput = op == "ReduceSum" ? opset >= 13 : opset >= 18;
        Value y;
        if (axes == null)
            y = b.Op(op, [x], ("keepdims", keep ? 1L : 0L));
        else if (axesInput)
            y = b.Op(op, [x, b.Initializer("axes", axes, axes.Length)], ("keepdims", keep ? 1L : 0L));
        else
            y = b.Op(op, [x], ("axes", axes), ("keepdims", keep ? 1L : 0L));
        return new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["x"] };
    }

    private static Case ConvCase(long opset, bool symbolic, long[] x, long[] w, params (string Name, object Value)[] attributes)
    {
        var (b, feeds) = Start(opset, symbolic, ("x", x, -1, 1), ("w", w, -1, 1), ("bias", [w[0]], -1, 1));
        Value V(string n) => b.Graph.FindValue(n)!;
        var y = b.Op("Conv", [V("x"), V("w"), V("bias")], attributes);
        return new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["x", "w", "bias"] };
    }

    private static Case GemmCase(long opset, bool symbolic, long ta, long tb, float alpha, float beta)
    {
        var (b, feeds) = Start(opset, symbolic, ("a", ta == 1 ? [4, 3] : [3, 4], -1, 1), ("w", tb == 1 ? [5, 4] : [4, 5], -1, 1), ("c", [5], -1, 1));
        Value V(string n) => b.Graph.FindValue(n)!;
        var y = b.Op("Gemm", [V("a"), V("w"), V("c")], ("transA", ta), ("transB", tb), ("alpha", alpha), ("beta", beta));
        return new Case { Builder = b, Output = y, Feeds = feeds, Differentiate = ["a", "w", "c"] };
    }
}
