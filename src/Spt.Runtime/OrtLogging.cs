using Microsoft.ML.OnnxRuntime;

namespace Spt.Runtime;

/// <summary>
/// How loud ONNX Runtime's own logger is. sptc reports ORT's errors through the exceptions ORT throws (one line
/// each, in sptc's words); ORT's coloured log lines on stderr would only repeat them beside that line, so the
/// environment and every session log only fatal problems.
/// </summary>
public static class OrtLogging
{
    private static readonly Lazy<OrtLoggingLevel> Configured = new(() =>
    {
        OrtEnv.Instance().EnvLogLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL;
        return OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL;
    });

    /// <summary>The severity for <see cref="SessionOptions.LogSeverityLevel"/>; reading it also quiets the environment's logger.</summary>
    public static OrtLoggingLevel SessionLevel => Configured.Value;
}
