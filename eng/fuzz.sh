#!/usr/bin/env bash
# The full bad-input corpus: every crafted model and N seeded mutations of the fixture models, each through
# inspect, optimize, compile-training and verify. Prints the figures table (cases, crashes, stack traces,
# multi-line errors, leftovers, hangs). CI runs a sample of the same tests (100 mutations) in ./build.sh test.
#
#   eng/fuzz.sh [MUTATIONS=600] [FIRST_SEED=0]
set -euo pipefail
cd "$(dirname "$0")/.."
mutations="${1:-600}"
first="${2:-0}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
dotnet build SptCompiler.sln -c Release -v:quiet -nologo
SPTC_FUZZ_MUTATIONS="$mutations" SPTC_FUZZ_SEED="$first" SPTC_FUZZ_REPORT="$report" \
  dotnet test tests/Spt.Cli.Tests -c Release --no-build --filter "FullyQualifiedName~Spt.Cli.Tests.Fuzz.FuzzTests" --logger "console;verbosity=normal" \
  | grep -E "^\s*(\||[0-9.]+ s$|Passed!|Failed!|Failed )" || true
echo
echo "| corpus | cases | command runs | crashes (exit 1 or other) | stack traces | multi-line errors | leftovers | hangs | exit codes | time |"
echo "|---|---|---|---|---|---|---|---|---|---|"
sed 's/ \([0-9]*\) s$/ \1 s |/' "$report"
