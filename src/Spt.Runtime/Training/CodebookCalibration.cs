using Spt.CustomOps;
using Spt.Ir;
using Spt.Passes.Training;
using Spt.Runtime.Data;

namespace Spt.Runtime.Training;

/// <summary>What <see cref="CodebookCalibration"/> did to one codebook.</summary>
/// <param name="Codebook">The codebook initializer.</param>
/// <param name="Rows">Query and key rows it was fitted to (real tokens only when a key padding mask is known).</param>
/// <param name="MeanDistanceBefore">Mean L1 distance of a row chunk to its nearest codeword with the old codebook.</param>
/// <param name="MeanDistanceAfter">The same with the fitted codebook.</param>
public sealed record CodebookFit(string Codebook, long Rows, double MeanDistanceBefore, double MeanDistanceAfter);

/// <summary>
/// Fits the product-quantizer codebooks of a rewritten model to the queries and keys the pretrained weights
/// produce, instead of leaving them N(0, 1). PQTopK keeps the keys whose codes agree with the query's in the most
/// subspaces; with random codewords far from the data the codes say little about q·k, and the kept keys are close
/// to arbitrary. Per codebook [M, C, dc] (one per attention layer, shared by Q and K) and subspace m, the rows'
/// m-th chunks are clustered into C codewords by k-medians under the L1 distance PQEncode assigns with
/// (k-means++ seeding, median update), so the codes start out meaningful and the PQ loss refines them during training.
/// </summary>
public static class CodebookCalibration
{
    /// <summary>Most chunks per subspace used for one fit (a seeded sample beyond that).</summary>
    public const int MaxRows = 16_384;

    /// <summary>
    /// Runs <paramref name="model"/> on <paramref name="batches"/> (inputs by name), collects the Q and K rows every
    /// spt::PQEncode encodes, fits each codebook to them and writes the fitted values into the model's codebook
    /// initializers. Rows of padded positions (key padding mask 0, when PQTopK has one) are left out. Returns one
    /// entry per codebook; a model without PQEncode is left unchanged and gives none.
    /// </summary>
    public static IReadOnlyList<CodebookFit> Calibrate(Model model, IEnumerable<IReadOnlyDictionary<string, TensorData>> batches,
        int iterations = 15, int seed = 0, int threads = 1)
    {
        ArgumentNullException.ThrowIfNull(model);
        var encodes = model.Graph.Nodes.Where(n => n.Domain == CustomOpLibrary.Domain && n.OpType == "PQEncode").ToList();
        var groups = encodes.Where(n => n.Inputs[1] is { IsInitializer: true }).GroupBy(n => n.Inputs[1]!).ToList();
        if (groups.Count == 0)
            return [];

        // A probe copy that also outputs every encoded tensor and every PQTopK key padding mask.
        using var probe = Model.FromBytes(model.ToBytes());
        var probeEditor = probe.Graph.Edit();
        // The copy lists the nodes in the same order (names may be empty or repeat).
        var probeNodes = model.Graph.Nodes.Zip(probe.Graph.Nodes).ToDictionary(p => p.First, p => p.Second);
        var extra = new HashSet<string>(probe.Graph.Outputs.Select(o => o.Name));
        void Expose(Value? v)
        {
            if (v is not null && !v.IsInitializer && extra.Add(v.Name))
                probeEditor.AddOutput(v);
        }
        // The mask that goes with an encoded tensor: the key padding mask of the PQTopK its codes feed.
        var maskOf = new Dictionary<string, string?>();
        foreach (var n in encodes)
        {
            var copy = probeNodes[n];
            Expose(copy.Inputs[0]);
            var topk = copy.Outputs[0].Uses.Select(u => u.Node).FirstOrDefault(u => u.Domain == CustomOpLibrary.Domain && u.OpType == "PQTopK");
            var mask = topk is not null && topk.Inputs.Count > 2 ? topk.Inputs[2] : null;
            Expose(mask);
            maskOf[n.Inputs[0]!.Name] = mask?.Name;
        }

        var rows = groups.ToDictionary(g => g.Key, _ => new List<float[]>());
        using (var runner = new OrtModelRunner(probe, new RunnerOptions { IntraOpThreads = threads }))
        {
            foreach (var batch in batches)
            {
                var outputs = runner.Run(batch).ToDictionary(p => p.Key, p => p.Value);
                foreach (var g in groups)
                {
                    foreach (var n in g)
                    {
                        var z = outputs[n.Inputs[0]!.Name];
                        var mask = maskOf[n.Inputs[0]!.Name] is { } m ? outputs[m] : null;
                        rows[g.Key].Add(RealRows(z, mask));
                    }
                }
            }
        }

        var fits = new List<CodebookFit>();
        var editor = model.Graph.Edit();
        foreach (var g in groups)
        {
            var book = g.Key.Initializer!;
            var dims = book.Dims;
            int m = (int)dims[0], c = (int)dims[1], dc = (int)dims[2], e = m * dc;
            var data = rows[g.Key].SelectMany(r => r).ToArray();
            long n = data.Length / e;
            if (n == 0)
                continue;
            var old = book.ToFloatArray();
            var fitted = new float[old.Length];
            double before = 0, after = 0;
            var rng = new Random(seed * 7919 + fits.Count);
            for (int sub = 0; sub < m; sub++)
            {
                var points = Subspace(data, n, e, sub, dc, rng);
                var codewords = Fit(points, dc, c, iterations, rng);
                Array.Copy(codewords, 0, fitted, sub * c * dc, c * dc);
                before += MeanNearest(points, dc, old.AsSpan(sub * c * dc, c * dc));
                after += MeanNearest(points, dc, codewords);
            }
            editor.SetInitializer(g.Key, Tensor.Create(g.Key.Name, fitted, dims.ToArray()));
            fits.Add(new CodebookFit(g.Key.Name, n, before / m, after / m));
        }
        return fits;
    }

    /// <summary>
    /// <see cref="Calibrate(Model, IEnumerable{IReadOnlyDictionary{string, TensorData}}, int, int, int)"/> on the first
    /// <paramref name="batches"/> batches of <paramref name="batchSize"/> examples of <paramref name="data"/>, fed by the
    /// roles the training compiler gives the model's inputs (token ids, attention mask, token types, positions; each
    /// batch padded to its longest example). A model with an input of another role (a decoder's inputs) is not
    /// calibrated: returns null.
    /// </summary>
    public static IReadOnlyList<CodebookFit>? Calibrate(Model model, Dataset data, int batches = 4, int batchSize = 16, int seed = 0, int threads = 1)
    {
        ArgumentNullException.ThrowIfNull(data);
        var inputs = TrainingCompiler.DataInputsOf(model);
        if (inputs.Any(i => i.Role is not ("input_ids" or "attention_mask" or "token_type_ids" or "position_ids")))
            return null;
        return Calibrate(model, Batches(inputs, data, batches, batchSize), seed: seed, threads: threads);
    }

    private static IEnumerable<IReadOnlyDictionary<string, TensorData>> Batches(IReadOnlyList<DataInput> inputs, Dataset data, int batches, int batchSize)
    {
        for (int start = 0, made = 0; start < data.Count && made < batches; start += batchSize, made++)
        {
            var indices = Enumerable.Range(start, Math.Min(batchSize, data.Count - start)).ToArray();
            int b = indices.Length, s = data.BatchLength(indices);
            var feed = new Dictionary<string, TensorData>();
            foreach (var input in inputs)
            {
                var values = new long[b * s];
                for (int r = 0; r < b; r++)
                {
                    var e = data.Examples[indices[r]];
                    int n = Math.Min(s, e.InputIds.Length);
                    for (int t = 0; t < s; t++)
                    {
                        values[r * s + t] = input.Role switch
                        {
                            "input_ids" => t < n ? e.InputIds[t] : data.PadId,
                            "attention_mask" => t < n ? e.AttentionMask[t] : 0,
                            "token_type_ids" => t < n && e.TokenTypeIds is { } types ? types[t] : 0,
                            _ => t, // position_ids
                        };
                    }
                }
                feed[input.Name] = input.ElementType.IsFloatingPoint()
                    ? TensorData.FromFloats([.. values.Select(v => (float)v)], [b, s], input.ElementType)
                    : TensorData.FromLongs(values, [b, s], input.ElementType);
            }
            yield return feed;
        }
    }

    // Rows of z [..., S, E] whose position is not padded: a mask [B, S] applies to z [B, H, S, E] (any H).
    private static float[] RealRows(TensorData z, TensorData? mask)
    {
        var f = z.Floats ?? throw new InvalidOperationException("PQEncode input is not floating point");
        if (mask is null || z.Shape.Length != 4 || mask.Shape.Length != 2 || mask.Shape[0] != z.Shape[0] || mask.Shape[1] != z.Shape[2])
            return f;
        long b = z.Shape[0], h = z.Shape[1], s = z.Shape[2], e = z.Shape[3];
        var kept = new List<float>();
        for (long bi = 0; bi < b; bi++)
        {
            for (long hi = 0; hi < h; hi++)
            {
                for (long si = 0; si < s; si++)
                {
                    if (mask[(int)(bi * s + si)] == 0)
                        continue;
                    long at = ((bi * h + hi) * s + si) * e;
                    for (long k = 0; k < e; k++)
                        kept.Add(f[at + k]);
                }
            }
        }
        return [.. kept];
    }

    // The sub-th dc-wide chunk of every row (at most MaxRows of them, a seeded sample), as [n, dc].
    private static float[] Subspace(float[] data, long rows, int e, int sub, int dc, Random rng)
    {
        var order = Enumerable.Range(0, (int)rows).ToArray();
        if (rows > MaxRows)
        {
            rng.Shuffle(order);
            order = order[..MaxRows];
        }
        var p = new float[order.Length * dc];
        for (int i = 0; i < order.Length; i++)
            Array.Copy(data, (long)order[i] * e + sub * dc, p, (long)i * dc, dc);
        return p;
    }

    private static float L1(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        float s = 0;
        for (int i = 0; i < a.Length; i++)
            s += Math.Abs(a[i] - b[i]);
        return s;
    }

    // Index of the nearest codeword (ties: lowest index, as PQEncode) and its distance.
    private static (int Index, float Distance) Nearest(ReadOnlySpan<float> point, ReadOnlySpan<float> codewords, int dc)
    {
        int best = 0;
        float bestDistance = float.MaxValue;
        for (int j = 0; j * dc < codewords.Length; j++)
        {
            float d = L1(point, codewords.Slice(j * dc, dc));
            if (d < bestDistance)
            {
                bestDistance = d;
                best = j;
            }
        }
        return (best, bestDistance);
    }

    private static double MeanNearest(float[] points, int dc, ReadOnlySpan<float> codewords)
    {
        double sum = 0;
        int n = points.Length / dc;
        for (int i = 0; i < n; i++)
            sum += Nearest(points.AsSpan(i * dc, dc), codewords, dc).Distance;
        return n == 0 ? 0 : sum / n;
    }

    /// <summary>
    /// k-medians of <paramref name="points"/> ([n, dc]) into <paramref name="c"/> codewords under L1: k-means++
    /// seeding (distance-weighted), then <paramref name="iterations"/> rounds of nearest-codeword assignment and a
    /// per-coordinate median update; a codeword left without points moves to the point farthest from its codeword.
    /// Fewer distinct points than codewords repeat the last point chosen.
    /// </summary>
    public static float[] Fit(float[] points, int dc, int c, int iterations, Random rng)
    {
        int n = points.Length / dc;
        var codewords = new float[c * dc];
        if (n == 0)
            return codewords;
        var nearest = new float[n];
        Array.Fill(nearest, float.MaxValue);
        int pick = rng.Next(n);
        for (int j = 0; j < c; j++)
        {
            Array.Copy(points, pick * dc, codewords, j * dc, dc);
            double total = 0;
            for (int i = 0; i < n; i++)
            {
                nearest[i] = Math.Min(nearest[i], L1(points.AsSpan(i * dc, dc), codewords.AsSpan(j * dc, dc)));
                total += nearest[i];
            }
            if (total <= 0)
                continue; // every point already sits on a codeword: keep repeating
            double r = rng.NextDouble() * total;
            for (pick = 0; pick < n - 1 && (r -= nearest[pick]) > 0; pick++)
            {
            }
        }

        var assign = new int[n];
        var distance = new float[n];
        var members = new List<float>[c * dc];
        for (int k = 0; k < members.Length; k++)
            members[k] = [];
        for (int it = 0; it < iterations; it++)
        {
            bool moved = it == 0;
            for (int i = 0; i < n; i++)
            {
                var (j, d) = Nearest(points.AsSpan(i * dc, dc), codewords, dc);
                moved |= j != assign[i];
                assign[i] = j;
                distance[i] = d;
            }
            if (!moved)
                break;
            foreach (var list in members)
                list.Clear();
            var counts = new int[c];
            for (int i = 0; i < n; i++)
            {
                counts[assign[i]]++;
                for (int k = 0; k < dc; k++)
                    members[assign[i] * dc + k].Add(points[i * dc + k]);
            }
            for (int j = 0; j < c; j++)
            {
                if (counts[j] == 0)
                {
                    int far = Array.IndexOf(distance, distance.Max());
                    Array.Copy(points, far * dc, codewords, j * dc, dc);
                    distance[far] = 0;
                    continue;
                }
                for (int k = 0; k < dc; k++)
                {
                    var list = members[j * dc + k];
                    list.Sort();
                    int mid = list.Count / 2;
                    codewords[j * dc + k] = list.Count % 2 == 1 ? list[mid] : 0.5f * (list[mid - 1] + list[mid]);
                }
            }
        }
        return codewords;
    }
}
