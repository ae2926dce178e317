using System.Text.Json;
using System.Text.Json.Nodes;
using Spt.Passes.Recognition;

namespace Spt.Passes;

/// <summary>
/// What <see cref="SptOptimizer.Optimize"/> found and did: per layer the matched attention and FFN blocks (node
/// names, detected properties, what was rewritten, parameters added), every candidate that did not match and why,
/// what the passes could not reason about, per-pass timings and the model's opsets. <see cref="ToJson"/> gives
/// the machine-readable form (keys <c>attention.found</c>, <c>attention.rewritten</c>, <c>ffn.found</c>,
/// <c>ffn.rewritten</c>, <c>layers</c>, <c>unmatched</c>, <c>unsupported</c>, <c>timings</c>, <c>opsets</c>, and
/// <c>opset_upgrade</c> when an old-opset model was upgraded).
/// </summary>
public sealed class OptimizeReport
{
    internal OptimizeReport(RecognitionResults results, IReadOnlyDictionary<string, long> opsets, IReadOnlyList<PassTiming> passTimings,
        TimeSpan compileTime, IReadOnlyList<Diagnostic> diagnostics)
    {
        Attention = results.Attention;
        Ffn = results.Ffn;
        Unmatched = results.Unmatched;
        Unsupported = results.Unsupported;
        Opsets = opsets;
        PassTimings = passTimings;
        CompileTime = compileTime;
        Diagnostics = diagnostics;
    }

    /// <summary>Recognized attention blocks in layer order.</summary>
    public IReadOnlyList<AttentionBlockInfo> Attention { get; }

    /// <summary>Recognized FFN blocks in layer order.</summary>
    public IReadOnlyList<FfnBlockInfo> Ffn { get; }

    /// <summary>Candidates that did not match, with the reason.</summary>
    public IReadOnlyList<UnmatchedCandidate> Unmatched { get; }

    /// <summary>What the passes could not reason about (opset out of range, ops of unknown domains).</summary>
    public IReadOnlyList<string> Unsupported { get; }

    /// <summary>Opset imports of the input model (domain → version; the default domain as <c>ai.onnx</c>).</summary>
    public IReadOnlyDictionary<string, long> Opsets { get; }

    /// <summary>The default-domain opset the model was upgraded from (to <see cref="Canonicalization.OpsetUpgrade.TargetOpset"/>), when it was.</summary>
    public long? UpgradedFromOpset { get; init; }

    /// <summary>Per-pass timings of the pipeline run.</summary>
    public IReadOnlyList<PassTiming> PassTimings { get; }

    /// <summary>Time spent in the passes (weight I/O excluded).</summary>
    public TimeSpan CompileTime { get; }

    /// <summary>Diagnostics the passes reported.</summary>
    public IReadOnlyList<Diagnostic> Diagnostics { get; }

    /// <summary>Model load time, when the caller measured it.</summary>
    public TimeSpan? LoadTime { get; set; }

    /// <summary>Model save time, when the caller measured it.</summary>
    public TimeSpan? SaveTime { get; set; }

    /// <summary>
    /// Attention candidates found: every Softmax over scores (and every fused attention op) the compiler looked at,
    /// recognized or not, so <c>found − rewritten</c> is exactly the blocks kept dense plus the unmatched candidates
    /// of kind <c>attention</c>, each with its reason.
    /// </summary>
    public int AttentionFound => Attention.Count + AttentionMissed;

    /// <summary>Attention candidates that did not match (each in <see cref="Unmatched"/> with kind <c>attention</c>).</summary>
    public int AttentionMissed => Unmatched.Count(u => u.Kind == "attention");

    /// <summary>Attention blocks rewritten to sparse attention.</summary>
    public int AttentionRewritten => Attention.Count(a => a.Rewritten);

    /// <summary>FFN blocks found.</summary>
    public int FfnFound => Ffn.Count;

    /// <summary>FFN blocks rewritten to RoutedFFN.</summary>
    public int FfnRewritten => Ffn.Count(f => f.Rewritten);

    /// <summary>Whether the model has no recognizable transformer block at all.</summary>
    public bool NoTransformerBlocks => AttentionFound == 0 && FfnFound == 0;

    /// <summary>The report as JSON.</summary>
    public string ToJson()
    {
        var layers = new JsonArray();
        int count = Math.Max(Attention.Count, Ffn.Count);
        for (int i = 0; i < count; i++)
        {
            var layer = new JsonObject { ["index"] = i };
            if (i < Attention.Count)
            {
                var a = Attention[i];
                layer["attention"] = new JsonObject
                {
                    ["core"] = a.CoreNode,
                    ["source"] = a.Source,
                    ["matched_nodes"] = Strings(a.MatchedNodes),
                    ["q_projection"] = a.QProjection,
                    ["k_projection"] = a.KProjection,
                    ["v_projection"] = a.VProjection,
                    ["out_projection"] = a.OutProjection,
                    ["rotary"] = a.Rotary,
                    ["causal"] = a.Causal,
                    ["window"] = a.Window,
                    ["kv_heads"] = a.KvHeads,
                    ["key_padding_mask"] = a.KeyPaddingMask,
                    ["effective_scale"] = a.EffectiveScale,
                    ["op_scale"] = a.OpScale,
                    ["head_dim"] = a.HeadDim,
                    ["heads"] = a.Heads,
                    ["heads_folded_into_batch"] = a.HeadsFolded,
                    ["rewritten"] = a.Rewritten,
                    ["rewritten_nodes"] = Strings(a.RewrittenNodes),
                    ["parameters_added"] = a.ParametersAdded,
                    ["codeword_dim"] = a.CodewordDim,
                    ["kept_dense_reason"] = a.KeptDenseReason,
                };
            }
            if (i < Ffn.Count)
            {
                var f = Ffn[i];
                layer["ffn"] = new JsonObject
                {
                    ["activation"] = f.Activation,
                    ["fc1"] = f.Fc1,
                    ["up"] = f.Up,
                    ["fc2"] = f.Fc2,
                    ["d_model"] = f.DModel,
                    ["d_ff"] = f.DFf,
                    ["bias1"] = f.HasBias1,
                    ["bias2"] = f.HasBias2,
                    ["matched_nodes"] = Strings(f.MatchedNodes),
                    ["rewritten"] = f.Rewritten,
                    ["rewritten_node"] = f.RewrittenNode,
                    ["parameters_added"] = f.ParametersAdded,
                    ["kept_dense_reason"] = f.KeptDenseReason,
                };
            }
            layers.Add(layer);
        }
        var timings = new JsonObject { ["compile_ms"] = CompileTime.TotalMilliseconds };
        if (LoadTime is { } load)
            timings["load_ms"] = load.TotalMilliseconds;
        if (SaveTime is { } save)
            timings["save_ms"] = save.TotalMilliseconds;
        var passes = new JsonObject();
        foreach (var t in PassTimings)
            passes[t.Pass] = new JsonObject { ["ms"] = t.Elapsed.TotalMilliseconds, ["runs"] = t.Runs, ["changes"] = t.Changes };
        timings["passes"] = passes;
        var opsets = new JsonObject();
        foreach (var (domain, version) in Opsets)
            opsets[domain] = version;
        var root = new JsonObject
        {
            ["attention"] = new JsonObject { ["found"] = AttentionFound, ["rewritten"] = AttentionRewritten, ["unmatched"] = AttentionMissed },
            ["ffn"] = new JsonObject { ["found"] = FfnFound, ["rewritten"] = FfnRewritten },
            ["layers"] = layers,
            ["unmatched"] = new JsonArray([.. Unmatched.Select(u => (JsonNode)new JsonObject
            {
                ["kind"] = u.Kind,
                ["node"] = u.Node,
                ["op_type"] = u.OpType,
                ["reason"] = u.Reason,
            })]),
            ["unsupported"] = Strings(Unsupported),
            ["timings"] = timings,
            ["opsets"] = opsets,
        };
        if (UpgradedFromOpset is { } from)
            root["opset_upgrade"] = new JsonObject { ["from"] = from, ["to"] = Canonicalization.OpsetUpgrade.TargetOpset };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static JsonArray Strings(IEnumerable<string> items) => new([.. items.Select(s => (JsonNode)JsonValue.Create(s))]);
}
