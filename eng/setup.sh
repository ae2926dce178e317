#!/usr/bin/env bash
# Makes sure the tools and system packages that sptc's build and tests need are present. Installs missing
# Debian packages when running as root; otherwise says exactly what to install. ONNX Runtime is not a system
# package: it is a NuGet package (Microsoft.ML.OnnxRuntime) restored by dotnet with the other packages.
set -euo pipefail

# Debian packages: native toolchain, oneDNN for the CPU kernels' GEMMs, GoogleTest/Google Benchmark for the native
# tests and benchmarks, ONNX's backend test data for the IR peer suite, numpy for the GPU check harness test
# (native/customops/gpu/test_check.py), Open MPI for data-parallel training (mpirun, libmpi.so.40) and its tests,
# a font for the text of `sptc train --plot` (SkiaSharp finds it without fontconfig).
packages=(cmake g++ make libdnnl-dev libgtest-dev libbenchmark-dev libonnx-testdata python3-numpy openmpi-bin libopenmpi-dev fonts-dejavu-core)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if ! command -v dotnet >/dev/null; then
  echo "setup: the .NET SDK (10.0 or later) is required: https://dot.net (dotnet not found on PATH)" >&2
  exit 1
fi
major="$(dotnet --version | cut -d. -f1)"
if ((major < 10)); then
  echo "setup: the .NET SDK 10.0 or later is required (found $(dotnet --version))" >&2
  exit 1
fi
