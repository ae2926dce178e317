#!/usr/bin/env bash
# Fetches ONNX Runtime 1.29.0 (official build, repackaged on the npm registry), checks its pinned
# sha512 integrity, keeps the tarball in a user cache and unpacks what sptc needs into .deps/.
#
#   eng/fetch-ort.sh [--cuda]
#
# Layout written (idempotent; re-runs are offline once the cache holds the tarballs):
#   .deps/onnxruntime/lib/       libonnxruntime.so, libonnxruntime_providers_shared.so (+ _cuda with --cuda)
#   .deps/onnxruntime/include/   C/C++ API headers
#   .deps/onnxruntime/csharp/    Microsoft's C# API sources (training API left out)
# Environment: SPTC_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/sptc) holds the tarballs.
set -euo pipefail

ORT_PKG="com.github.asus4.onnxruntime"
ORT_VER="0.4.9"
ORT_SHA512="BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
CUDA_PKG="com.github.asus4.onnxruntime.linux-x64-gpu"
CUDA_VER="0.4.9"
CUDA_SHA512="${SPTC_ORT_CUDA_SHA512:-}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SPTC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sptc}/npm"
dest="$root/.deps/onnxruntime"
want_cuda=0
[[ "${1:-}" == "--cuda" ]] && want_cuda=1

die() { echo "fetch-ort: $*" >&2; exit 1; }

# fetch NAME VERSION SHA512 -> prints the verified tarball path
fetch() {
  local name="$1" ver="$2" sha="$3" tgz="$cache/$1-$2.tgz"
  mkdir -p "$cache"
  if [[ ! -f "$tgz" ]]; then
    command -v npm >/dev/null || die "npm is required to fetch $name@$ver (install Node.js/npm, e.g. 'apt-get install npm')"
    echo "fetch-ort: downloading $name@$ver from the npm registry (once; cached in $cache)" >&2
    local tmp; tmp="$(mktemp -d "$cache/.pack.XXXXXX")"
    (cd "$tmp" && npm pack --silent "$name@$ver" >/dev/null 2>"$tmp/err") \
      || { cat "$tmp/err" >&2; rm -rf "$tmp"; die "npm pack $name@$ver failed"; }
    mv "$tmp/$name-$ver.tgz" "$tgz"
    rm -rf "$tmp"
  fi
  if [[ -n "$sha" ]]; then
    local got; got="$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
    if [[ "$got" != "$sha" ]]; then
      rm -f "$tgz"
      die "integrity check failed for $name@$ver (expected sha512-$sha, got sha512-$got); the cached file was removed"
    fi
  fi
  echo "$tgz"
}

stamp="$dest/.stamp"
want_stamp="$ORT_PKG@$ORT_VER $ORT_SHA512 cuda=$want_cuda"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]]; then
  exit 0
fi

tgz="$(fetch "$ORT_PKG" "$ORT_VER" "$ORT_SHA512")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
headers='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers'
tar -xzf "$tgz" -C "$work" package/Plugins/Linux/x64 "$headers" package/Runtime \
  || die "could not unpack $tgz"

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/lib" "$dest.tmp/include" "$dest.tmp/csharp"
cp "$work"/package/Plugins/Linux/x64/*.so "$dest.tmp/lib/"
cp "$work/$headers"/*.h "$dest.tmp/include/"
(cd "$work/package/Runtime" && find . -name '*.cs' -not -path './Training/*' -exec cp --parents {} "$dest.tmp/csharp/" \;)

if [[ $want_cuda == 1 ]]; then
  ctgz="$(fetch "$CUDA_PKG" "$CUDA_VER" "$CUDA_SHA512")"
  tar -xzf "$ctgz" -C "$work" --wildcards '*libonnxruntime_providers_cuda.so' || die "could not unpack $ctgz"
  find "$work" -name 'libonnxruntime_providers_cuda.so' -exec cp {} "$dest.tmp/lib/" \;
fi

echo "$want_stamp" > "$dest.tmp/.stamp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "fetch-ort: ONNX Runtime 1.29.0 ready in .deps/onnxruntime" >&2
