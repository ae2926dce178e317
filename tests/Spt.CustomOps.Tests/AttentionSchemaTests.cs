using Spt.Ir;
namespace Spt.CustomOps.Tests;

/// <summary>The attention-family schemas: shape rules, defaults and attribute checks.</summary>
public class AttentionSchemaTests
{
    private static TensorType T(ElementType type, params long[] dims) => new(type, dims.Select(d => new Dim(d)).ToArray());

    private static readonly ElementType F = ElementType.Float;
    private static readonly ElementType I = ElementType.Int32;

    [Fact]
    public void Family_HasSixOpsInTheSptDomain()
    {
        Assert.Equal(
            ["PQEncode", "PQTopK", "SparseAttention", "SparseAttentionGrad", "PQLoss", "PQLossGrad"],
            AttentionOps.All.Select(s => s.Name));
        Assert.All(AttentionOps.All, s => Assert.Equal("spt", s.Domain));
    }

    [Fact]
    public void PQEncode_ReplacesTheLastDimByM_AndChecksE()
    {
        var codes = AttentionOps.PQEncode.InferTypes([T(F, 2, 12, 512, 64), T(F, 8, 16, 8)]);
        Assert.Equal("i32[2,12,512,8]", codes[0]!.ToString());
        var error = Assert.Throws<OpContractException>(() => AttentionOps.PQEncode.InferTypes([T(F, 2, 60), T(F, 8, 16, 8)]));
        Assert.Contains("E = 60, expected M * dc = 8 * 8 = 64", error.Message);
        Assert.Throws<OpContractException>(() =>
            AttentionOps.PQEncode.InferTypes([T(F, 2, 64), T(F, 8, 16, 8)], new Dictionary<string, object> { ["metric"] = "l2" }));
    }

    [Fact]
    public void PQTopK_DefaultsToSOver8KeysAndValidatesAttributes()
    {
        var out1 = AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 512, 8), T(I, 1, 12, 512, 8)]);
        Assert.Equal("i32[1,12,512,64]", out1[0]!.ToString());
        var out2 = AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 5, 8), T(I, 1, 12, 9, 8), T(ElementType.Bool, 1, 9)],
            new Dictionary<string, object> { ["keys_per_query"] = 20L });
        Assert.Equal("i32[1,12,5,9]", out2[0]!.ToString());  // clamped to Sk
        Assert.Throws<OpContractException>(() => AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 5, 8), T(I, 1, 12, 9, 4)]));
        Assert.Throws<OpContractException>(() => AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 5, 8), T(I, 1, 12, 9, 8), T(F, 1, 8)]));
        var floor = new Dictionary<string, object> { ["min_keys_per_query"] = 16L };
        Assert.Equal("i32[1,12,20,16]", AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 20, 8), T(I, 1, 12, 20, 8)], floor)[0]!.ToString());  // ceil(20 / 8) = 3 raised to the floor
        Assert.Equal("i32[1,12,9,9]", AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 9, 8), T(I, 1, 12, 9, 8)], floor)[0]!.ToString());  // the floor is clamped to Sk
        Assert.Equal("i32[1,12,512,64]", AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 512, 8), T(I, 1, 12, 512, 8)], floor)[0]!.ToString());  // long inputs keep S/8
        Assert.Equal("i32[1,12,20,4]", AttentionOps.PQTopK.InferTypes([T(I, 1, 12, 20, 8), T(I, 1, 12, 20, 8)],
            new Dictionary<string, object> { ["min_keys_per_query"] = 16L, ["keys_per_query"] = 4L })[0]!.ToString());  // a count is not floored
        foreach (var (name, value) in new (string, object)[] { ("mode", "bucketed_ref"), ("keys_per_query", -1L), ("keys_ratio", 0f), ("causal", 2L), ("min_keys_per_query", -1L) })
        {
            var error = Assert.Throws<OpContractException>(() =>
                AttentionOps.PQTopK.InferTypes([T(I, 1, 1, 4, 8), T(I, 1, 1, 4, 8)], new Dictionary<string, object> { [name] = value }));
            Assert.Contains($"attribute '{name}'", error.Message);
        }
    }

    [Fact]
    public void SparseAttention_OutputsYAndP_AndRejectsMismatches()
    {
        var outputs = AttentionOps.SparseAttention.InferTypes(
            [T(F, 2, 4, 10, 16), T(F, 2, 4, 12, 16), T(F, 2, 4, 12, 8), T(I, 2, 4, 10, 3), T(ElementType.Bool, 2, 12)]);
        Assert.Equal("f32[2,4,10,8]", outputs[0]!.ToString());
        Assert.Equal("f32[2,4,10,3]", outputs[1]!.ToString());
        var error = Assert.Throws<OpContractException>(() => AttentionOps.SparseAttention.InferTypes(
            [T(F, 2, 4, 10, 16), T(F, 2, 4, 12, 12), T(F, 2, 4, 12, 8), T(I, 2, 4, 10, 3)]));
        Assert.Contains("spt::SparseAttention: input 'K' has shape [2, 4, 12, 12], expected [B, Hkv, Sk, E]", error.Message);
        Assert.Throws<OpContractException>(() => AttentionOps.SparseAttention.InferTypes(
            [T(F, 2, 4, 10, 16), T(F, 2, 4, 12, 16), T(F, 2, 4, 12, 8), T(I, 2, 4, 10, 3), T(F, 2, 10)]));
        Assert.Throws<OpContractException>(() => AttentionOps.SparseAttention.InferTypes(
            [T(ElementType.Float16, 2, 4, 10, 16), T(F, 2, 4, 12, 16), T(F, 2, 4, 12, 8), T(I, 2, 4, 10, 3)]));
        Assert.Throws<OpContractException>(() => AttentionOps.SparseAttention.InferTypes(
            [T(F, 2, 4, 10, 16), T(F, 2, 4, 12, 16), T(F, 2, 4, 12, 8), T(I, 2, 4, 10, 3)],
            new Dictionary<string, object> { ["clamp"] = -1f }));
        Assert.Equal(10f, AttentionOps.SparseAttention.ResolveAttributes(null)["clamp"]);
        Assert.Equal(1L, AttentionOps.SparseAttention.ResolveAttributes(null)["causal"]);
        Assert.Equal(0f, AttentionOps.SparseAttention.ResolveAttributes(null)["scale"]);
    }

    [Fact]
    public void GradientOps_MirrorTheirInputs()
    {
        var grads = AttentionOps.SparseAttentionGrad.InferTypes(
            [T(F, 1, 2, 5, 3), T(F, 1, 2, 5, 4), T(F, 1, 2, 6, 4), T(F, 1, 2, 6, 3), T(I, 1, 2, 5, 2), T(F, 1, 2, 5, 2)]);
        Assert.Equal(["f32[1,2,5,4]", "f32[1,2,6,4]", "f32[1,2,6,3]"], grads.Select(g => g!.ToString()));
        Assert.Throws<OpContractException>(() => AttentionOps.SparseAttentionGrad.InferTypes(
            [T(F, 1, 2, 5, 3), T(F, 1, 2, 5, 4), T(F, 1, 2, 6, 4), T(F, 1, 2, 6, 3), T(I, 1, 2, 5, 2), T(F, 1, 2, 5, 3)]));
        var pq = AttentionOps.PQLossGrad.InferTypes([T(F), T(F, 3, 7, 16), T(F, 2, 4, 8)]);
        Assert.Equal(["f32[3,7,16]", "f32[2,4,8]"], pq.Select(g => g!.ToString()));
        Assert.Equal("f32[]", AttentionOps.PQLoss.InferTypes([T(F, 3, 7, 16), T(F, 2, 4, 8)])[0]!.ToString());
        Assert.Throws<OpContractException>(() => AttentionOps.PQLossGrad.InferTypes([T(F), T(F, 3, 7, 16), T(F, 2, 4, 8)],
            new Dictionary<string, object> { ["detach_inputs"] = 3L }));
    }
}
