using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Cli.Tests.Fuzz;

/// <summary>
/// A seeded mutator of ONNX model files: byte-level damage (bit flips, truncation, overwritten or inserted spans) and
/// field-level protobuf mutations (op types, inputs, attribute kinds and values, initializer dims, types and data,
/// external data locations, value types, opsets, ir_version). The same seed gives the same bytes.
/// </summary>
internal static class ModelMutator
{
    private static readonly string[] OpTypes = ["Softmax", "Transpose", "MatMul", "Gemm", "Reshape", "LayerNormalization", "Gather", "Concat", "Cast", "If", "NoSuchOp", ""];
    private static readonly string[] Domains = ["", "ai.onnx", "com.microsoft", "spt", "x.y"];
    private static readonly string[] Locations = ["../x.bin", "/etc/hostname", "missing.bin", "", "sub/../../y", "."];
    private static readonly long[] Ints = [-1, 0, 1, 2, 3, 99, int.MaxValue, -(1L << 62), long.MaxValue, long.MinValue];

    /// <summary>What the mutation did, for messages.</summary>
    public sealed record Result(byte[] Bytes, string Description);

    /// <summary>Mutates <paramref name="model"/> (serialized) with seed <paramref name="seed"/>: a third byte-level, two thirds field-level.</summary>
    public static Result Mutate(byte[] model, int seed)
    {
        var rng = new Random(seed);
        return rng.Next(3) == 0 ? MutateBytes(model, rng) : MutateFields(model, rng);
    }

    private static Result MutateBytes(byte[] model, Random rng)
    {
        var bytes = (byte[])model.Clone();
        switch (rng.Next(4))
        {
            case 0:
                int flips = 1 + rng.Next(8);
                for (int i = 0; i < flips; i++)
                {
                    bytes[rng.Next(bytes.Length)] ^= (byte)(1 << rng.Next(8));
                }

                return new(bytes, $"{flips} bit flips");
            case 1:
                int keep = rng.Next(bytes.Length);
                return new(bytes[..keep], $"truncated to {keep} of {bytes.Length} bytes");
            case 2:
                int at = rng.Next(bytes.Length), length = Math.Min(bytes.Length - at, 1 + rng.Next(64));
                rng.NextBytes(bytes.AsSpan(at, length));
                return new(bytes, $"{length} random bytes at {at}");
            default:
                int where = rng.Next(bytes.Length);
                var insert = new byte[1 + rng.Next(16)];
                rng.NextBytes(insert);
                return new([.. bytes[..where], .. insert, .. bytes[where..]], $"{insert.Length} bytes inserted at {where}");
        }
    }

    private static Result MutateFields(byte[] model, Random rng)
    {
        var proto = ModelProto.Parser.ParseFrom(model);
        int count = 1 + rng.Next(3);
        var done = new List<string>();
        for (int i = 0; i < count; i++)
        {
            done.Add(MutateOnce(proto, rng));
        }

        return new(proto.ToByteArray(), string.Join("; ", done));
    }

    private static T Pick<T>(Random rng, IReadOnlyList<T> items) => items[rng.Next(items.Count)];

    private static string MutateOnce(ModelProto p, Random rng)
    {
        var g = p.Graph;
        var node = g.Node.Count > 0 ? Pick(rng, g.Node) : null;
        var init = g.Initializer.Count > 0 ? Pick(rng, g.Initializer) : null;
        var attr = node is { Attribute.Count: > 0 } ? Pick(rng, node.Attribute) : null;
        switch (rng.Next(22))
        {
            case 0 when node is not null:
                node.OpType = Pick(rng, OpTypes);
                return $"node '{node.Name}' op_type -> '{node.OpType}'";
            case 1 when node is not null:
                g.Node.Remove(node);
                return $"node '{node.Name}' removed";
            case 2 when node is not null:
                g.Node.Insert(rng.Next(g.Node.Count), node.Clone());
                return $"node '{node.Name}' duplicated";
            case 3 when node is { Input.Count: > 0 }:
                int k = rng.Next(node.Input.Count);
                node.Input[k] = rng.Next(3) switch { 0 => "ghost", 1 => "", _ => Pick(rng, g.Node).Output.FirstOrDefault() ?? "x" };
                return $"node '{node.Name}' input {k} -> '{node.Input[k]}'";
            case 4 when node is not null:
                if (node.Input.Count > 0 && rng.Next(2) == 0)
                {
                    node.Input.RemoveAt(node.Input.Count - 1);
                    return $"node '{node.Name}' last input dropped";
                }

                node.Input.Add(g.Input.Count > 0 ? g.Input[0].Name : "x");
                return $"node '{node.Name}' extra input";
            case 5 when attr is not null:
                attr.Type = (AttributeProto.Types.AttributeType)rng.Next(15);
                return $"attribute '{attr.Name}' type -> {attr.Type}";
            case 6 when attr is not null:
                attr.I = Pick(rng, Ints);
                return $"attribute '{attr.Name}' i -> {attr.I}";
            case 7 when attr is not null:
                var ints = Enumerable.Range(0, rng.Next(6)).Select(_ => (long)rng.Next(-3, 7)).ToArray();
                attr.Ints.Clear();
                attr.Ints.AddRange(ints);
                return $"attribute '{attr.Name}' ints -> [{string.Join(",", ints)}]";
            case 8 when attr is not null:
                node!.Attribute.Remove(attr);
                return $"attribute '{attr.Name}' removed";
            case 9 when init is { Dims.Count: > 0 }:
                int d = rng.Next(init.Dims.Count);
                init.Dims[d] = Pick(rng, Ints);
                return $"initializer '{init.Name}' dim {d} -> {init.Dims[d]}";
            case 10 when init is { HasRawData: true }:
                int keep = rng.Next(init.RawData.Length + 1);
                init.RawData = ByteString.CopyFrom(init.RawData.Span[..keep]);
                return $"initializer '{init.Name}' raw_data cut to {keep}";
            case 11 when init is not null:
                init.DataType = rng.Next(26);
                return $"initializer '{init.Name}' data_type -> {init.DataType}";
            case 12 when init is not null:
                init.DataLocation = TensorProto.Types.DataLocation.External;
                init.ExternalData.Clear();
                init.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = Pick(rng, Locations) });
                if (rng.Next(2) == 0)
                {
                    init.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = Pick(rng, Ints).ToString(System.Globalization.CultureInfo.InvariantCulture) });
                }

                return $"initializer '{init.Name}' external at '{init.ExternalData[0].Value}'";
            case 13 when g.Input.Count > 0 && g.Input[0].Type?.TensorType is { } tt:
                tt.ElemType = rng.Next(26);
                return $"input elem_type -> {tt.ElemType}";
            case 14 when g.Input.Count > 0 && g.Input[0].Type?.TensorType?.Shape is { Dim.Count: > 0 } shape:
                var dim = Pick(rng, shape.Dim);
                dim.DimValue = Pick(rng, Ints);
                return $"input dim -> {dim.DimValue}";
            case 15 when g.Input.Count > 0:
                g.Input.RemoveAt(rng.Next(g.Input.Count));
                return "graph input removed";
            case 16 when g.Output.Count > 0:
                g.Output[0].Name = rng.Next(2) == 0 ? "" : "nowhere";
                return $"graph output -> '{g.Output[0].Name}'";
            case 17 when p.OpsetImport.Count > 0:
                if (rng.Next(3) == 0)
                {
                    p.OpsetImport.Add(p.OpsetImport[0].Clone());
                    return "opset import duplicated";
                }

                p.OpsetImport[0].Version = Pick(rng, Ints);
                return $"opset -> {p.OpsetImport[0].Version}";
            case 18:
                p.IrVersion = Pick(rng, Ints);
                return $"ir_version -> {p.IrVersion}";
            case 19 when node is not null:
                node.Domain = Pick(rng, Domains);
                return $"node '{node.Name}' domain -> '{node.Domain}'";
            case 20 when init is not null:
                init.Name = rng.Next(2) == 0 ? "" : init.Name + "_renamed";
                return $"initializer renamed to '{init.Name}'";
            case 21 when node is not null:
                node.Attribute.Add(new AttributeProto
                {
                    Name = Pick(rng, new[] { "axis", "perm", "epsilon", "then_branch", "to" }),
                    Type = (AttributeProto.Types.AttributeType)rng.Next(15),
                    I = Pick(rng, Ints),
                    G = rng.Next(3) == 0 ? new GraphProto { Name = "sub", Node = { new NodeProto { OpType = Pick(rng, OpTypes), Input = { "ghost" }, Output = { "o" } } } } : null,
                });
                return $"node '{node.Name}' extra attribute";
            default:
                p.Graph.Node.Add(new NodeProto { OpType = Pick(rng, OpTypes), Name = "added", Input = { g.Input.Count > 0 ? g.Input[0].Name : "x" }, Output = { "added_out" } });
                return "node added";
        }
    }
}
