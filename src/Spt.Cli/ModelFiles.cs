using Spt.Ir;

namespace Spt.Cli;

/// <summary>Loading models named on the command line, with errors that name the file.</summary>
internal static class ModelFiles
{
    /// <summary>Loads a model file; anything but a readable regular file (a directory, FIFO, device, link loop) is refused with one line.</summary>
    public static Model Load(FileInfo file)
    {
        var kind = FileChecks.Kind(file.FullName);
        if (kind != PathKind.File)
        {
            throw new CliUsageException(kind == PathKind.Directory
                ? $"'{file}' is a directory, not an ONNX model file"
                : $"model file '{file}' {FileChecks.Describe(kind)}");
        }

        return Model.Load(file.FullName);
    }
}
