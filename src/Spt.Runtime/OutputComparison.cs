namespace Spt.Runtime;

/// <summary>How one output of two runs compares.</summary>
/// <param name="Name">Output name.</param>
/// <param name="Shape">Shape of the reference output.</param>
/// <param name="ShapesMatch">Whether both runs gave the same shape.</param>
/// <param name="MaxAbsDiff">Largest |a - b| over the elements.</param>
/// <param name="MaxRelDiff">Largest |a - b| / max(1e-12, |a|).</param>
/// <param name="WithinTolerance">Whether every element satisfies |a - b| ≤ tol · max(1, |a|) (NaN only equals NaN).</param>
public sealed record OutputDiff(string Name, long[] Shape, bool ShapesMatch, double MaxAbsDiff, double MaxRelDiff, bool WithinTolerance);

/// <summary>Compares the outputs of two runs element by element.</summary>
public static class OutputComparison
{
    /// <summary>
    /// Compares <paramref name="actual"/> to the reference <paramref name="expected"/>: an element a (reference)
    /// and b agree when |a - b| ≤ <paramref name="tolerance"/> · max(1, |a|), an absolute tolerance for values up
    /// to 1 and a relative one above; NaN agrees only with NaN, and infinities only with themselves.
    /// </summary>
    public static OutputDiff Compare(string name, TensorData expected, TensorData actual, double tolerance)
    {
        bool shapes = expected.Shape.SequenceEqual(actual.Shape);
        if (!shapes)
            return new OutputDiff(name, expected.Shape, false, double.PositiveInfinity, double.PositiveInfinity, false);
        double maxAbs = 0, maxRel = 0;
        bool ok = true;
        for (int i = 0; i < expected.Count; i++)
        {
            double a = expected[i], b = actual[i];
            if (double.IsNaN(a) || double.IsNaN(b) || double.IsInfinity(a) || double.IsInfinity(b))
            {
                if (!(a.Equals(b)))
                {
                    ok = false;
                    maxAbs = double.PositiveInfinity;
                    maxRel = double.PositiveInfinity;
                }
                continue;
            }
            double diff = Math.Abs(a - b);
            maxAbs = Math.Max(maxAbs, diff);
            maxRel = Math.Max(maxRel, diff / Math.Max(1e-12, Math.Abs(a)));
            if (diff > tolerance * Math.Max(1.0, Math.Abs(a)))
                ok = false;
        }
        return new OutputDiff(name, expected.Shape, true, maxAbs, maxRel, ok);
    }
}
