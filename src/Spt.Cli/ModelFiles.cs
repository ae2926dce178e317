using Spt.Ir;

namespace Spt.Cli;

/// <summary>Loading models named on the command line, with errors that name the file.</summary>
internal static class ModelFiles
{
    public static Model Load(FileInfo file)
    {
        if (!file.Exists)
        {
            throw new CliUsageException(Directory.Exists(file.FullName)
                ? $"'{file}' is a directory, not an ONNX model file"
                : $"model file '{file}' does not exist");
        }

        return Model.Load(file.FullName);
    }
}
