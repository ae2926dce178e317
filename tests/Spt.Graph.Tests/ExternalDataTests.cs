using System.Diagnostics;
using Xunit.Abstractions;

namespace Spt.Ir.Tests;

/// <summary>Writing and reading tensor data kept in an external file, including models over 2 GB.</summary>
public sealed class ExternalDataTests(ITestOutputHelper output)
{
    // Byte i of the shared pattern; tensor k of the big model holds bytes k .. k + TensorBytes - 1.
    private static byte Pattern(long i) => (byte)((i * 131) ^ (i >> 17));

    [Fact]
    public void ModelOverTwoGigabytesSavesToExternalDataAndLoadsLazily()
    {
        const int TensorBytes = 800_000_000;
        const int Tensors = 3;
        using var dir = TestData.CreateTempDir();
        string path = dir.File("big.onnx");

        // One buffer backs all three tensors at different offsets, so the test needs 800 MB, not 2.4 GB.
        byte[] buffer = GC.AllocateUninitializedArray<byte>(TensorBytes + Tensors);
        for (int i = 0; i < buffer.Length; i++)
            buffer[i] = Pattern(i);

        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.UInt8, TensorBytes);
        Value acc = x;
        for (int k = 0; k < Tensors; k++)
        {
            var w = b.Initializer(Tensor.FromRawData($"w{k}", ElementType.UInt8, [TensorBytes], buffer.AsMemory(k, TensorBytes)));
            acc = b.Op("BitwiseXor", acc, w);
        }
        b.Output(acc);
        var model = b.Build();

        var watch = Stopwatch.StartNew();
        // No fsync: the test measures the writer, not the disk.
        model.Save(path, new SaveOptions { FlushToDisk = false });
        var saveTime = watch.Elapsed;
        string data = path + ".data";
        Assert.True(File.Exists(data));
        Assert.True(new FileInfo(path).Length < 4096, "the model file holds no tensor data");
        Assert.True(new FileInfo(data).Length >= (long)Tensors * TensorBytes);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));

        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        watch.Restart();
        using var loaded = Model.Load(path);
        var loadTime = watch.Elapsed;
        long allocatedByLoad = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;

        var initializers = loaded.Graph.Initializers;
        Assert.Equal(Tensors, initializers.Count);
        var rng = new Random(7);
        for (int k = 0; k < Tensors; k++)
        {
            var t = initializers[k].Initializer!;
            Assert.Equal($"w{k}", t.Name);
            Assert.True(t.IsExternal);
            Assert.Equal(TensorBytes, t.ByteLength);
            Assert.Equal([(long)TensorBytes], t.Dims);
            var bytes = t.GetRawData().Span;
            Assert.Equal(TensorBytes, bytes.Length);
            foreach (int j in new[] { 0, 1, 4095, 4096, TensorBytes - 1 }.Concat(Enumerable.Range(0, 64).Select(_ => rng.Next(TensorBytes))))
                Assert.Equal(Pattern(j + k), bytes[j]);
        }
        long allocatedByReads = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore - allocatedByLoad;
        var summary = ModelSummary.Of(loaded);
        Assert.Equal((long)Tensors * TensorBytes, summary.ExternalParameterBytes);
        Assert.Equal(Tensors, summary.ExternalInitializerCount);

        output.WriteLine($"saved {(long)Tensors * TensorBytes / 1e9:F1} GB in {saveTime.TotalSeconds:F1} s, loaded in {loadTime.TotalMilliseconds:F0} ms; " +
                         $"managed allocations: {allocatedByLoad / 1024} KB by load, {allocatedByReads / 1024} KB by sampled reads; " +
                         $"peak working set {Process.GetCurrentProcess().PeakWorkingSet64 / (1 << 20)} MB");
        // Loading maps the data file instead of reading it: nothing near a tensor's size is allocated.
        Assert.True(allocatedByLoad < 64L << 20, $"load allocated {allocatedByLoad} bytes");
        Assert.True(allocatedByReads < 1L << 20, $"reads allocated {allocatedByReads} bytes");
    }

    [Fact]
    public void ExternalDataRoundTripsAndInlinesBack()
    {
        using var dir = TestData.CreateTempDir();
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 1000);
        var big = b.Initializer("big", Enumerable.Range(0, 1000).Select(i => i * 0.5f).ToArray(), 1000);
        var small = b.Initializer("small", [3f], 1);
        b.Output(b.Op("Mul", b.Op("Add", x, big), small));
        var model = b.Build();
        byte[] inline = model.ToBytes();

        string path = dir.File("m.onnx");
        model.Save(path, new SaveOptions { ExternalData = ExternalDataMode.Always, ExternalDataThreshold = 1024 });
        using var loaded = Model.Load(path);
        var bigT = loaded.Graph.FindValue("big")!.Initializer!;
        var smallT = loaded.Graph.FindValue("small")!.Initializer!;
        Assert.True(bigT.IsExternal);
        Assert.Equal("m.onnx.data", bigT.External!.Location);
        Assert.Equal(0, bigT.External.Offset % 4096);
        Assert.False(smallT.IsExternal);
        Assert.Equal(Enumerable.Range(0, 1000).Select(i => i * 0.5f), bigT.ToFloatArray());

        // Written inline again, the model is byte for byte the one built.
        Assert.Equal(inline, loaded.ToBytes());

        // Saving over the loaded files works while they are mapped.
        loaded.Save(path, new SaveOptions { ExternalData = ExternalDataMode.Always });
        using var again = Model.Load(path);
        Assert.Equal(inline, again.ToBytes());
    }

    [Fact]
    public void ReferenceSourceDataRefersToTheUnchangedWeightFileInsteadOfCopyingIt()
    {
        using var dir = TestData.CreateTempDir();
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 1000);
        b.Output(b.Op("Add", x, b.Initializer("w", Enumerable.Range(0, 1000).Select(i => i * 0.25f).ToArray(), 1000)));
        string source = dir.File("source.onnx");
        b.Build().Save(source, new SaveOptions { ExternalData = ExternalDataMode.Always });
        byte[] weights = File.ReadAllBytes(source + ".data");

        using var loaded = Model.Load(source);
        // A new large initializer goes to the output's own data file; the unchanged one stays where it is.
        var editor = loaded.Graph.Edit();
        var added = editor.AddInitializer(Tensor.Create("added", Enumerable.Range(0, 1000).Select(i => -1f * i).ToArray(), 1000));
        var add = loaded.Graph.Outputs[0].Producer!;
        var mul = editor.CreateNode("Mul", [add.Inputs[0], added], 1);
        editor.InsertBefore(add, mul);
        editor.SetInput(add, 0, mul.Outputs[0]);
        string sub = Directory.CreateDirectory(Path.Combine(dir.Path, "sub")).FullName;
        Assert.Throws<OnnxModelException>(() => loaded.Save(Path.Combine(sub, "out.onnx"), new SaveOptions { ReferenceSourceData = true, ExternalData = ExternalDataMode.Always }));
        Assert.False(File.Exists(Path.Combine(sub, "out.onnx")));
        Assert.Throws<OnnxModelException>(() => loaded.Save(dir.File("x.onnx"), new SaveOptions { ReferenceSourceData = true, ExternalDataFileName = "source.onnx.data", ExternalData = ExternalDataMode.Always }));

        string output = dir.File("out.onnx");
        loaded.Save(output, new SaveOptions { ReferenceSourceData = true, ExternalData = ExternalDataMode.Always });
        Assert.Equal(weights, File.ReadAllBytes(source + ".data"));  // not rewritten
        Assert.Equal(4000, new FileInfo(output + ".data").Length);    // only the new initializer
        using var again = Model.Load(output);
        var w = again.Graph.FindValue("w")!.Initializer!;
        Assert.Equal("source.onnx.data", w.External!.Location);
        Assert.Equal(Enumerable.Range(0, 1000).Select(i => i * 0.25f), w.ToFloatArray());
        Assert.Equal("out.onnx.data", again.Graph.FindValue("added")!.Initializer!.External!.Location);
    }

    [Fact]
    public void FailedSaveLeavesNoFilesBehind()
    {
        using var dir = TestData.CreateTempDir();
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.Float, 4096);
        b.Output(b.Op("Add", x, b.Initializer("w", new float[4096], 4096)));
        string source = dir.File("source.onnx");
        b.Build().Save(source, new SaveOptions { ExternalData = ExternalDataMode.Always });
        var before = Directory.GetFiles(dir.Path).Order().ToList();

        var loaded = Model.Load(source);
        loaded.Dispose(); // its external data is no longer reachable, so writing it fails midway
        Assert.ThrowsAny<Exception>(() => loaded.Save(dir.File("target.onnx"), new SaveOptions { ExternalData = ExternalDataMode.Always }));
        Assert.Equal(before, Directory.GetFiles(dir.Path).Order().ToList());
    }

    [Fact]
    public void StreamsRefuseModelsOverTwoGigabytes()
    {
        var b = new GraphBuilder();
        var x = b.Input("x", ElementType.UInt8, 1);
        // 1.2 GB each, declared over a small buffer would be rejected, so use one shared large view twice.
        byte[] buffer = GC.AllocateUninitializedArray<byte>(1_200_000_000);
        var t1 = b.Initializer(Tensor.FromRawData("a", ElementType.UInt8, [buffer.Length], buffer));
        var t2 = b.Initializer(Tensor.FromRawData("c", ElementType.UInt8, [buffer.Length], buffer));
        b.Output(b.Op("Add", b.Op("Add", x, t1), t2));
        var e = Assert.Throws<OnnxModelException>(() => b.Build().ToBytes());
        Assert.Contains("2 GB", e.Message);
    }
}
