using System.Globalization;
using Spt.Ir;

namespace Spt.CustomOps;

/// <summary>
/// Schemas of the routed FFN op pair (domain <c>spt</c>, opset 1): <see cref="RoutedFfn"/> and its gradient
/// <see cref="RoutedFfnGrad"/>. The native library (<c>native/customops/binding/ffn_ops.cc</c>) implements exactly
/// these contracts on CPU in fp32.
/// </summary>
/// <remarks>
/// Weights use the MatMul layout (y = x·W + b): W1/W3 [d, d_ff], W2 [d_ff, d], router Wr [d, n_blocks]. d_ff is cut
/// into n_blocks contiguous blocks of bs = d_ff / n_blocks; p = sigmoid(x·Wr + br) picks blocks_per_token blocks per token
/// (higher p first, ties to the lower block). For a selected block i with g = 2·p[t, i]:
/// a = gin·(x·W1_i + b1_i) + (x·A1)·B1_i, h = act(a) (SwiGLU: silu(a)·(gin·x·W3_i + (x·A3)·B3_i)),
/// y = b2 + Σ_slots gob·h·W2_i + gol·(h·A2_i)·B2, where gate "2sigmoid_frozen_only" has gin = gob = g, gol = 1;
/// "2sigmoid_all" has gin = 1, gob = gol = g; "none" has all three = 1 (the router then gets no gradient).
/// Saved state: P [T, n_blocks], Sel [T, k] (slot order, k = blocks_per_token) and U [T·k, bs] (for SwiGLU [T·k, 2·bs]:
/// u | u3), the base pre-activation x·W1_i + b1_i of every (token, slot) pair, rows grouped by (block, token).
/// T is the product of X's leading dims.
/// </remarks>
public static class RoutedFfnOps
{
    private static readonly ElementType[] FloatOnly = [ElementType.Float];
    private static readonly ElementType[] Int32Only = [ElementType.Int32];

    /// <summary>Activations the op supports.</summary>
    public static IReadOnlyList<string> Activations { get; } = ["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh", "reglu", "relu2"];

    /// <summary>The gated activations: h = gate(a) ⊙ a3 with the up projection W3 (gate silu, gelu, tanh gelu, relu).</summary>
    public static IReadOnlyList<string> GatedActivations { get; } = ["swiglu", "geglu", "geglu_tanh", "reglu"];

    /// <summary>Gate modes the op supports.</summary>
    public static IReadOnlyList<string> Gates { get; } = ["2sigmoid_frozen_only", "2sigmoid_all", "none"];

    /// <summary>Attribute <c>n_blocks</c>: contiguous hidden blocks.</summary>
    public const string NBlocksAttr = "n_blocks";

    /// <summary>Attribute <c>blocks_per_token</c>: blocks each token runs, in [1, n_blocks].</summary>
    public const string BlocksPerTokenAttr = "blocks_per_token";

    /// <summary>Attribute <c>activation</c>.</summary>
    public const string ActivationAttr = "activation";

    /// <summary>Attribute <c>gate</c>.</summary>
    public const string GateAttr = "gate";

    /// <summary>Attribute <c>frozen_base</c>.</summary>
    public const string FrozenBaseAttr = "frozen_base";

    /// <summary>Default of <see cref="NBlocksAttr"/> (the SPT reference).</summary>
    public const long DefaultNBlocks = 4;

    /// <summary>Default of <see cref="BlocksPerTokenAttr"/> (the SPT reference).</summary>
    public const long DefaultBlocksPerToken = 2;

    /// <summary>Default of <see cref="ActivationAttr"/>.</summary>
    public const string DefaultActivation = "relu";

    /// <summary>Default of <see cref="GateAttr"/>: the SPT gate, 2p on the frozen base path.</summary>
    public const string DefaultGate = "2sigmoid_frozen_only";

    /// <summary>The gate that makes a routed FFN with every block active compute the dense FFN.</summary>
    public const string NoGate = "none";

    /// <summary>Default of <see cref="FrozenBaseAttr"/>.</summary>
    public const long DefaultFrozenBase = 1;

    // Forward input positions (RoutedFFNGrad has dY first, then these shifted by one, then P, Sel, U).
    public const int X = 0, W1 = 1, B1 = 2, W2 = 3, B2 = 4, Wr = 5, Br = 6, W3 = 7;
    public const int LoraA1 = 8, LoraB1 = 9, LoraA2 = 10, LoraB2 = 11, LoraA3 = 12, LoraB3 = 13;
    public const int ForwardInputCount = 14;

    // Forward output positions.
    public const int Y = 0, P = 1, Sel = 2, U = 3;

    // RoutedFFNGrad input positions beyond the shifted forward inputs.
    public const int GradDY = 0, GradP = ForwardInputCount + 1, GradSel = ForwardInputCount + 2, GradU = ForwardInputCount + 3;

    // RoutedFFNGrad outputs, in order: dX, dWr, dbr, dW1, db1, dW2, db2, dW3, dA1, dB1, dA2, dB2, dA3, dB3.
    public const int DX = 0, DWr = 1, DBr = 2, DW1 = 3, DB1 = 4, DW2 = 5, DB2 = 6, DW3 = 7;
    public const int DA1 = 8, DB1Lora = 9, DA2 = 10, DB2Lora = 11, DA3 = 12, DB3Lora = 13;

    /// <summary>The base weights (W1, b1, W2, b2, W3): frozen, and without gradients, when frozen_base = 1.</summary>
    public static IReadOnlyList<int> BaseWeights { get; } = [W1, B1, W2, B2, W3];

    /// <summary>The inputs the SPT method trains: the router and the LoRA factors.</summary>
    public static IReadOnlyList<int> AdaptedWeights { get; } = [Wr, Br, LoraA1, LoraB1, LoraA2, LoraB2, LoraA3, LoraB3];

    /// <summary>The forward input each gradient output belongs to (same shape).</summary>
    public static IReadOnlyList<int> GradSources { get; } =
        [X, Wr, Br, W1, B1, W2, B2, W3, LoraA1, LoraB1, LoraA2, LoraB2, LoraA3, LoraB3];

    private static readonly AttributeSpec[] Attributes =
    [
        new(NBlocksAttr, AttributeKind.Int, DefaultNBlocks, "Number of contiguous hidden blocks; d_ff must be divisible by it.",
            v => (long)v >= 1 ? null : "must be >= 1") { Rejected = [0L, -1L] },
        new(BlocksPerTokenAttr, AttributeKind.Int, DefaultBlocksPerToken, "Blocks per token, in [1, n_blocks].",
            v => (long)v >= 1 ? null : "must be >= 1") { Rejected = [0L, -1L] },
        AttributeSpec.OneOf(ActivationAttr, DefaultActivation, "One of relu, gelu (erf), gelu_tanh, silu, relu2 (squared ReLU), and the gated swiglu, geglu, geglu_tanh, reglu (gate silu, gelu, tanh gelu, relu times the up projection).", Activations),
        AttributeSpec.OneOf(GateAttr, DefaultGate,
            "2sigmoid_frozen_only: g = 2p scales the frozen base path only; 2sigmoid_all: g scales the whole block " +
            "output; none: no gate (the router only selects and gets no gradient).", Gates),
        AttributeSpec.Flag(FrozenBaseAttr, DefaultFrozenBase,
            "1: W1, b1, W2, b2, W3 are frozen and RoutedFFNGrad must not be asked for their gradients; 0: full finetune."),
    ];

    private static readonly ParameterSpec[] ForwardInputs =
    [
        new("X", "[..., d] tokens (leading dims flatten to T).", FloatOnly),
        new("W1", "[d, d_ff] fc1 (SwiGLU: gate projection).", FloatOnly),
        new("b1", "[d_ff] fc1 bias.", FloatOnly, Optional: true),
        new("W2", "[d_ff, d] fc2 (SwiGLU: down projection).", FloatOnly),
        new("b2", "[d] fc2 bias (ungated, added once per token).", FloatOnly, Optional: true),
        new("Wr", "[d, n_blocks] router weight.", FloatOnly),
        new("br", "[n_blocks] router bias.", FloatOnly, Optional: true),
        new("W3", "[d, d_ff] up projection of a gated activation; required for those, not allowed otherwise.", FloatOnly, Optional: true),
        new("A1", "[d, r1] LoRA down factor of fc1.", FloatOnly, Optional: true),
        new("B1", "[r1, d_ff] LoRA up factor of fc1 (block i uses its columns).", FloatOnly, Optional: true),
        new("A2", "[d_ff, r2] LoRA down factor of fc2 (block i uses its rows).", FloatOnly, Optional: true),
        new("B2", "[r2, d] LoRA up factor of fc2.", FloatOnly, Optional: true),
        new("A3", "[d, r3] LoRA down factor of the up projection (gated activations only).", FloatOnly, Optional: true),
        new("B3", "[r3, d_ff] LoRA up factor of the up projection (gated activations only).", FloatOnly, Optional: true),
    ];

    /// <summary>RoutedFFN(X, W1, b1?, W2, b2?, Wr, br?, W3?, A1?, B1?, A2?, B2?, A3?, B3?) -> Y, P?, Sel?, U?.</summary>
    public static OpSchema RoutedFfn { get; } = new(
        "RoutedFFN",
        "Sigmoid-routed block-sparse FFN with optional LoRA (SPT). Only the blocks_per_token blocks of each token run; token " +
        "contributions are summed in slot order. P, Sel and U are the state RoutedFFNGrad needs; an inference " +
        "graph can leave them unnamed.",
        ForwardInputs,
        [
            new("Y", "[..., d] output, the shape of X.", FloatOnly),
            new("P", "[T, n_blocks] router probabilities.", FloatOnly, Optional: true),
            new("Sel", "[T, k] int32 selected blocks per token (k = blocks_per_token), in slot order.", Int32Only, Optional: true),
            new("U", "[T*k, d_ff/n_blocks] base pre-activations of the selected pairs ([.., 2*bs] for swiglu), " +
                "rows grouped by (block, token).", FloatOnly, Optional: true),
        ],
        Attributes,
        ctx =>
        {
            var s = CheckForward(ctx, 0);
            if (s.XShape is null)
            {
                return [new TensorType(ElementType.Float, null), new TensorType(ElementType.Float, null),
                        new TensorType(ElementType.Int32, null), new TensorType(ElementType.Float, null)];
            }

            return
            [
                new TensorType(ElementType.Float, s.XShape),
                new TensorType(ElementType.Float, [s.Tokens, new Dim(s.NBlocks)]),
                new TensorType(ElementType.Int32, [s.Tokens, new Dim(s.TopK)]),
                new TensorType(ElementType.Float, [s.Rows, s.PreWidth]),
            ];
        });

    /// <summary>
    /// RoutedFFNGrad(dY, the 14 RoutedFFN inputs, P, Sel, U) -> dX, dWr?, dbr?, dW1?, db1?, dW2?, db2?, dW3?, dA1?,
    /// dB1?, dA2?, dB2?, dA3?, dB3?.
    /// </summary>
    public static OpSchema RoutedFfnGrad { get; } = new(
        "RoutedFFNGrad",
        "Gradients of RoutedFFN, reusing its routing. Every gradient has the shape of its input. An output may be " +
        "named only when it applies: dbr/db1/db2 need their bias, dW1/db1/dW2/db2/dW3 need frozen_base = 0 (dW3 " +
        "also swiglu), LoRA gradients need their pair. With gate none, dWr and dbr are zero.",
        [
            new("dY", "[..., d] gradient of Y.", FloatOnly),
            .. ForwardInputs,
            new("P", "[T, n_blocks] from RoutedFFN.", FloatOnly),
            new("Sel", "[T, k] from RoutedFFN.", Int32Only),
            new("U", "[T*k, bs or 2*bs] from RoutedFFN.", FloatOnly),
        ],
        [
            new("dX", "[..., d]", FloatOnly),
            new("dWr", "[d, n_blocks]", FloatOnly, Optional: true),
            new("dbr", "[n_blocks]", FloatOnly, Optional: true),
            new("dW1", "[d, d_ff]", FloatOnly, Optional: true),
            new("db1", "[d_ff]", FloatOnly, Optional: true),
            new("dW2", "[d_ff, d]", FloatOnly, Optional: true),
            new("db2", "[d]", FloatOnly, Optional: true),
            new("dW3", "[d, d_ff]", FloatOnly, Optional: true),
            new("dA1", "[d, r1]", FloatOnly, Optional: true),
            new("dB1", "[r1, d_ff]", FloatOnly, Optional: true),
            new("dA2", "[d_ff, r2]", FloatOnly, Optional: true),
            new("dB2", "[r2, d]", FloatOnly, Optional: true),
            new("dA3", "[d, r3]", FloatOnly, Optional: true),
            new("dB3", "[r3, d_ff]", FloatOnly, Optional: true),
        ],
        Attributes,
        ctx =>
        {
            var s = CheckForward(ctx, 1);
            var dy = ctx.Input(GradDY)!;
            if (s.XShape is not null && dy.Shape is not null)
            {
                if (dy.Shape.Count != s.XShape.Count)
                {
                    throw ctx.Fail($"input 'dY' has shape {dy.Describe()}, expected the shape of X");
                }

                for (var i = 0; i < dy.Shape.Count; i++)
                {
                    ctx.RequireSame(dy.Shape[i], s.XShape[i], $"input 'dY' dim {i} vs X");
                }
            }

            if (s.XShape is not null)
            {
                RequireShape(ctx, GradP, "P", [s.Tokens, new Dim(s.NBlocks)], "[T, n_blocks]");
                RequireShape(ctx, GradSel, "Sel", [s.Tokens, new Dim(s.TopK)], "[T, blocks_per_token]");
                RequireShape(ctx, GradU, "U", [s.Rows, s.PreWidth], "[T*blocks_per_token, d_ff/n_blocks (x2 for swiglu)]");
            }

            var frozen = ctx.Int(FrozenBaseAttr) == 1;
            var outputs = new TensorType?[GradSources.Count];
            for (var o = 0; o < outputs.Length; o++)
            {
                var source = GradSources[o];
                var applies = ctx.HasInput(source + 1) && (o is < DW1 or > DW3 || !frozen);
                outputs[o] = applies ? new TensorType(ElementType.Float, ctx.Input(source + 1)!.Shape) : null;
            }

            return outputs;
        });

    private sealed record ForwardShapes(IReadOnlyList<Dim>? XShape, Dim Tokens, Dim Rows, Dim PreWidth, long NBlocks, long TopK);

    // Checks the forward inputs (at offset `shift`) and returns the derived dims.
    private static ForwardShapes CheckForward(ShapeContext ctx, int shift)
    {
        var nb = ctx.Int(NBlocksAttr);
        var k = ctx.Int(BlocksPerTokenAttr);
        if (k > nb)
        {
            throw ctx.Fail($"attribute '{BlocksPerTokenAttr}' = {k}: must be <= n_blocks = {nb}");
        }

        var swiglu = GatedActivations.Contains(ctx.String(ActivationAttr));
        string Name(int i) => ForwardInputs[i].Name;

        var x = ctx.Input(X + shift)!;
        if (x.Shape is { Count: 0 })
        {
            throw ctx.Fail("input 'X' must have shape [..., d] (rank >= 1), got a scalar");
        }

        var d = x.Shape is null ? default : x.Shape[^1];
        var w1 = ctx.ShapeOfRank(W1 + shift, 2, "[d, d_ff]");
        var f = w1?[1] ?? new Dim();
        if (w1 is not null)
        {
            ctx.RequireSame(w1[0], d, "input 'W1' dim 0 (d) vs X's last dim");
        }

        if (f.Value is { } fv && fv % nb != 0)
        {
            throw ctx.Fail($"d_ff ({fv}, from W1) must be divisible by attribute n_blocks ({nb})");
        }

        void Expect(int i, string text, params Dim[] expected)
        {
            if (!ctx.HasInput(i + shift))
            {
                return;
            }

            var shape = ctx.ShapeOfRank(i + shift, expected.Length, text);
            if (shape is null)
            {
                return;
            }

            for (var q = 0; q < expected.Length; q++)
            {
                ctx.RequireSame(shape[q], expected[q], $"input '{Name(i)}' must have shape {text}, dim {q}");
            }
        }

        Expect(W2, "[d_ff, d]", f, d);
        Expect(Wr, "[d, n_blocks]", d, new Dim(nb));
        Expect(B1, "[d_ff]", f);
        Expect(B2, "[d]", d);
        Expect(Br, "[n_blocks]", new Dim(nb));
        if (swiglu && !ctx.HasInput(W3 + shift))
        {
            throw ctx.Fail("input 'W3' (the up projection [d, d_ff]) is required for a gated activation (swiglu, geglu, geglu_tanh, reglu)");
        }

        if (!swiglu && ctx.HasInput(W3 + shift))
        {
            throw ctx.Fail("input 'W3' is only used with a gated activation (swiglu, geglu, geglu_tanh, reglu); leave it empty");
        }

        Expect(W3, "[d, d_ff]", d, f);
        void Pair(int a, int b, Dim aRows, Dim bCols)
        {
            if (ctx.HasInput(a + shift) != ctx.HasInput(b + shift))
            {
                var given = ctx.HasInput(a + shift) ? Name(a) : Name(b);
                throw ctx.Fail($"LoRA inputs '{Name(a)}' and '{Name(b)}' must be given together (got only '{given}')");
            }

            if (!ctx.HasInput(a + shift))
            {
                return;
            }

            var sa = ctx.ShapeOfRank(a + shift, 2, $"[{aRows}, r]");
            var rank = sa?[1] ?? new Dim();
            if (sa is not null)
            {
                ctx.RequireSame(sa[0], aRows, $"input '{Name(a)}' dim 0");
            }

            Expect(b, $"[r, {bCols}]", rank, bCols);
        }

        Pair(LoraA1, LoraB1, d, f);
        Pair(LoraA2, LoraB2, f, d);
        if (!swiglu && (ctx.HasInput(LoraA3 + shift) || ctx.HasInput(LoraB3 + shift)))
        {
            throw ctx.Fail("LoRA inputs 'A3'/'B3' are only used with a gated activation (swiglu, geglu, geglu_tanh, reglu); leave them empty");
        }

        Pair(LoraA3, LoraB3, d, f);

        // Width of a saved U row: bs, or 2·bs for SwiGLU.
        var bs = f.Value is { } known ? new Dim(swiglu ? 2 * known / nb : known / nb) : default;
        if (x.Shape is null)
        {
            return new ForwardShapes(null, default, default, bs, nb, k);
        }

        var tokens = Product(x.Shape.Take(x.Shape.Count - 1), 1);
        var rows = Product(x.Shape.Take(x.Shape.Count - 1), k);
        return new ForwardShapes(x.Shape, tokens, rows, bs, nb, k);
    }

    private static void RequireShape(ShapeContext ctx, int index, string name, Dim[] expected, string text)
    {
        var shape = ctx.ShapeOfRank(index, expected.Length, text);
        if (shape is null)
        {
            return;
        }

        for (var q = 0; q < expected.Length; q++)
        {
            ctx.RequireSame(shape[q], expected[q], $"input '{name}' must have shape {text}, dim {q}");
        }
    }

    // The product of dims times `factor`: a size when all are known, else "B*S" style symbols (as the native
    // shape inference names them), times the known factor.
    private static Dim Product(IEnumerable<Dim> dims, long factor)
    {
        var known = factor;
        var symbols = new List<string>();
        foreach (var dim in dims)
        {
            if (dim.Value is { } v)
            {
                known *= v;
            }
            else if (!string.IsNullOrEmpty(dim.Param))
            {
                symbols.Add(dim.Param);
            }
            else
            {
                return default;
            }
        }

        if (symbols.Count == 0)
        {
            return new Dim(known);
        }

        var name = string.Join("*", symbols);
        return new Dim(known == 1 ? name : name + "*" + known.ToString(CultureInfo.InvariantCulture));
    }
}
