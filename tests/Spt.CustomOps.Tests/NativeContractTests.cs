using Microsoft.ML.OnnxRuntime;
using Spt.CustomOps;
using Spt.Ir;
using Spt.Runtime;

namespace Spt.CustomOps.Tests;

/// <summary>
/// The native library holds to the op schemas: every op computes the same with its attributes omitted as with the
/// schema's defaults written out, and rejects the values the schema's ranges exclude, naming the attribute.
/// </summary>
public class NativeContractTests
{
    private const int B = 1, H = 2, S = 32, E = 8, M = 2, C = 4, Dc = E / M, T = 6, D = 8, F = 16;

    public static TheoryData<string> Ops() => [.. AllSchemas().Select(s => s.Name)];

    [Theory]
    [MemberData(nameof(Ops))]
    public void OmittedAttributesMeanTheSchemaDefaults(string op)
    {
        var omitted = Run(Build(op, _ => []));
        var explicitDefaults = Run(Build(op, schema => [.. schema.Attributes.Select(a => (a.Name, a.Default!))]));
        Assert.NotEmpty(omitted);
        Assert.Equal(omitted.Count, explicitDefaults.Count);
        for (var i = 0; i < omitted.Count; i++)
        {
            Assert.Equal(omitted[i], explicitDefaults[i]);
        }
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void ValuesOutsideTheSchemaRangeAreRejectedByBoth(string op)
    {
        var schema = AllSchemas().Single(s => s.Name == op);
        var probed = 0;
        foreach (var spec in schema.Attributes)
        {
            foreach (var bad in spec.Rejected)
            {
                probed++;
                var contract = Assert.Throws<OpContractException>(() => schema.ResolveAttributes(new Dictionary<string, object> { [spec.Name] = bad }));
                Assert.Contains($"attribute '{spec.Name}'", contract.Message);
                // The attribute is set on the op under test only (a grad op's forward keeps its defaults).
                var native = Assert.ThrowsAny<OnnxRuntimeException>(() => Run(Build(op, s => s == schema ? [(spec.Name, bad)] : [])));
                Assert.Contains($"{op}: attribute '{spec.Name}'", native.Message);
            }
        }

        Assert.True(probed > 0 || schema.Attributes.Count == 0, $"{op} has attributes but no rejected values to probe");
    }

    [Fact]
    public void EveryAttributeWithARangeNamesValuesOutsideIt()
    {
        foreach (var schema in AllSchemas())
        {
            foreach (var spec in schema.Attributes.Where(a => a.Check is not null))
            {
                Assert.True(spec.Rejected.Count > 0, $"{schema}.{spec.Name} has a range but no rejected values");
                Assert.Null(spec.Check!(spec.Default!));
            }
        }
    }

    private static IEnumerable<OpSchema> AllSchemas() => [.. AttentionOps.All, RoutedFfnOps.RoutedFfn, RoutedFfnOps.RoutedFfnGrad];

    // A graph of initializers and spt nodes with the op under test last; `attributes` gives each spt node's attributes by schema.
    private static Model Build(string op, Func<OpSchema, (string Name, object Value)[]> attributes)
    {
        var b = new GraphBuilder(17).Opset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        var rng = new Random(11);
        // Values in [-4, 4]: attention logits then reach past the default clamp, so a different clamp would show.
        Value Data(string name, params long[] dims) =>
            b.Initializer(name, [.. Enumerable.Range(0, (int)dims.Aggregate(1L, (x, y) => x * y)).Select(_ => (float)(rng.NextDouble() * 8 - 4))], dims);
        IReadOnlyList<Value> Node(OpSchema schema, Value?[] inputs, int outputs)
        {
            var values = b.Node(schema.Name, inputs, outputs, attributes(schema), CustomOpLibrary.Domain).Outputs;
            for (var i = 0; i < values.Count; i++)
            {
                values[i].Type = new TensorType(schema.Outputs[i].ElementTypes[0], null);
            }

            return values;
        }

        void Outputs(IReadOnlyList<Value> values)
        {
            foreach (var v in values)
            {
                b.Output(v);
            }
        }

        switch (op)
        {
            case "PQEncode" or "PQTopK" or "SparseAttention" or "SparseAttentionGrad":
                {
                    var q = Data("q", B, H, S, E);
                    var k = Data("k", B, H, S, E);
                    var v = Data("v", B, H, S, E);
                    var codebook = Data("codebook", M, C, Dc);
                    var codesQ = Node(AttentionOps.PQEncode, [q, codebook], 1)[0];
                    var codesK = Node(AttentionOps.PQEncode, [k, codebook], 1)[0];
                    if (op == "PQEncode")
                    {
                        Outputs([codesQ, codesK]);
                        break;
                    }

                    var indices = Node(AttentionOps.PQTopK, [codesQ, codesK], 1)[0];
                    if (op == "PQTopK")
                    {
                        Outputs([indices]);
                        break;
                    }

                    var yp = Node(AttentionOps.SparseAttention, [q, k, v, indices], 2);
                    if (op == "SparseAttention")
                    {
                        Outputs(yp);
                        break;
                    }

                    Outputs(Node(AttentionOps.SparseAttentionGrad, [Data("dy", B, H, S, E), q, k, v, indices, yp[1]], 3));
                    break;
                }
            case "PQLoss":
                Outputs(Node(AttentionOps.PQLoss, [Data("z", B, H, S, E), Data("codebook", M, C, Dc)], 1));
                break;
            case "PQLossGrad":
                Outputs(Node(AttentionOps.PQLossGrad, [Data("dloss"), Data("z", B, H, S, E), Data("codebook", M, C, Dc)], 2));
                break;
            case "RoutedFFN" or "RoutedFFNGrad":
                {
                    var inputs = new Value?[RoutedFfnOps.ForwardInputCount];
                    inputs[RoutedFfnOps.X] = Data("x", T, D);
                    inputs[RoutedFfnOps.W1] = Data("w1", D, F);
                    inputs[RoutedFfnOps.B1] = Data("b1", F);
                    inputs[RoutedFfnOps.W2] = Data("w2", F, D);
                    inputs[RoutedFfnOps.B2] = Data("b2", D);
                    inputs[RoutedFfnOps.Wr] = Data("wr", D, RoutedFfnOps.DefaultNBlocks);
                    inputs[RoutedFfnOps.Br] = Data("br", RoutedFfnOps.DefaultNBlocks);
                    var forward = Node(RoutedFfnOps.RoutedFfn, inputs[..(RoutedFfnOps.Br + 1)], 4);
                    if (op == "RoutedFFN")
                    {
                        Outputs(forward);
                        break;
                    }

                    var grad = new Value?[RoutedFfnOps.RoutedFfnGrad.Inputs.Count];
                    grad[RoutedFfnOps.GradDY] = Data("dy", T, D);
                    for (var i = 0; i < RoutedFfnOps.ForwardInputCount; i++)
                    {
                        grad[i + 1] = inputs[i];
                    }

                    grad[RoutedFfnOps.GradP] = forward[RoutedFfnOps.P];
                    grad[RoutedFfnOps.GradSel] = forward[RoutedFfnOps.Sel];
                    grad[RoutedFfnOps.GradU] = forward[RoutedFfnOps.U];
                    // dX, dWr, dbr: what frozen_base = 1 allows.
                    Outputs(Node(RoutedFfnOps.RoutedFfnGrad, grad, 3));
                    break;
                }
            default:
                throw new ArgumentException(op);
        }

        return b.Build();
    }

    // Every output's bytes.
    private static List<byte[]> Run(Model model)
    {
        using (model)
        {
            using var options = new SessionOptions { IntraOpNumThreads = 1 };
            NativeOpLibrary.Register(options);
            using var session = new InferenceSession(model.ToBytes(), options);
            using var run = new RunOptions();
            using var results = session.Run(run, [], [], session.OutputNames);
            return [.. results.Select(r => r.GetTensorMutableRawData().ToArray())];
        }
    }
}
