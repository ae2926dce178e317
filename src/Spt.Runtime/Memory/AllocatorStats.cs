using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;

namespace Spt.Runtime.Memory;

/// <summary>
/// ORT allocator statistics through the C API's <c>AllocatorGetStats</c> (ORT 1.23+), which the C# API does not
/// wrap: the function pointers are read from the <c>OrtApi</c> table that <c>OrtGetApiBase()-&gt;GetApi(29)</c>
/// returns. The indices are offsetof(OrtApi, f) / sizeof(void*) in the 1.29 header (the table only grows, so they
/// hold for later versions too).
/// </summary>
public static unsafe class AllocatorStats
{
    private const uint OrtApiVersion = 29;
    private const int GetErrorMessageIndex = 2;
    private const int ReleaseStatusIndex = 93;
    private const int GetKeyValuePairsIndex = 298;
    private const int ReleaseKeyValuePairsIndex = 300;
    private const int AllocatorGetStatsIndex = 319;

    private static readonly Lazy<IntPtr> Api = new(() =>
    {
        var baseApi = OrtGetApiBase();
        // struct OrtApiBase { const OrtApi*(*GetApi)(uint32_t version); const char*(*GetVersionString)(void); }
        var getApi = (delegate* unmanaged[Cdecl]<uint, IntPtr>)((IntPtr*)baseApi)[0];
        var api = getApi(OrtApiVersion);
        return api != IntPtr.Zero
            ? api
            : throw new InvalidOperationException($"the loaded ONNX Runtime does not provide C API version {OrtApiVersion}");
    });

    /// <summary>The statistics of <paramref name="allocator"/> (keys such as <c>InUse</c>, <c>MaxInUse</c>, <c>NumAllocs</c>); empty when the allocator keeps none.</summary>
    public static IReadOnlyDictionary<string, string> Get(OrtAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(allocator);
        var table = (IntPtr*)Api.Value;
        var getStats = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr*, IntPtr>)table[AllocatorGetStatsIndex];
        var getPairs = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr*, IntPtr*, UIntPtr*, void>)table[GetKeyValuePairsIndex];
        var releasePairs = (delegate* unmanaged[Cdecl]<IntPtr, void>)table[ReleaseKeyValuePairsIndex];

        IntPtr pairs;
        var status = getStats(allocator.DangerousGetHandle(), &pairs);
        ThrowOnError(table, status);
        try
        {
            IntPtr keys, values;
            UIntPtr count;
            getPairs(pairs, &keys, &values, &count);
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            for (var i = 0; i < (int)count; i++)
            {
                var key = Marshal.PtrToStringUTF8(((IntPtr*)keys)[i]) ?? "";
                result[key] = Marshal.PtrToStringUTF8(((IntPtr*)values)[i]) ?? "";
            }

            return result;
        }
        finally
        {
            releasePairs(pairs);
        }
    }

    /// <summary>The allocator's peak bytes in use (<c>MaxInUse</c>), or null when it keeps no statistics.</summary>
    public static long? MaxInUse(OrtAllocator allocator) =>
        Get(allocator).TryGetValue("MaxInUse", out var v) && long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var bytes)
            ? bytes
            : null;

    /// <summary>This process's peak resident set size in bytes (<c>VmHWM</c> of /proc/self/status), or null off Linux.</summary>
    public static long? PeakRssBytes() => ReadStatusKb("VmHWM:");

    /// <summary>This process's current resident set size in bytes (<c>VmRSS</c>), or null off Linux.</summary>
    public static long? RssBytes() => ReadStatusKb("VmRSS:");

    private static long? ReadStatusKb(string key)
    {
        const string path = "/proc/self/status";
        if (!File.Exists(path))
        {
            return null;
        }

        foreach (var line in File.ReadLines(path))
        {
            if (line.StartsWith(key, StringComparison.Ordinal))
            {
                var parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[0], CultureInfo.InvariantCulture) * 1024;
            }
        }

        return null;
    }

    private static void ThrowOnError(IntPtr* table, IntPtr status)
    {
        if (status == IntPtr.Zero)
        {
            return;
        }

        var getMessage = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr>)table[GetErrorMessageIndex];
        var release = (delegate* unmanaged[Cdecl]<IntPtr, void>)table[ReleaseStatusIndex];
        var message = Marshal.PtrToStringUTF8(getMessage(status)) ?? "unknown error";
        release(status);
        throw new InvalidOperationException($"AllocatorGetStats failed: {message}");
    }

    [DllImport("onnxruntime", CallingConvention = CallingConvention.Cdecl)]
    private static extern IntPtr OrtGetApiBase();
}
