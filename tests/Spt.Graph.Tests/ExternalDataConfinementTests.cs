using Google.Protobuf;
using Spt.Ir.Onnx;

namespace Spt.Ir.Tests;

/// <summary>
/// External data must come from the model's own folder. Each crafted model points a tensor at a file outside it whose
/// size matches the tensor exactly, so only the location rule can refuse it (a size check alone would not).
/// </summary>
public sealed class ExternalDataConfinementTests : IDisposable
{
    private readonly TestData.TempDir _root = TestData.CreateTempDir();

    public void Dispose() => _root.Dispose();

    // A secret next to (not inside) the model's folder; its size is a multiple of 4 so a float tensor can match it.
    private string Secret()
    {
        string path = _root.File("secret.bin");
        File.WriteAllBytes(path, [.. Enumerable.Range(0, 64).Select(i => (byte)(i * 7))]);
        return path;
    }

    // models/m.onnx whose initializer 'w' (f32[16], 64 bytes) lives in external file <location>.
    private string ModelPointingAt(string location)
    {
        string dir = Path.Combine(_root.Path, "models");
        Directory.CreateDirectory(dir);
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 16);
        b.Output(b.Op("Add", x, b.Initializer("w", new float[16], 16)));
        var proto = ModelProto.Parser.ParseFrom(b.Build().ToBytes());
        var w = proto.Graph.Initializer.Single(t => t.Name == "w");
        w.ClearRawData();
        w.FloatData.Clear();
        w.DataLocation = TensorProto.Types.DataLocation.External;
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        w.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = "64" });
        string path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, proto.ToByteArray());
        return path;
    }

    private static string Refused(string model)
    {
        var e = Assert.Throws<OnnxModelException>(() => Model.Load(model));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("tensor 'w'", e.Message);
        return e.Message;
    }

    [Fact]
    public void An_absolute_location_is_refused_even_when_the_size_matches()
    {
        Assert.Contains("is an absolute path", Refused(ModelPointingAt(Secret())));
    }

    [Fact]
    public void A_location_that_climbs_out_with_dot_dot_is_refused()
    {
        Secret();
        Assert.Contains("leaves the model's directory", Refused(ModelPointingAt("../secret.bin")));
        Assert.Contains("leaves the model's directory", Refused(ModelPointingAt("sub/../../secret.bin")));
    }

    [Fact]
    public void A_symbolic_link_that_leads_outside_is_refused()
    {
        string secret = Secret();
        string model = ModelPointingAt("weights.bin");
        File.CreateSymbolicLink(Path.Combine(Path.GetDirectoryName(model)!, "weights.bin"), secret);
        Assert.Contains("through a symbolic link", Refused(model));

        // A linked folder on the way counts too.
        string linkedDir = Path.Combine(Path.GetDirectoryName(model)!, "shared");
        Directory.CreateSymbolicLink(linkedDir, _root.Path);
        Assert.Contains("through a symbolic link", Refused(ModelPointingAt("shared/secret.bin")));
    }

    [Fact]
    public void Devices_are_not_data_files()
    {
        string model = ModelPointingAt("zero");
        File.CreateSymbolicLink(Path.Combine(Path.GetDirectoryName(model)!, "zero"), "/dev/zero");
        Assert.Contains("is a device", Refused(model));
    }

    [Fact]
    public void Data_inside_the_folder_loads_through_a_link_that_stays_inside()
    {
        string model = ModelPointingAt("data/w.bin");
        string dir = Path.GetDirectoryName(model)!;
        Directory.CreateDirectory(Path.Combine(dir, "real"));
        var bytes = new byte[64];
        BitConverter.GetBytes(2.5f).CopyTo(bytes, 0);
        File.WriteAllBytes(Path.Combine(dir, "real", "w.bin"), bytes);
        Directory.CreateSymbolicLink(Path.Combine(dir, "data"), Path.Combine(dir, "real"));
        using var loaded = Model.Load(model);
        Assert.Equal(2.5f, loaded.Graph.FindValue("w")!.Initializer!.ToFloatArray()[0]);
    }
}
