using Spt.CustomOps;
using Spt.Ir;

namespace Spt.Runtime.Training;

/// <summary>Training settings that follow from a model's SPT ops.</summary>
public static class TrainingDefaults
{
    /// <summary>
    /// The user's --frozen pattern extended by the base weights of RoutedFFN nodes with <c>frozen_base = 1</c> (the
    /// SPT rewrite's default: the routed FFN trains its router, LoRA factors and nothing of the base FFN), so that
    /// the compiler does not ask for gradients the op does not compute.
    /// </summary>
    public static string? FrozenPattern(Model model, string? user)
    {
        var names = model.Graph.Nodes
            .Where(n => n.Domain == CustomOpLibrary.Domain && n.OpType == "RoutedFFN" && n.GetInt("frozen_base", 1) == 1)
            .SelectMany(n => new[] { RoutedFfnOps.W1, RoutedFfnOps.B1, RoutedFfnOps.W2, RoutedFfnOps.B2, RoutedFfnOps.W3 }
                .Where(i => i < n.Inputs.Count && n.Inputs[i] is { IsInitializer: true })
                .Select(i => n.Inputs[i]!.Name))
            .Distinct(StringComparer.Ordinal)
            .Select(System.Text.RegularExpressions.Regex.Escape)
            .ToList();
        if (names.Count == 0)
        {
            return user;
        }

        var frozen = "^(" + string.Join('|', names) + ")$";
        return user is null ? frozen : $"(?:{user})|{frozen}";
    }

}
