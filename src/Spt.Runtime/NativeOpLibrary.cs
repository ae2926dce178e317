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

    /// <summary>
    /// File name of the native library that also has the CUDAExecutionProvider kernels (built where the build
    /// is asked for CUDA: <c>-p:SptWithCuda=ON</c>, needs nvcc).
    /// </summary>
    public const string CudaFileName = "libspt_customops_cuda.so";

    /// <summary>Environment variable that overrides where the native library is looked for.</summary>
    public const string PathVariable = "SPTC_CUSTOMOPS_LIB";

    /// <summary>Environment variable that overrides where the CUDA build of the native library is looked for.</summary>
    public const string CudaPathVariable = "SPTC_CUSTOMOPS_CUDA_LIB";

    /// <summary>
    /// Full path of the native library: <c>$SPTC_CUSTOMOPS_LIB</c> when set, else the file beside the application
    /// or beside this assembly (the build copies it to both).
    /// </summary>
    /// <exception cref="FileNotFoundException">The library is not where it should be.</exception>
    public static string Path => Locate(FileName, PathVariable, "build Spt.Runtime (it builds native/customops)");

    /// <summary>Full path of <see cref="CudaFileName"/>, found like <see cref="Path"/> (<c>$SPTC_CUSTOMOPS_CUDA_LIB</c> first).</summary>
    /// <exception cref="FileNotFoundException">The library is not where it should be.</exception>
    public static string CudaPath =>
        Locate(CudaFileName, CudaPathVariable, "build with CUDA (dotnet build -p:SptWithCuda=ON, needs nvcc)");

    private static string Locate(string fileName, string pathVariable, string howToBuild)
    {
        {
            var fromEnv = Environment.GetEnvironmentVariable(pathVariable);
            if (!string.IsNullOrEmpty(fromEnv))
            {
                return File.Exists(fromEnv)
                    ? System.IO.Path.GetFullPath(fromEnv)
                    : throw new FileNotFoundException($"{pathVariable} names '{fromEnv}', which does not exist", fromEnv);
            }

            var beside = System.IO.Path.Combine(AppContext.BaseDirectory, fileName);
            if (File.Exists(beside))
            {
                return beside;
            }

            var assemblyDir = System.IO.Path.GetDirectoryName(typeof(NativeOpLibrary).Assembly.Location);
            if (!string.IsNullOrEmpty(assemblyDir) && File.Exists(System.IO.Path.Combine(assemblyDir, fileName)))
            {
                return System.IO.Path.Combine(assemblyDir, fileName);
            }

            throw new FileNotFoundException(
                $"the sptc custom-op library {fileName} was not found beside {AppContext.BaseDirectory}; " +
                $"{howToBuild} or set {pathVariable}", fileName);
        }
    }

    /// <summary>Registers the sptc operators with an ORT session's options.</summary>
    public static void Register(SessionOptions options) => Register(options, cuda: false);

    /// <summary>
    /// Registers the sptc operators; with <paramref name="cuda"/> from <see cref="CudaFileName"/>, whose operators
    /// also run on the CUDA execution provider (its CPU kernels are the same as <see cref="FileName"/>'s).
    /// </summary>
    public static void Register(SessionOptions options, bool cuda)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.RegisterCustomOpLibrary(cuda ? CudaPath : Path);
    }
}
