using Microsoft.ML.OnnxRuntime;

namespace Spt.Runtime;

/// <summary>
/// The native library that implements sptc's operators (domain <see cref="Spt.CustomOps.CustomOpLibrary.Domain"/>)
/// for ONNX Runtime, built from native/customops and copied beside the runtime's assembly.
/// </summary>
public static class NativeOpLibrary
{
    /// <summary>File name of the native library.</summary>
    public const string FileName = "libspt_customops.so";

    /// <summary>Environment variable that overrides where the native library is looked for.</summary>
    public const string PathVariable = "SPTC_CUSTOMOPS_LIB";

    /// <summary>
    /// Full path of the native library: <c>$SPTC_CUSTOMOPS_LIB</c> when set, else the file beside the application
    /// or beside this assembly (the build copies it to both).
    /// </summary>
    /// <exception cref="FileNotFoundException">The library is not where it should be.</exception>
    public static string Path
    {
        get
        {
            var fromEnv = Environment.GetEnvironmentVariable(PathVariable);
            if (!string.IsNullOrEmpty(fromEnv))
            {
                return File.Exists(fromEnv)
                    ? System.IO.Path.GetFullPath(fromEnv)
                    : throw new FileNotFoundException($"{PathVariable} names '{fromEnv}', which does not exist", fromEnv);
            }

            var beside = System.IO.Path.Combine(AppContext.BaseDirectory, FileName);
            if (File.Exists(beside))
            {
                return beside;
            }

            var assemblyDir = System.IO.Path.GetDirectoryName(typeof(NativeOpLibrary).Assembly.Location);
            if (!string.IsNullOrEmpty(assemblyDir) && File.Exists(System.IO.Path.Combine(assemblyDir, FileName)))
            {
                return System.IO.Path.Combine(assemblyDir, FileName);
            }

            throw new FileNotFoundException(
                $"the sptc custom-op library {FileName} was not found beside {AppContext.BaseDirectory}; " +
                $"build Spt.Runtime (it builds native/customops) or set {PathVariable}", FileName);
        }
    }

    /// <summary>Registers the sptc operators with an ORT session's options.</summary>
    public static void Register(SessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.RegisterCustomOpLibrary(Path);
    }
}
