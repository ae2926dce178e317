using Spt.Ir;
using Xunit.Abstractions;

namespace Spt.Passes.Tests;

/// <summary>Every fixture: all attention and FFN blocks are found and rewritten, in normal and exact mode.</summary>
public class FixtureRecognitionTests(ITestOutputHelper output)
{
    public static TheoryData<string> Models => Fixtures.All();

    /// <summary>Default options: the codeword dim fits each head dim (llama: d 48, 4 heads -> E 12, d_c 6).</summary>
    internal static SptOptions OptionsFor(string file, bool exact) => new() { Exact = exact };

    [Theory]
    [MemberData(nameof(Models))]
    public void FindsAndRewritesEveryBlock(string file)
    {
        foreach (bool exact in new[] { false, true })
        {
            var entry = Fixtures.Entry(file);
            using var model = Fixtures.Load(file);
            var report = SptOptimizer.Optimize(model, OptionsFor(file, exact));
            foreach (var u in report.Unmatched)
                output.WriteLine($"unmatched {u.Kind} {u.OpType} '{u.Node}': {u.Reason}");
            foreach (var a in report.Attention)
                output.WriteLine($"attention {a.Layer} {a.CoreNode} rewritten={a.Rewritten} dense: {a.KeptDenseReason}");
            int found = entry.GetProperty("attention_blocks").GetInt32();
            int ffn = entry.GetProperty("ffn_blocks").GetInt32();
            // Blocks recognized but kept dense on purpose (a sliding window the kernels cannot take) carry their reason.
            int dense = 0;
            if (entry.TryGetProperty("attention_kept_dense", out var kept))
            {
                dense = kept.GetProperty("blocks").GetInt32();
                string reason = kept.GetProperty("reason").GetString()!;
                Assert.Equal(dense, report.Unmatched.Count(u => u.Kind == "attention" && u.Reason.Contains(reason, StringComparison.Ordinal)));
            }
            int attention = found - dense;
            Assert.Equal(found, report.AttentionFound);
            Assert.Equal(attention, report.AttentionRewritten);
            Assert.Equal(ffn, report.FfnFound);
            Assert.Equal(ffn, report.FfnRewritten);

            var ops = model.Graph.Nodes.GroupBy(n => (n.Domain, n.OpType)).ToDictionary(g => g.Key, g => g.Count());
            int Count(string domain, string op) => ops.GetValueOrDefault((domain, op));
            Assert.Equal(dense, Count("", "Softmax"));
            Assert.Equal(0, Count("spt.internal", "AttentionCore"));
            Assert.Equal(0, Count("com.microsoft", "Attention") + Count("com.microsoft", "MultiHeadAttention") + Count("", "Attention"));
            Assert.Equal(attention, Count("spt", "SparseAttention"));
            Assert.Equal(2 * attention, Count("spt", "PQEncode"));
            Assert.Equal(attention, Count("spt", "PQTopK"));
            Assert.Equal(ffn, Count("spt", "RoutedFFN"));
            Assert.Empty(GraphVerifier.Verify(model.Graph));

            long headDim = entry.GetProperty("d_model").GetInt64() / entry.GetProperty("heads").GetInt64();
            long fitted = Enumerable.Range(1, 8).Last(dc => headDim % dc == 0);
            Assert.All(report.Attention, a => Assert.Equal(fitted, a.CodewordDim));
            // Relative position biases and ALiBi reach SparseAttention as attn_bias; other fixtures have none.
            bool scoreBias = entry.TryGetProperty("score_bias", out _);
            Assert.All(model.Graph.Nodes.Where(n => n.OpType == "SparseAttention"),
                n => Assert.Equal(scoreBias, n.Inputs.Count > Spt.CustomOps.AttentionOps.AttnBias && n.Inputs[Spt.CustomOps.AttentionOps.AttnBias] is not null));
            if (entry.TryGetProperty("rotary", out _))
                Assert.All(report.Attention, a => Assert.True(a.Rotary, $"layer {a.Layer}: rotary not seen"));
            long window = entry.TryGetProperty("attention_window", out var w) ? w.GetInt64() : 0;
            Assert.All(report.Attention, a => Assert.Equal(window, a.Window));
            Assert.All(model.Graph.Nodes.Where(n => n.OpType is "PQTopK" or "SparseAttention"), n => Assert.Equal(window, n.GetInt("window", 0)));
            bool causal = entry.GetProperty("causal").GetBoolean();
            Assert.All(report.Attention, a => Assert.Equal(causal, a.Causal));
            string mask = entry.GetProperty("attention_mask").GetString()!;
            Assert.All(report.Attention, a => Assert.Equal(mask is "padding" or "both", a.KeyPaddingMask != null));
            if (mask is "padding" or "both")
                Assert.All(report.Attention, a => Assert.Equal("attention_mask", a.KeyPaddingMask));
            // Grouped-query / multi-query attention: the ops read K and V at their own head count, never a repeat.
            if (entry.TryGetProperty("kv_heads", out var kvHeads))
            {
                Assert.All(report.Attention, a => Assert.Equal(kvHeads.GetInt64(), a.KvHeads));
                foreach (var sa in model.Graph.Nodes.Where(n => n.OpType == "SparseAttention"))
                {
                    foreach (var kv in new[] { sa.Inputs[1]!, sa.Inputs[2]! })
                        Assert.False(kv.Producer is { OpType: "Reshape" } r && r.Inputs[0]?.Producer is { OpType: "Expand" }, $"{sa.Name} reads repeated K/V '{kv.Name}'");
                }
            }
            var act = entry.GetProperty("ffn_activation").GetString()!;
            string expected = act switch { "gelu_op" => "gelu", "fastgelu" => "gelu_tanh", _ => act };
            Assert.All(report.Ffn, f => Assert.Equal(expected, f.Activation));
        }
    }
}
