namespace Spt.Passes.Patterns;

/// <summary>
/// The result of a hand-written matcher, in the same convention as the Pattern DSL's <see cref="MatchResult"/>: what
/// was matched, or why not. Not matching is never an exception. A <c>(match, reason)</c> tuple converts to it, and it
/// deconstructs into one.
/// </summary>
/// <typeparam name="T">What the matcher recognizes.</typeparam>
/// <param name="Match">The match, or null.</param>
/// <param name="Reason">Why there is no match (null on success).</param>
public readonly record struct Matched<T>(T? Match, string? Reason)
    where T : class
{
    /// <summary>Whether there is a match.</summary>
    public bool Success => Match is not null;

    /// <summary>No match, for <paramref name="reason"/>.</summary>
    public static Matched<T> Fail(string reason) => new(null, reason);

    /// <summary>No match, for the reason a pattern gave.</summary>
    public static Matched<T> Fail(MatchResult result) => new(null, result.Reason ?? "no match");

    public static implicit operator Matched<T>(T match) => new(match, null);

    public static implicit operator Matched<T>((T? Match, string? Reason) result) => new(result.Match, result.Reason);
}
