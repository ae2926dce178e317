#!/usr/bin/env bash
# The GPU check, one prepared script for a machine with an NVIDIA GPU, nvcc, CMake, Python with numpy and a CUDA
# build of PyTorch (no dotnet, no network needed):
#   eng/gpu-check.sh OUT_DIR
# builds the CUDA kernels and the CPU kernels behind a C API (libspt_check.so, in build/gpu-check; oneDNN is
# used when present, else plain reference loops), runs the kernel tests on the shared case table against the
# CPU kernels and PyTorch, runs the benchmarks (SparseAttention vs SDPA backends and unfused attention,
# RoutedFFN vs the dense FFN), and writes OUT_DIR/report.json and OUT_DIR/report.md. Exit status: 0 all tests
# passed, 1 a test failed, 2 bad usage or build failure, 3 no GPU visible (nothing ran on one). Budget: about
# 7 minutes in all (CHECK_BUDGET_S for the Python part, default 360 s after the build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $# -ne 1 || "$1" == -* ]]; then
  echo "usage: eng/gpu-check.sh OUT_DIR" >&2
  exit 2
fi
out="$1"
mkdir -p "$out"
build=build/gpu-check
py="${PYTHON:-python3}"
for tool in nvcc cmake "$py"; do
  command -v "$tool" >/dev/null || { echo "gpu-check: $tool not found" >&2; exit 2; }
done
# One architecture: the GPU's own (compute capability 9.0 -> 90), else sm_80 and sm_90.
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
arch="${arch:-80;90}"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
start=$(date +%s)
if ! cmake -S native/customops -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSPT_WITH_CUDA=ON \
      -DSPT_CUDA_ARCHITECTURES="$arch" -DSPT_CUDA_WERROR=OFF -DSPT_BUILD_BINDING=OFF -DSPT_BUILD_TESTS=OFF \
      -DSPT_BUILD_BENCHMARKS=OFF -DSPT_REFERENCE_BLAS=ON > "$out/build.log" 2>&1 ||
   ! cmake --build "$build" --target spt_check -j "$(nproc)" >> "$out/build.log" 2>&1; then
  tail -40 "$out/build.log" >&2
  echo "gpu-check: build failed (log: $out/build.log)" >&2
  exit 2
fi
echo "gpu-check: built in $(( $(date +%s) - start )) s for sm_$arch"
"$py" native/customops/gpu/check.py --out "$out" --lib "$build/libspt_check.so" --budget-s "${CHECK_BUDGET_S:-360}"
