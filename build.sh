#!/usr/bin/env bash
# sptc's one entry point for building, testing and the demo. Each command sets up what it needs first
# (Debian packages when root; NuGet packages, ONNX Runtime included, through dotnet restore).
#
#   ./build.sh            build everything (C# and the native custom-op library)
#   ./build.sh demo       build, then run the main job on the built-in sample model
#   ./build.sh test       build, then build and run every test (native ctest suites and all xunit projects)
#   ./build.sh native     build, then also build the native tests and benchmarks (build/native/spt_bench)
#   ./build.sh sptc ARGS  build, then run the sptc command with ARGS
#
# Environment: CONFIGURATION (default Release); SPTC_ORT_GPU=1 builds against Microsoft.ML.OnnxRuntime.Gpu
# (CUDA provider, for GPU hosts) instead of the CPU package Microsoft.ML.OnnxRuntime (same as -p:SptOrtGpu=true).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

config="${CONFIGURATION:-Release}"
cmd="${1:-build}"
[[ $# -gt 0 ]] && shift

build() {
  bash eng/setup.sh
  dotnet build SptCompiler.sln -c "$config" -nologo -clp:NoSummary -v:quiet
}

# The native GoogleTest suites and Google Benchmark programs (the .NET build makes only the library; it has
# already configured build/native with the ORT headers of the restored package).
native_tests() {
  cmake -S native/customops -B build/native -DSPT_BUILD_TESTS=ON -DSPT_BUILD_BENCHMARKS=ON > /dev/null
  cmake --build build/native -j "${SPT_CMAKE_JOBS:-2}"
}

sptc() {
  dotnet "src/Spt.Cli/bin/$config/net10.0/sptc.dll" "$@"
}

run_tests() {
  local log; log="$(mktemp)"
  local status=0
  echo "== native tests (ctest)"
  native_tests 2>&1 | tee -a "$log" || status=1
  (cd build/native && ctest --output-on-failure -j 2) 2>&1 | tee -a "$log" || status=1
  echo "== C# tests (xunit)"
  dotnet test SptCompiler.sln -c "$config" --no-build -nologo 2>&1 | tee -a "$log" || status=1

  # One closing line over both runners.
  python3 - "$log" "$status" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
passed = failed = skipped = 0
for m in re.finditer(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", text):
    failed += int(m.group(2)); passed += int(m.group(3)) - int(m.group(2))
for m in re.finditer(r"Failed:\s+(\d+), Passed:\s+(\d+), Skipped:\s+(\d+), Total:\s+(\d+)", text):
    failed += int(m.group(1)); passed += int(m.group(2)); skipped += int(m.group(3))
if int(sys.argv[2]) and failed == 0:
    failed = 1  # a runner failed without reporting a failing test (build or crash)
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
  rm -f "$log"
  return $status
}

case "$cmd" in
  build) build ;;
  demo) build; sptc demo "$@" ;;
  test) build; run_tests ;;
  native) build; native_tests ;;
  sptc) build; sptc "$@" ;;
  *) echo "usage: ./build.sh [build|demo|test|native|sptc ARGS]" >&2; exit 2 ;;
esac
