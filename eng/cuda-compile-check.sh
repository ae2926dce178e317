#!/usr/bin/env bash
# Compile check of the CUDA part without a GPU: configures native/customops with SPT_WITH_CUDA=ON in its own
# build directory (build/cuda-check, or $1) and builds every CUDA kernel, the CUDA ORT binding
# (libspt_customops_cuda.so) and the GPU check's library for sm_80 and sm_90, warnings as errors.
# Needs nvcc (Debian: the non-free nvidia-cuda-toolkit 11.8, whose host compiler is g++-11; see README) and the
# ONNX Runtime headers of the restored NuGet package (found through dotnet). Nothing here runs a kernel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${1:-build/cuda-check}"
if ! command -v nvcc >/dev/null; then
  echo "cuda-compile-check: nvcc not found (install a CUDA toolkit; see README, GPU)" >&2
  exit 2
fi
# -getProperty ignores -restore: restore first, then read the headers' folder of the restored package.
dotnet restore src/Spt.Runtime -v:quiet >/dev/null
ort_include="$(dotnet msbuild src/Spt.Runtime -getProperty:SptOrtIncludeDir 2>/dev/null | tail -1)"
if [[ ! -f "$ort_include/onnxruntime_cxx_api.h" ]]; then
  echo "cuda-compile-check: ONNX Runtime headers not found (restore failed?): run ./build.sh once first" >&2
  exit 2
fi
cmake -S native/customops -B "$build" -DCMAKE_BUILD_TYPE=Release -DSPT_WITH_CUDA=ON \
  -DSPT_CUDA_ARCHITECTURES="80;90" -DSPT_ORT_INCLUDE_DIR="$ort_include" \
  -DSPT_BUILD_TESTS=OFF -DSPT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j "${SPT_CMAKE_JOBS:-2}"
echo "cuda-compile-check: $(nvcc --version | tail -1 | sed 's/^Build //'): kernels and binding built for sm_80 and sm_90"
