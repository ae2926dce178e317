namespace Spt.CustomOps;

/// <summary>
/// The identity of sptc's operator set (domain <c>spt</c>) as the compiler writes it into models. The native
/// library that implements the operators for ONNX Runtime is loaded by the runtime side
/// (<c>Spt.Runtime.NativeOpLibrary</c>).
/// </summary>
public static class CustomOpLibrary
{
    /// <summary>The ONNX domain of every sptc operator.</summary>
    public const string Domain = "spt";

    /// <summary>The opset version of <see cref="Domain"/> that this build implements.</summary>
    public const int OpsetVersion = 1;
}
