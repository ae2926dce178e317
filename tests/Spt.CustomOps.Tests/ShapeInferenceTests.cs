using Microsoft.ML.OnnxRuntime;
using Spt.Ir;

namespace Spt.CustomOps.Tests;

/// <summary>What ORT's graph-time shape inference sees downstream of the spt ops.</summary>
public class ShapeInferenceTests
{
    // PQTopK with keys_per_query = 1 over a symbolic key length: L is 1 at run time but unknown at graph time. A
    // Squeeze of that axis must load (an unknown dim must not be reported as the size -1) and run.
    [Fact]
    public void UnknownKeysPerQueryDoesNotBreakDownstreamInference()
    {
        var b = new GraphBuilder(opset: 17);
        b.Opset(CustomOpLibrary.Domain, CustomOpLibrary.OpsetVersion);
        var q = b.Input("codes_q", ElementType.Int32, 1, 2, 3, 4);
        var k = b.Input("codes_k", ElementType.Int32, 1, 2, "Sk", 4);
        var idx = b.DomainOp(CustomOpLibrary.Domain, "PQTopK", [q, k], ("keys_per_query", 1L), ("causal", 0L));
        var axes = b.Initializer("axes", new long[] { 3 }, 1);
        b.Output(b.Op("Squeeze", idx, axes), "best");
        using var model = b.Build();

        using var options = new SessionOptions();
        NativeOpLibrary.Register(options);
        using var session = new InferenceSession(model.ToBytes(), options);

        var codesQ = new int[1 * 2 * 3 * 4];
        var codesK = new int[1 * 2 * 5 * 4];
        for (var i = 0; i < codesK.Length; i++)
        {
            codesK[i] = i % 3;
        }

        using var qv = OrtValue.CreateTensorValueFromMemory(codesQ, [1, 2, 3, 4]);
        using var kv = OrtValue.CreateTensorValueFromMemory(codesK, [1, 2, 5, 4]);
        using var results = session.Run(new RunOptions(), ["codes_q", "codes_k"], [qv, kv], ["best"]);
        Assert.Equal([1L, 2, 3], results[0].GetTensorTypeAndShape().Shape);
        // All query codes are 0: per head, the key with the most zero codes wins, ties to the lower key.
        var expected = new List<int>();
        for (var h = 0; h < 2; h++)
        {
            var best = Enumerable.Range(0, 5)
                .Select(j => (Key: j, Matches: Enumerable.Range(0, 4).Count(m => codesK[((h * 5) + j) * 4 + m] == 0)))
                .OrderByDescending(c => c.Matches).ThenBy(c => c.Key).First().Key;
            expected.AddRange(Enumerable.Repeat(best, 3));
        }

        Assert.Equal(expected, results[0].GetTensorDataAsSpan<int>().ToArray());
        Assert.NotEqual(expected[0], expected[^1]);
    }
}
