#!/usr/bin/env python3
"""Compile-time and peak-memory benchmark of `sptc optimize` on a LLaMA-7B-shaped model.

Builds a decoder with LLaMA-7B's shapes (32 layers, d 4096, 32 query heads of 128 and 8 K/V heads repeated by
LLaMA-2's repeat_kv, SwiGLU d_ff 11008, vocab 32000; RMSNorm, causal mask, no rotary) whose float weights live in
one external-data file created as a sparse file (no disk is used: the weights read as zeros), then runs
`sptc optimize` on it twice under /usr/bin/time and prints compile time and peak RSS of each:
  1. no layer selected (`--layers 999`): every recognition pass runs, nothing is saved;
  2. the full rewrite (all attention and FFN blocks) saved with `--external-data reference`: the output refers to
     the unchanged weight file instead of copying it (its own data file holds only the new parameters).

    python3 scripts/benchmarks/llama7b_compile.py WORK_DIR [SPTC_COMMAND ...]

SPTC_COMMAND defaults to `dotnet src/Spt.Cli/bin/Release/net10.0/sptc.dll`. Needs onnx (Debian python3-onnx).
"""
import json
import os
import re
import subprocess
import sys

from onnx import TensorProto, helper

LAYERS, D, H, HKV, FF, VOCAB = 32, 4096, 32, 8, 11008, 32000
E = D // H


def build(work):
    data_name = "llama7b.data"
    inits, nodes = [], []
    offset = [0]

    def weight(name, dims):
        t = TensorProto()
        t.name, t.data_type = name, TensorProto.FLOAT
        t.dims.extend(dims)
        t.data_location = TensorProto.EXTERNAL
        length = 4
        for d in dims:
            length *= d
        for k, v in (("location", data_name), ("offset", str(offset[0])), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        offset[0] += length
        inits.append(t)
        return name

    def const(name, values, dtype=TensorProto.INT64, dims=None):
        inits.append(helper.make_tensor(name, dtype, [len(values)] if dims is None else dims, values))
        return name

    def op(kind, ins, **attrs):
        out = f"{kind.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(kind, ins, [out], name=out, **attrs))
        return out

    def rms_norm(x, prefix):
        var = op("ReduceMean", [op("Mul", [x, x])], axes=[-1], keepdims=1)
        return op("Mul", [op("Div", [x, op("Sqrt", [op("Add", [var, "eps"])])]), weight(prefix + ".weight", [D])])

    const("eps", [1e-6], TensorProto.FLOAT, [])
    const("scale", [float(E) ** 0.5], TensorProto.FLOAT, [])
    const("neg", [-1e9], TensorProto.FLOAT, [])
    const("heads", [0, 0, H, E])
    const("kv_heads", [0, 0, HKV, E])
    const("axis2", [2])
    const("copies", [1, 1, H // HKV, 1, 1])
    const("repeated", [0, H, -1, E])
    const("merge", [0, 0, D])
    const("one", [1])
    const("two", [2])
    const("axes01", [0, 1])
    # causal mask [1, 1, S, S]: triu(full((S, S), -1e9), 1)
    seq = op("Slice", [op("Shape", ["input_ids"]), "one", "two"])
    square = op("Concat", [seq, seq], axis=0)
    mask = op("Unsqueeze", [op("Trilu", [op("Expand", ["neg", square]), "one_scalar"], upper=1), "axes01"])
    const("one_scalar", [1], dims=[])
    x = op("Gather", [weight("embed_tokens.weight", [VOCAB, D]), "input_ids"], axis=0)
    for i in range(LAYERS):
        p = f"layers.{i}"
        h = rms_norm(x, p + ".input_layernorm")

        def heads(name, n):
            w = weight(f"{p}.self_attn.{name}.weight", [D, n * E])
            return op("Transpose", [op("Reshape", [op("MatMul", [h, w]), "heads" if n == H else "kv_heads"])],
                      perm=[0, 2, 1, 3])

        def repeat_kv(t):  # [B, HKV, S, E] -> [B, H, S, E], each kv head H / HKV times in a row
            return op("Reshape", [op("Expand", [op("Unsqueeze", [t, "axis2"]), "copies"]), "repeated"])

        q, k, v = heads("q_proj", H), repeat_kv(heads("k_proj", HKV)), repeat_kv(heads("v_proj", HKV))
        scores = op("Add", [op("Div", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), "scale"]), mask])
        ctx = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        ctx = op("Reshape", [op("Transpose", [ctx], perm=[0, 2, 1, 3]), "merge"])
        x = op("Add", [x, op("MatMul", [ctx, weight(f"{p}.self_attn.o_proj.weight", [D, D])])])
        m = rms_norm(x, p + ".post_attention_layernorm")
        gate = op("MatMul", [m, weight(f"{p}.mlp.gate_proj.weight", [D, FF])])
        up = op("MatMul", [m, weight(f"{p}.mlp.up_proj.weight", [D, FF])])
        act = op("Mul", [op("Mul", [gate, op("Sigmoid", [gate])]), up])
        x = op("Add", [x, op("MatMul", [act, weight(f"{p}.mlp.down_proj.weight", [FF, D])])])
    logits = op("MatMul", [rms_norm(x, "norm"), weight("lm_head.weight", [D, VOCAB])])
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    graph = helper.make_graph(nodes, "llama7b_shaped",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="llama7b_compile.py")
    model.ir_version = 8
    path = os.path.join(work, "llama7b.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    with open(os.path.join(work, data_name), "wb") as f:
        f.truncate(offset[0])  # sparse: no blocks are written
    return path, offset[0]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    os.makedirs(work, exist_ok=True)
    sptc = sys.argv[2:] or ["dotnet", "src/Spt.Cli/bin/Release/net10.0/sptc.dll"]
    path, size = build(work)
    du = subprocess.run(["du", "-k", os.path.join(work, "llama7b.data")], capture_output=True, text=True).stdout.split()[0]
    print(f"model: {path}; weights {size / 2**30:.1f} GiB as a sparse file ({du} KiB on disk)")
    for label, extra in (("recognition only (--layers 999, nothing saved)", ["--layers", "999"]),
                         ("full rewrite saved with --external-data reference", ["--external-data", "reference"])):
        report = os.path.join(work, "report.json")
        out = os.path.join(work, "out.onnx")
        for f in (report, out, out + ".data"):
            if os.path.exists(f):
                os.remove(f)
        run = subprocess.run(["/usr/bin/time", "-v", *sptc, "optimize", path, "-o", out, *extra, "--report", report],
                             capture_output=True, text=True)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", run.stderr)
        if not os.path.exists(report):
            sys.exit("sptc failed:\n" + run.stdout + run.stderr)
        r = json.load(open(report))
        t = r["timings"]
        print(f"== {label}")
        print(f"attention {r['attention']['rewritten']}/{r['attention']['found']} rewritten, "
              f"ffn {r['ffn']['rewritten']}/{r['ffn']['found']}")
        print(f"compile {t['compile_ms']:.0f} ms, load {t.get('load_ms', 0):.0f} ms, save {t.get('save_ms', 0):.0f} ms, "
              f"process wall {wall.group(1) if wall else '?'}, "
              + (f"peak RSS {int(rss.group(1)) / 1024:.0f} MiB" if rss else "peak RSS unknown"))
        if os.path.exists(out):
            own = os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0
            print(f"output {os.path.getsize(out) / 2**20:.1f} MiB + own data {own / 2**20:.1f} MiB "
                  f"(weights referenced in {os.path.basename(path)}'s data file)")
        slow = sorted(((v["ms"], k) for k, v in t["passes"].items()), reverse=True)[:5]
        print("slowest passes: " + ", ".join(f"{k} {ms:.0f} ms" for ms, k in slow))

if __name__ == "__main__":
    main()
