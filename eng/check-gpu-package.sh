#!/usr/bin/env bash
# Shows that the GPU switch builds: restores and builds sptc against Microsoft.ML.OnnxRuntime.Gpu
# (SptOrtGpu=true) into a separate output tree (the CPU build in bin/, obj/ and build/native is left alone),
# then checks that
#   - the restore took Microsoft.ML.OnnxRuntime.Gpu at the pinned version and not the CPU package,
#   - the CUDA execution provider libonnxruntime_providers_cuda.so lands beside libonnxruntime.so in the app,
#   - the sptc custom-op library was built against the GPU package's headers and lands beside sptc.dll.
# Downloads about 900 MB of packages once (NuGet cache); not part of the tests or CI. Running the CUDA
# provider needs a GPU host with the CUDA 13 runtime and cuDNN 9: this script only builds and inspects.
#
#   eng/check-gpu-package.sh [OUT_DIR]     (default: artifacts/gpu-check)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-$root/artifacts/gpu-check}")"
cd "$root"
version="$(sed -n 's:.*<SptOrtVersion>\(.*\)</SptOrtVersion>.*:\1:p' Directory.Packages.props)"
fail() { echo "check-gpu-package: FAIL: $*" >&2; exit 1; }

echo "check-gpu-package: building sptc with -p:SptOrtGpu=true into $out"
dotnet build src/Spt.Cli/Spt.Cli.csproj -c Release -nologo -v:quiet -p:SptOrtGpu=true \
  --artifacts-path "$out" -p:SptNativeBuildDir="$out/native/"

assets="$out/obj/Spt.Runtime/project.assets.json"
[[ -f "$assets" ]] || fail "no restore result at $assets"
python3 - "$assets" "$version" <<'PY' || exit 1
import json, sys
libs = json.load(open(sys.argv[1]))["libraries"]
want = f"Microsoft.ML.OnnxRuntime.Gpu/{sys.argv[2]}"
if want not in libs:
    sys.exit(f"check-gpu-package: FAIL: {want} not restored (got {sorted(k for k in libs if 'OnnxRuntime' in k)})")
if any(k.startswith("Microsoft.ML.OnnxRuntime/") for k in libs):
    sys.exit("check-gpu-package: FAIL: the CPU package Microsoft.ML.OnnxRuntime was restored too")
print("check-gpu-package: restored " + ", ".join(sorted(k for k in libs if "OnnxRuntime" in k)))
PY

app="$(dirname "$(find "$out/bin/Spt.Cli" -name sptc.dll | head -1)")"
[[ -d "$app" ]] || fail "sptc.dll not found under $out/bin/Spt.Cli"
cuda="$(find "$app" -name libonnxruntime_providers_cuda.so | head -1)"
[[ -n "$cuda" ]] || fail "libonnxruntime_providers_cuda.so is not in $app"
[[ -f "$(dirname "$cuda")/libonnxruntime.so" ]] || fail "libonnxruntime.so is not beside $cuda"
[[ -f "$app/libspt_customops.so" ]] || fail "libspt_customops.so is not beside sptc.dll in $app"
grep -q "microsoft.ml.onnxruntime.gpu.linux/$version/" "$out/native/CMakeCache.txt" \
  || fail "the custom-op library was not configured with the GPU package's headers"
echo "check-gpu-package: ${cuda#$app/} ($(du -m "$cuda" | cut -f1) MB), beside libonnxruntime.so"
echo "check-gpu-package: CUDA libraries it needs on a GPU host: $(objdump -p "$cuda" | awk '/NEEDED/ && /cu/ {print $2}' | tr '\n' ' ')"
echo "check-gpu-package: OK (sptc in $app; run it on a GPU host, e.g. sptc train ... --device cuda)"
