using Spt.Ir;
using Spt.Passes.Lora;
using Spt.Passes.Training;
using Spt.Runtime;

namespace Spt.Passes.Tests.Training;

/// <summary>The added sequence head: structure, initialization, and its numbers against pooling done by hand.</summary>
public class SequenceHeadPassTests
{
    private const int Width = 6;

    // h = Tanh(Gather(E, ids)) [B, S, 6], with an attention_mask input [B, S] (unused by the body, read by pooling).
    private static Model Encoder(bool withMask = true)
    {
        var b = new GraphBuilder(17);
        var ids = b.Input("input_ids", ElementType.Int64, "batch", "sequence");
        if (withMask)
            b.Input("attention_mask", ElementType.Int64, "batch", "sequence");
        var rng = new Random(5);
        var table = b.Initializer("embed.weight", [.. Enumerable.Range(0, 10 * Width).Select(_ => (float)(rng.NextDouble() * 2 - 1))], 10, Width);
        var h = b.Op("Tanh", b.Op("Gather", [table, ids]));
        b.Output(h, "last_hidden_state");
        return b.Build();
    }

    private static readonly long[] Ids = [1, 2, 3, 4, 5, 6, 7, 8];      // [2, 4]
    private static readonly long[] Mask = [1, 1, 1, 0, 1, 1, 0, 0];     // lengths 3 and 2

    private static (float[] Hidden, float[] Logits) Run(Model model, bool withMask = true)
    {
        var inputs = new Dictionary<string, TensorData> { ["input_ids"] = TensorData.FromLongs(Ids, [2, 4]) };
        if (withMask)
            inputs["attention_mask"] = TensorData.FromLongs(Mask, [2, 4]);
        var outputs = TestSupport.Run(Model.FromBytes(model.ToBytes()), inputs);
        Assert.Equal("logits", outputs[0].Key);
        Assert.Equal([2L, 3L], outputs[0].Value.Shape);
        return (outputs.Single(o => o.Key == "last_hidden_state").Value.Floats!, outputs[0].Value.Floats!);
    }

    [Theory]
    [InlineData(Pooling.Cls, true)]
    [InlineData(Pooling.Mean, true)]
    [InlineData(Pooling.Last, true)]
    [InlineData(Pooling.Mean, false)]
    [InlineData(Pooling.Last, false)]
    public void Logits_are_the_pooled_hidden_states_times_the_head(Pooling pooling, bool withMask)
    {
        var model = Encoder(withMask);
        var pass = new SequenceHeadPass(new SequenceHeadOptions { Outputs = 3, Pooling = pooling, Seed = 1 });
        Assert.True(pass.Run(model, new PassContext()));
        Assert.Empty(GraphVerifier.Verify(model.Graph));
        // Give the bias a value so that it is checked too.
        var bias = model.Graph.FindValue(pass.Added!.Value.Bias)!;
        model.Graph.Edit().SetInitializer(bias, Tensor.Create("b", [0.5f, -1f, 2f], 3));
        var w = model.Graph.FindValue(pass.Added!.Value.Weight)!.Initializer!.ToFloatArray(); // [6, 3]
        var (h, logits) = Run(model, withMask);
        for (var b = 0; b < 2; b++)
        {
            var pooled = new double[Width];
            int[] positions = pooling switch
            {
                Pooling.Cls => [0],
                Pooling.Mean => withMask ? [.. Enumerable.Range(0, 4).Where(t => Mask[b * 4 + t] == 1)] : [0, 1, 2, 3],
                _ => withMask ? [Enumerable.Range(0, 4).Count(t => Mask[b * 4 + t] == 1) - 1] : [3],
            };
            foreach (var t in positions)
                for (var d = 0; d < Width; d++)
                    pooled[d] += h[(b * 4 + t) * Width + d] / positions.Length;
            for (var c = 0; c < 3; c++)
            {
                var expected = new[] { 0.5, -1, 2 }[c] + Enumerable.Range(0, Width).Sum(d => pooled[d] * w[d * 3 + c]);
                Assert.Equal(expected, logits[b * 3 + c], 5);
            }
        }
    }

    [Fact]
    public void Head_is_initialized_like_transformers_and_listed_as_trainable()
    {
        var model = Encoder();
        model.Metadata.Add(new(LoraPass.TrainableKey, "x_lora_A,x_lora_B"));
        var pass = new SequenceHeadPass(new SequenceHeadOptions { Outputs = 200, Seed = 2 });
        pass.Run(model, new PassContext());
        var w = model.Graph.FindValue("head.weight")!.Initializer!;
        Assert.Equal([(long)Width, 200L], w.Dims);
        var values = w.ToFloatArray();
        var mean = values.Average();
        var std = Math.Sqrt(values.Select(v => (v - mean) * (v - mean)).Average());
        Assert.InRange(mean, -0.004, 0.004);     // 1200 draws of N(0, 0.02²): the mean's s.e. is 0.0006
        Assert.InRange(std, 0.018, 0.022);
        Assert.All(model.Graph.FindValue("head.bias")!.Initializer!.ToFloatArray(), v => Assert.Equal(0f, v));
        Assert.Equal(["x_lora_A", "x_lora_B", "head.weight", "head.bias"], LoraPass.ReadList(model, LoraPass.TrainableKey));
        Assert.Equal(["logits", "last_hidden_state"], model.Graph.Outputs.Select(o => o.Name));
        Assert.Contains(model.Metadata, kv => kv.Key == SequenceHeadPass.HeadKey && kv.Value == "pooling=cls;outputs=200;hidden=last_hidden_state");
        // Different seeds draw different weights; the same seed the same.
        var again = Encoder();
        new SequenceHeadPass(new SequenceHeadOptions { Outputs = 200, Seed = 2 }).Run(again, new PassContext());
        Assert.Equal(values, again.Graph.FindValue("head.weight")!.Initializer!.ToFloatArray());
    }

    [Fact]
    public void A_model_without_hidden_states_is_refused_naming_its_outputs()
    {
        var b = new GraphBuilder(17);
        var x = b.Input("x", ElementType.Float, "batch", 4);
        b.Output(b.Op("Relu", x), "scores");
        var e = Assert.Throws<OnnxModelException>(() => new SequenceHeadPass().Run(b.Build(), new PassContext()));
        Assert.Contains("outputs: scores", e.Message);
        Assert.Contains("no output 'nope'", Assert.Throws<OnnxModelException>(() =>
            new SequenceHeadPass(new SequenceHeadOptions { HiddenOutput = "nope" }).Run(Encoder(), new PassContext())).Message);
    }
}
