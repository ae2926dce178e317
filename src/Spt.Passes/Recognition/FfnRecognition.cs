using Spt.Ir;
using Spt.Passes.Analysis;
using Spt.Passes.Patterns;

namespace Spt.Passes.Recognition;

/// <summary>A linear layer y = x·W (+ b): W read as [in, out].</summary>
/// <param name="Node">The MatMul or Gemm.</param>
/// <param name="Output">y (the bias Add's output when there is one).</param>
/// <param name="Input">x.</param>
/// <param name="Weight">The weight value as the node reads it.</param>
/// <param name="WeightIsOutIn">True when <paramref name="Weight"/> is [out, in] (Gemm with transB = 1).</param>
/// <param name="Bias">b [out], or null.</param>
/// <param name="Nodes">MatMul/Gemm and the bias Add.</param>
internal sealed record Linear(Node Node, Value Output, Value Input, Value Weight, bool WeightIsOutIn, Value? Bias, IReadOnlyList<Node> Nodes)
{
    /// <summary>Reads a linear layer ending in <paramref name="y"/>: Add(MatMul(x, W), b), MatMul(x, W) or Gemm(x, W, b).</summary>
    public static Linear? At(Value y) => Match(y).Match;

    /// <summary>
    /// The one definition of a Linear layer: Add(MatMul(x, W), b) with b a 1-D constant and the MatMul read only by the
    /// Add, MatMul(x, W), or Gemm(x, W, b?) with alpha = beta = 1 and transA = 0; W a 2-D constant or a Transpose of
    /// one. Otherwise the reason.
    /// </summary>
    public static Matched<Linear> Match(Value y)
    {
        if (y.Producer is not { IsDefaultDomain: true } n)
            return Matched<Linear>.Fail($"'{y.Name}' is not computed by a default-domain op");
        if (n.OpType == "Add")
        {
            for (int i = 0; i < 2; i++)
            {
                if (ConstantValue.Of(n.Inputs[i]) is { Dims.Count: 1 } && n.Inputs[1 - i]?.Producer is { OpType: "MatMul" } mm
                    && AtMatMul(mm) is { } lin && lin.Output.Uses.Count == 1)
                    return lin with { Output = y, Bias = n.Inputs[i], Nodes = [mm, n] };
            }
            return Matched<Linear>.Fail($"Add '{n.Name}' is not a 1-D constant bias on a MatMul by a constant weight that only it reads");
        }
        if (n.OpType == "MatMul")
            return AtMatMul(n) is { } lin ? lin : Matched<Linear>.Fail($"MatMul '{n.Name}' does not read a 2-D constant weight (or a Transpose of one)");
        if (n.OpType == "Gemm")
        {
            if (n.GetFloat("alpha", 1) != 1 || n.GetFloat("beta", 1) != 1 || n.GetInt("transA", 0) != 0)
                return Matched<Linear>.Fail($"Gemm '{n.Name}' scales (alpha, beta) or transposes its input");
            if (n.Inputs[1] is not { } w || !IsConstantWeight(w))
                return Matched<Linear>.Fail($"Gemm '{n.Name}' does not read a 2-D constant weight (or a Transpose of one)");
            var bias = n.Inputs.Count > 2 ? n.Inputs[2] : null;
            if (bias != null && ConstantValue.Of(bias) is not { Dims.Count: 1 })
                return Matched<Linear>.Fail($"Gemm '{n.Name}' adds a bias that is not a 1-D constant");
            return new Linear(n, y, n.Inputs[0]!, w, n.GetInt("transB", 0) != 0, bias, [n]);
        }
        return Matched<Linear>.Fail($"{n.OpType} '{n.Name}' is not MatMul, Gemm or a bias Add");
    }

    /// <summary>Whether <paramref name="n"/> is a MatMul or Gemm by a constant weight (possibly through a Transpose of it).</summary>
    public static bool ReadsConstantWeight(Node n) =>
        n.IsDefaultDomain && n.OpType is "MatMul" or "Gemm" && n.Inputs.Count > 1 && n.Inputs[1] is { } w
        && (ConstantValue.Of(w) is not null || (w.Producer is { OpType: "Transpose" } t && ConstantValue.Of(t.Inputs[0]) is not null));

    /// <summary>The initializer W itself (through the Transpose), and whether the node reads it as [out, in].</summary>
    public (Value Initializer, bool OutIn) WeightSource =>
        Weight.Producer is { OpType: "Transpose" } t ? (t.Inputs[0]!, !WeightIsOutIn) : (Weight, WeightIsOutIn);

    private static Linear? AtMatMul(Node mm) =>
        mm.Inputs[1] is { } w && IsConstantWeight(w) ? new Linear(mm, mm.Outputs[0], mm.Inputs[0]!, w, false, null, [mm]) : null;

    private static bool IsConstantWeight(Value w) =>
        ConstantValue.Of(w) is { Dims.Count: 2 } || (w.Producer is { OpType: "Transpose" } t && ConstantValue.Of(t.Inputs[0]) is { Dims.Count: 2 });

    /// <summary>[in, out] dims of the weight.</summary>
    public (long In, long Out) Dims
    {
        get
        {
            var t = ConstantValue.Of(Weight);
            long a, b;
            if (t != null)
                (a, b) = (t.Dims[0], t.Dims[1]);
            else
            {
                var src = ConstantValue.Of(Weight.Producer!.Inputs[0])!;
                (a, b) = (src.Dims[1], src.Dims[0]);
            }
            return WeightIsOutIn ? (b, a) : (a, b);
        }
    }
}

/// <summary>Output columns [Start, Start + Count) of a linear layer: one half of a fused gate/up projection.</summary>
internal readonly record struct Columns(long Start, long Count);

/// <summary>
/// A recognized FFN: Linear → activation → Linear, or a gated FFN (gate, up, down; the gate and up projections may be
/// the two column halves of one fused projection, <see cref="Fc1Cols"/> and <see cref="UpCols"/>).
/// </summary>
internal sealed record FfnMatch(Linear Fc1, Linear? Up, Linear Fc2, string Activation, Value? Fc1Bias, IReadOnlyList<Node> Region,
    Columns? Fc1Cols = null, Columns? UpCols = null)
{
    public Value X => Fc1.Input;

    /// <summary>[d, d_ff] of the gate/fc1 projection (its column half when fused).</summary>
    public (long In, long Out) Fc1Dims => Fc1Cols is { } c ? (Fc1.Dims.In, c.Count) : Fc1.Dims;

    /// <summary>[d, d_ff] of the up projection (its column half when fused).</summary>
    public (long In, long Out)? UpDims => Up is null ? null : UpCols is { } c ? (Up.Dims.In, c.Count) : Up.Dims;

    /// <summary>Gated activations and the gate function each applies to its first projection.</summary>
    public static readonly IReadOnlyDictionary<string, string> GatedByGate = new Dictionary<string, string>
    {
        ["silu"] = "swiglu", ["gelu"] = "geglu", ["gelu_tanh"] = "geglu_tanh", ["relu"] = "reglu",
    };
}

/// <summary>
/// FFN recognition. Target: every linear layer whose input is an elementwise nonlinearity (through Dropout and
/// token-flattening Reshapes): <c>fc2(act(fc1(x)))</c>. The activation subgraph between fc1 and fc2 is classified
/// by evaluating it on probe points against ReLU, GELU (erf), GELU (tanh) and SiLU, so every exporter spelling of
/// the same function matches; <c>Relu</c>, <c>Gelu</c> and <c>com.microsoft::FastGelu</c> nodes are read directly.
/// A gated FFN is <c>down(act(gate(x)) ⊙ up(x))</c> with act identified the same way (SiLU: SwiGLU, GELU: GEGLU,
/// tanh GELU: T5's gated-gelu, ReLU: ReGLU); gate and up may be two projections or the two halves of one fused
/// projection (<c>chunk</c>/<c>split</c> or two slices of its last axis). The squared ReLU is classified too.
/// The hidden activations must have no outside uses.
/// </summary>
internal static class FfnRecognition
{
    // Activation functions (as ops, or as the telltale op of a decomposed spelling). Normalizations decompose to
    // Sub/Div/Sqrt/Pow/Mul/Add only, so they are not candidates.
    private static readonly HashSet<string> Nonlinear =
        ["Relu", "Gelu", "FastGelu", "Tanh", "Sigmoid", "Erf", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Silu", "Mish", "PRelu"];

    private static readonly HashSet<string> Arithmetic = ["Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Cast", "Identity"];

    /// <summary>
    /// Whether the linear <paramref name="fc2"/> is an FFN candidate: the elementwise expression feeding it contains an
    /// activation function. Returns the hidden value fc2 reads.
    /// </summary>
    public static bool IsCandidate(Linear fc2, out Value hidden)
    {
        hidden = SkipPassThrough(fc2.Input, out _);
        var stack = new Stack<Value>([hidden]);
        var seen = new HashSet<Node>();
        while (stack.Count > 0 && seen.Count < 16)
        {
            if (stack.Pop().Producer is not { } p || !seen.Add(p))
                continue;
            if (Nonlinear.Contains(p.OpType))
                return true;
            if (!p.IsDefaultDomain || !Arithmetic.Contains(p.OpType) || Linear.At(p.Outputs[0]) is not null)
                continue;
            foreach (var i in p.Inputs)
            {
                if (i != null)
                    stack.Push(i);
            }
        }
        return false;
    }

    // Dropout and Reshapes that keep the last axis (token flattening) between the activation and fc2.
    private static Value SkipPassThrough(Value v, out List<Node> skipped)
    {
        skipped = [];
        for (int i = 0; i < 4; i++)
        {
            if (v.Producer is { OpType: "Dropout" or "Reshape" or "Identity" } p && p.IsDefaultDomain && p.Inputs[0] is { } x)
            {
                skipped.Add(p);
                v = x;
                continue;
            }
            break;
        }
        return v;
    }

    public static Matched<FfnMatch> Match(Linear fc2, StaticShapes shapes)
    {
        var afterAct = SkipPassThrough(fc2.Input, out var passFc2);
        foreach (var p in passFc2.Where(p => p.OpType == "Reshape"))
        {
            if (!KeepsLastAxis(p, shapes))
                return (null, $"Reshape '{p.Name}' between the activation and fc2 changes the hidden axis");
        }
        var region = new List<Node>(fc2.Nodes);
        region.AddRange(passFc2);
        var act = afterAct.Producer!;

        // Gated: Mul(act(gate(x)), up(x)), either order; gate and up are linears or halves of one fused linear.
        if (act.OpType == "Mul" && act.IsDefaultDomain)
        {
            string? gatedWhy = null;
            foreach (var (gSide, uSide) in new[] { (0, 1), (1, 0) })
            {
                var upValue = SkipReshapes(act.Inputs[uSide]!, shapes, out var passUp);
                var up = Projection(upValue, shapes, out var upCols, out var upNodes);
                if (up is null)
                    continue;
                var gateSub = ActivationSubgraph(act.Inputs[gSide]!, out var gateIn, out _);
                if (gateSub is not { Count: > 0 } || gateIn is null)
                    continue;
                var gate = Projection(SkipReshapes(gateIn, shapes, out var passGate), shapes, out var gateCols, out var gateNodes);
                if (gate is null)
                    continue;
                if (ReferenceEquals(gate.Node, up.Node) && gateCols is null)
                    continue; // act(u) · u of one projection (SiLU written as u · sigmoid(u)): not gated
                var gateKind = ActivationProbe.Classify(gateSub, gateIn, act.Inputs[gSide]!);
                if (gateKind is null || !FfnMatch.GatedByGate.TryGetValue(gateKind, out var gated))
                {
                    gatedWhy = $"the gate of Mul '{act.Name}' ({string.Join(", ", gateSub.Select(n => n.OpType).Distinct())}) is not SiLU, GELU (erf or tanh) or ReLU";
                    continue;
                }
                if (!SameInput(gate.Input, up.Input))
                    return (null, $"gate '{gate.Node.Name}' and up '{up.Node.Name}' of the gated FFN read different inputs");
                region.Add(act);
                region.AddRange(gateSub);
                region.AddRange(passUp);
                region.AddRange(passGate);
                region.AddRange(gateNodes);
                region.AddRange(upNodes);
                return Finish(new FfnMatch(gate, up, fc2, gated, null, region, gateCols, upCols), shapes);
            }
            if (gatedWhy != null)
                return (null, gatedWhy);
        }

        // FastGelu(x·W1, b1) from the contrib domain: the tanh GELU with the fc1 bias inside.
        if (act.OpType == "FastGelu" && act.Domain == "com.microsoft")
        {
            var fc1f = Linear.At(SkipReshapes(act.Inputs[0]!, shapes, out var pass));
            if (fc1f is null)
                return (null, $"FastGelu '{act.Name}' does not read a linear layer");
            if (fc1f.Bias != null && act.Inputs.Count > 1 && act.Inputs[1] != null)
                return (null, $"FastGelu '{act.Name}' adds a second bias to a linear that has one");
            region.Add(act);
            region.AddRange(pass);
            region.AddRange(fc1f.Nodes);
            var bias = act.Inputs.Count > 1 ? act.Inputs[1] : null;
            if (bias != null && ConstantValue.Of(bias) is not { Dims.Count: 1 })
                return (null, $"FastGelu '{act.Name}' bias is not a constant vector");
            return Finish(new FfnMatch(fc1f, null, fc2, "gelu_tanh", bias, region), shapes);
        }
        if (!act.IsDefaultDomain)
            return (null, $"activation {act.Domain}::{act.OpType} '{act.Name}' is not supported");

        // Generic activation subgraph: elementwise ops from one linear output u (and constants) to afterAct.
        var sub = ActivationSubgraph(afterAct, out var u, out var why);
        if (sub is null)
            return (null, why);
        var fc1 = Linear.At(SkipReshapes(u!, shapes, out var passFc1));
        if (fc1 is null)
            return (null, $"the activation's input '{u!.Name}' is not a linear layer with a constant weight");
        var kind = ActivationProbe.Classify(sub, u!, afterAct);
        if (kind is null)
            return (null, $"activation subgraph ({string.Join(", ", sub.Select(n => n.OpType).Distinct())}) is not ReLU, GELU (erf or tanh), SiLU or squared ReLU");
        region.AddRange(sub);
        region.AddRange(passFc1);
        region.AddRange(fc1.Nodes);
        return Finish(new FfnMatch(fc1, null, fc2, kind, null, region), shapes);
    }

    private static Matched<FfnMatch> Finish(FfnMatch m, StaticShapes shapes)
    {
        // Shape ops outside may read hidden values (exporters' reshape arithmetic): they see only shapes, which the
        // rewrite does not change, and they die with the reshapes they feed.
        var exits = new HashSet<Value>(m.Fc2.Nodes[^1].Outputs);
        var region = m.Region.Distinct().ToList();
        foreach (var n in region)
        {
            foreach (var o in n.Outputs.Where(o => o.Uses.Any(u => u.Node.OpType == "Shape")))
                exits.Add(o);
        }
        if (Region.FindOutsideUse(region, exits) is { } outside)
            return (null, outside.Reason);
        foreach (var n in region)
        {
            foreach (var o in n.Outputs)
            {
                if (o.Uses.FirstOrDefault(u => u.Node.OpType != "Shape" && !region.Contains(u.Node)) is { Node: { } user } && !ReferenceEquals(n, m.Fc2.Nodes[^1]))
                    return (null, $"hidden value '{o.Name}' of {n.OpType} '{n.Name}' is also used by {user.OpType} '{user.Name}' outside the FFN");
            }
        }
        if (m.Up?.Bias is not null && !(m.UpCols is not null && m.Fc1Cols is not null && m.Up.Bias is { } ub && ConstantValue.Of(ub) is { } bt && bt.ToDoubleArray().Skip((int)m.UpCols.Value.Start).Take((int)m.UpCols.Value.Count).All(x => x == 0)))
            return (null, $"the up projection '{m.Up.Node.Name}' of the gated FFN has a bias; RoutedFFN has none for it");
        var (d, dff) = m.Fc1Dims;
        var (dff2, d2) = m.Fc2.Dims;
        if (dff != dff2 || d != d2)
            return (null, $"fc1 [{d}, {dff}] and fc2 [{dff2}, {d2}] do not fit together");
        if (m.UpDims is { } up && up != (d, dff))
            return (null, $"up projection [{up.In}, {up.Out}] does not match gate [{d}, {dff}]");
        return (m, null);
    }

    private static bool SameInput(Value a, Value b) => ReferenceEquals(a, b);

    /// <summary>
    /// The linear layer behind <paramref name="v"/>: the linear itself, or one column range of it taken by a Slice of the
    /// last axis or an output of a Split of the last axis (a fused gate/up projection). <paramref name="nodes"/> are the
    /// linear's nodes and the Slice/Split.
    /// </summary>
    private static Linear? Projection(Value v, StaticShapes shapes, out Columns? cols, out List<Node> nodes)
    {
        cols = null;
        nodes = [];
        if (Linear.At(v) is { } direct)
        {
            nodes.AddRange(direct.Nodes);
            return direct;
        }
        if (v.Producer is not { } p || !p.IsDefaultDomain || p.OpType is not ("Slice" or "Split") || p.Inputs[0] is not { } whole
            || Linear.At(whole) is not { } fused)
            return null;
        long width = fused.Dims.Out;
        int rank = shapes.RankOf(whole) ?? 0;
        bool LastAxis(long axis) => axis == -1 || (rank > 0 && axis == rank - 1);
        if (p.OpType == "Slice")
        {
            // Slice(u, [start], [end], [axis], [1?]) over the last axis.
            var starts = p.Inputs.Count > 1 && p.Inputs[1] is { } st ? shapes.IntsOf(st) : null;
            var ends = p.Inputs.Count > 2 && p.Inputs[2] is { } en ? shapes.IntsOf(en) : null;
            var axes = p.Inputs.Count > 3 && p.Inputs[3] is { } ax ? shapes.IntsOf(ax) : null;
            var steps = p.Inputs.Count > 4 && p.Inputs[4] is { } sp ? shapes.IntsOf(sp) : null;
            if (starts is not [{ } s0] || ends is not [{ } e0] || axes is not [{ } a0] || !LastAxis(a0) || (steps is not null && steps is not [1]))
                return null;
            long b = Math.Clamp(s0 < 0 ? s0 + width : s0, 0, width), e = Math.Clamp(e0 < 0 ? e0 + width : e0, 0, width);
            if (e <= b)
                return null;
            cols = new Columns(b, e - b);
        }
        else
        {
            if (!LastAxis(p.GetInt("axis", 0)))
                return null;
            int index = Enumerable.Range(0, p.Outputs.Count).First(i => ReferenceEquals(p.Outputs[i], v));
            IReadOnlyList<long?>? split = p.Inputs.Count > 1 && p.Inputs[1] is { } sv ? shapes.IntsOf(sv) : p.GetInts("split")?.Select(x => (long?)x).ToList();
            long[] sizes;
            if (split is null)
            {
                if (width % p.Outputs.Count != 0)
                    return null;
                sizes = [.. Enumerable.Repeat(width / p.Outputs.Count, p.Outputs.Count)];
            }
            else if (split.All(x => x is not null) && split.Count == p.Outputs.Count && split.Sum(x => x!.Value) == width)
            {
                sizes = [.. split.Select(x => x!.Value)];
            }
            else
            {
                return null;
            }
            cols = new Columns(sizes.Take(index).Sum(), sizes[index]);
        }
        nodes.AddRange(fused.Nodes);
        nodes.Add(p);
        return fused;
    }

    private static Value SkipReshapes(Value v, StaticShapes shapes, out List<Node> skipped)
    {
        skipped = [];
        while (v.Producer is { OpType: "Reshape" or "Identity" } p && p.IsDefaultDomain && (p.OpType == "Identity" || KeepsLastAxis(p, shapes)))
        {
            skipped.Add(p);
            v = p.Inputs[0]!;
        }
        return v;
    }

    private static bool KeepsLastAxis(Node reshape, StaticShapes shapes)
    {
        var inDim = shapes.LastDim(reshape.Inputs[0]!);
        var outDim = shapes.LastDim(reshape.Outputs[0]);
        return inDim is not null && inDim == outDim;
    }

    // The elementwise subgraph between u and the activation output: all nodes reachable backwards from `output`
    // through elementwise ops, whose non-constant leaves are all one value u.
    private static List<Node>? ActivationSubgraph(Value output, out Value? u, out string? why)
    {
        u = null;
        why = null;
        var nodes = new List<Node>();
        var seen = new HashSet<Node>();
        var stack = new Stack<Value>();
        stack.Push(output);
        while (stack.Count > 0)
        {
            var v = stack.Pop();
            if (ConstantValue.Of(v) is not null)
                continue;
            var p = v.Producer;
            // A linear layer's output (the bias Add included) is the activation's input, not part of it.
            bool elementwise = p is { } pp && pp.IsDefaultDomain && ActivationProbe.Supported.Contains(pp.OpType) && Linear.At(v) is null;
            if (!elementwise || (u != null && ReferenceEquals(v, u)))
            {
                if (u != null && !ReferenceEquals(u, v))
                {
                    why = $"the activation reads two different inputs, '{u.Name}' and '{v.Name}'";
                    return null;
                }
                u = v;
                continue;
            }
            if (!seen.Add(p!))
                continue;
            if (nodes.Count > 24)
            {
                why = "activation subgraph too large";
                return null;
            }
            nodes.Add(p!);
            foreach (var input in p!.Inputs)
            {
                if (input != null)
                    stack.Push(input);
            }
        }
        if (u is null)
        {
            why = "the activation has no non-constant input";
            return null;
        }
        // u must be produced by a linear, not by one of the elementwise ops themselves.
        return nodes;
    }
}

/// <summary>Evaluates an elementwise subgraph on probe points to tell which activation it computes.</summary>
internal static class ActivationProbe
{
    public static readonly HashSet<string> Supported =
        ["Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Sqrt", "Neg", "Exp", "Relu", "Identity", "Cast", "Gelu", "Max", "Min", "Abs", "Reciprocal"];

    private static readonly double[] Points = [.. Enumerable.Range(-24, 49).Select(i => i / 4.0)];

    /// <summary>relu, gelu, gelu_tanh, silu or relu2 (squared ReLU) when the subgraph computes it on every probe point (to 2e-5), else null.</summary>
    public static string? Classify(IReadOnlyList<Node> nodes, Value input, Value output)
    {
        var candidates = new (string Name, Func<double, double> F)[]
        {
            ("relu", x => Math.Max(0, x)),
            ("gelu", x => 0.5 * x * (1 + Erf(x / Math.Sqrt(2)))),
            ("gelu_tanh", x => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)))),
            ("silu", x => x / (1 + Math.Exp(-x))),
            ("relu2", x => x > 0 ? x * x : 0),
        };
        var values = new double[Points.Length];
        for (int i = 0; i < Points.Length; i++)
        {
            var y = Eval(output, input, Points[i], [], nodes);
            if (y is null)
                return null;
            values[i] = y.Value;
        }
        foreach (var (name, f) in candidates)
        {
            if (Points.Select((x, i) => Math.Abs(f(x) - values[i]) <= 2e-5 * Math.Max(1, Math.Abs(f(x)))).All(ok => ok))
                return name;
        }
        return null;
    }

    private static double? Eval(Value v, Value input, double x, Dictionary<Value, double?> memo, IReadOnlyList<Node> nodes)
    {
        if (ReferenceEquals(v, input))
            return x;
        if (memo.TryGetValue(v, out var m))
            return m;
        double? r;
        if (ConstantValue.Of(v) is { } t)
        {
            var d = t.ElementType == ElementType.String ? null : t.ToDoubleArray();
            r = d is { Length: > 0 } && d.All(e => e == d[0]) ? d[0] : null;
        }
        else if (v.Producer is { } n)
        {
            var a = n.Inputs.Select(i => i is null ? null : Eval(i, input, x, memo, nodes)).ToArray();
            double? A(int i) => i < a.Length ? a[i] : null;
            r = n.OpType switch
            {
                "Add" => A(0) + A(1),
                "Sub" => A(0) - A(1),
                "Mul" => A(0) * A(1),
                "Div" => A(0) / A(1),
                "Pow" => A(0) is { } p0 && A(1) is { } p1 ? Math.Pow(p0, p1) : null,
                "Erf" => A(0) is { } e0 ? Erf(e0) : null,
                "Tanh" => A(0) is { } t0 ? Math.Tanh(t0) : null,
                "Sigmoid" => A(0) is { } s0 ? 1 / (1 + Math.Exp(-s0)) : null,
                "Sqrt" => A(0) is { } q0 ? Math.Sqrt(q0) : null,
                "Neg" => -A(0),
                "Exp" => A(0) is { } x0 ? Math.Exp(x0) : null,
                "Relu" => A(0) is { } r0 ? Math.Max(0, r0) : null,
                "Abs" => A(0) is { } b0 ? Math.Abs(b0) : null,
                "Reciprocal" => 1 / A(0),
                "Max" => A(0) is { } m0 && A(1) is { } m1 ? Math.Max(m0, m1) : null,
                "Min" => A(0) is { } n0 && A(1) is { } n1 ? Math.Min(n0, n1) : null,
                "Identity" => A(0),
                "Cast" => n.GetInt("to", 1) is 1 or 10 or 11 or 16 ? A(0) : null,
                "Gelu" => A(0) is { } g0
                    ? n.GetString("approximate", "none") == "tanh"
                        ? 0.5 * g0 * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (g0 + 0.044715 * g0 * g0 * g0)))
                        : 0.5 * g0 * (1 + Erf(g0 / Math.Sqrt(2)))
                    : null,
                _ => null,
            };
        }
        else
        {
            r = null;
        }
        memo[v] = r;
        return r;
    }

    /// <summary>erf to about 1e-12 (series for small |x|, continued fraction complement beyond).</summary>
    public static double Erf(double x)
    {
        double ax = Math.Abs(x);
        double r;
        if (ax < 2.5)
        {
            // Maclaurin series: erf x = 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1))
            double term = ax, sum = ax, x2 = ax * ax;
            for (int n = 1; n < 60; n++)
            {
                term *= -x2 / n;
                double add = term / (2 * n + 1);
                sum += add;
                if (Math.Abs(add) < 1e-17)
                    break;
            }
            r = 2 / Math.Sqrt(Math.PI) * sum;
        }
        else
        {
            // erfc x = exp(-x²)/sqrt(pi) · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
            double f = ax;
            for (int k = 60; k >= 1; k--)
                f = ax + k / 2.0 / f;
            r = 1 - Math.Exp(-ax * ax) / Math.Sqrt(Math.PI) / f;
        }
        return x < 0 ? -r : r;
    }
}
