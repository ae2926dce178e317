#!/usr/bin/python3
"""Train the same exported ONNX model in PyTorch (CPU, eager) and print its step time and peak RSS beside
`sptc bench`'s, for dense full fine-tuning and dense LoRA.

The ONNX graph is run by a small interpreter that maps each node to the torch op of the same meaning (the
float initializers become parameters, so autograd gives the backward), which keeps the comparison on the
exact model sptc trains rather than on a hand-written twin. Full fine-tuning trains every float parameter;
LoRA (rank R, A ~ N(0, 1) and B = 0 like sptc's) adds factors to every MatMul/Gemm with a 2-D weight and
freezes the rest. Both use AdamW (lr 1e-4, weight decay 0.01) with gradient clipping at 1, batch 1 of random
tokens, the causal-LM loss on the next token. Each (variant, sequence length) runs in its own process, so
peak RSS values do not mix. Beside the wall-clock step time it reports the process CPU time per step: on a
loaded machine the wall time mostly measures the scheduler (PyTorch's OpenMP threads wait at every op's
barrier for a descheduled peer, which costs the variant with more, smaller ops the most: LoRA), while the
CPU time of a --threads 1 run stays close to the idle machine's step time.

    /usr/bin/python3 scripts/benchmarks/pytorch_compare.py MODEL.onnx [--seq 512,2048] [--steps 3] [--warmup 1]
        [--lora 16] [--threads N] [--sptc-json bench.json | --sptc "dotnet src/Spt.Cli/bin/Release/net10.0/sptc.dll"] [--json out.json]

Without --sptc-json it runs `sptc bench MODEL --seq ... --lora R --variants dense,dense-lora,spt-lora,spt`
first (the --sptc command, default the Release build in this checkout). Needs Debian's python3-torch and
python3-onnx (the system /usr/bin/python3), and an optimized BLAS under torch (libopenblas0-pthread; on CPUs newer
than Debian's OpenBLAS knows, OPENBLAS_CORETYPE=SkylakeX or Haswell): the script prints the BLAS and warns.
"""
import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(message):
    print(f"pytorch_compare: error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------- interpreter

def build_program(model_path, lora_rank):
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(model_path)
    graph = model.graph
    consumers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))

    params, consts = {}, {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        tensor = torch.from_numpy(array.copy())
        uses = consumers.get(init.name, [])
        # A parameter is a float tensor that feeds compute (not only a mask buffer sliced or selected by Where).
        is_param = tensor.is_floating_point() and tensor.dim() >= 1 and any(op not in ("Slice", "Where", "Expand", "Cast") for op, _ in uses)
        if is_param:
            params[init.name] = torch.nn.Parameter(tensor)
        else:
            consts[init.name] = tensor

    lora = {}
    if lora_rank > 0:
        gen = torch.Generator().manual_seed(0)
        for node in graph.node:
            if node.op_type in ("MatMul", "Gemm") and node.input[1] in params and params[node.input[1]].dim() == 2:
                w = params[node.input[1]]
                if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                    fan_in, fan_out = w.shape[1], w.shape[0]
                else:
                    fan_in, fan_out = w.shape[0], w.shape[1]
                a = torch.nn.Parameter(torch.randn(fan_in, lora_rank, generator=gen))
                b = torch.nn.Parameter(torch.zeros(lora_rank, fan_out))
                lora[node.input[1]] = (a, b)
        for p in params.values():
            p.requires_grad_(False)

    def attrs(node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def run(feeds):
        env = dict(consts)
        env.update(params)
        env.update(feeds)
        for node in graph.node:
            x = [env[n] if n else None for n in node.input]
            a = attrs(node)
            op = node.op_type
            if op == "Gather":
                axis = a.get("axis", 0)
                idx = x[1].long()
                if axis == 0 and x[0].dim() >= 1:
                    y = x[0][idx] if idx.dim() > 0 else x[0][int(idx)]
                else:
                    y = torch.index_select(x[0], axis, idx.reshape(-1)).reshape(x[0].shape[:axis] + idx.shape + x[0].shape[axis + 1:])
            elif op == "Shape":
                y = torch.tensor(list(x[0].shape), dtype=torch.int64)
            elif op == "Range":
                y = torch.arange(int(x[0]), int(x[1]), int(x[2]), dtype=torch.int64)
            elif op == "Unsqueeze":
                axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a["axes"]
                y = x[0]
                for ax in sorted(axes):
                    y = y.unsqueeze(ax)
            elif op == "Squeeze":
                axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("axes")
                y = x[0].squeeze() if axes is None else x[0]
                for ax in sorted(axes or [], reverse=True):
                    y = y.squeeze(ax)
            elif op == "Concat":
                y = torch.cat(x, dim=a["axis"])
            elif op == "Slice":
                data, starts, ends = x[0], x[1].tolist(), x[2].tolist()
                axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
                steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
                index = [slice(None)] * data.dim()
                for s, e, ax, st in zip(starts, ends, axes, steps):
                    index[ax] = slice(s, min(e, data.shape[ax]), st)
                y = data[tuple(index)]
            elif op == "LayerNormalization":
                axis = a.get("axis", -1)
                shape = x[0].shape[axis:] if axis >= 0 else x[0].shape[axis:]
                y = torch.nn.functional.layer_norm(x[0], shape, x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))
            elif op in ("MatMul", "Gemm"):
                w = x[1]
                if op == "Gemm":
                    lhs = x[0].t() if a.get("transA", 0) else x[0]
                    rhs = w.t() if a.get("transB", 0) else w
                    y = a.get("alpha", 1.0) * (lhs @ rhs)
                    if len(x) > 2 and x[2] is not None:
                        y = y + a.get("beta", 1.0) * x[2]
                else:
                    y = x[0] @ w
                if node.input[1] in lora:
                    la, lb = lora[node.input[1]]
                    y = y + (x[0] @ la) @ lb
            elif op == "Add":
                y = x[0] + x[1]
            elif op == "Sub":
                y = x[0] - x[1]
            elif op == "Mul":
                y = x[0] * x[1]
            elif op == "Div":
                y = x[0] / x[1]
            elif op == "Pow":
                y = x[0] ** x[1]
            elif op == "Sqrt":
                y = torch.sqrt(x[0])
            elif op == "Erf":
                y = torch.erf(x[0])
            elif op == "Tanh":
                y = torch.tanh(x[0])
            elif op == "Sigmoid":
                y = torch.sigmoid(x[0])
            elif op == "Relu":
                y = torch.relu(x[0])
            elif op == "Gelu":
                y = torch.nn.functional.gelu(x[0], approximate=a.get("approximate", b"none").decode() if isinstance(a.get("approximate"), bytes) else a.get("approximate", "none"))
            elif op == "Softmax":
                y = torch.softmax(x[0], dim=a.get("axis", -1))
            elif op == "Reshape":
                shape = [int(s) for s in x[1].tolist()]
                shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
                y = x[0].reshape(shape)
            elif op == "Transpose":
                y = x[0].permute(a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].dim())))
            elif op == "Where":
                y = torch.where(x[0].bool(), x[1], x[2])
            elif op == "Cast":
                to = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}[a["to"]]
                y = x[0].to(to)
            elif op == "ReduceMean":
                axes = a.get("axes") or (x[1].tolist() if len(x) > 1 else None)
                y = x[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))
            elif op == "Identity" or op == "Dropout":
                y = x[0]
            else:
                raise NotImplementedError(f"ONNX op {op} (node '{node.name}') has no mapping in this script")
            outs = y if isinstance(y, tuple) else (y,)
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
        return env[graph.output[0].name]

    inputs = [i.name for i in graph.input if i.name not in params and i.name not in consts]
    trainable = [p for p in params.values() if p.requires_grad] + [t for pair in lora.values() for t in pair]
    # The vocabulary: rows of the table the token ids index.
    vocab = next((env_rows for env_rows in (params.get(n.input[0], consts.get(n.input[0])).shape[0]
                                             for n in graph.node if n.op_type == "Gather" and n.input[1] == inputs[0])), None)
    if vocab is None:
        raise ValueError(f"no Gather reads the token input '{inputs[0]}': cannot tell the vocabulary")
    return run, inputs, trainable, vocab


def blas_info():
    """The BLAS library this process has loaded (torch's matmuls) and, for OpenBLAS, the kernel set it chose.

    Debian's python3-torch calls whatever libblas.so.3 the alternatives system points at: the netlib reference BLAS
    (tens of times slower) unless an optimized one such as libopenblas0-pthread is installed, and OpenBLAS 0.3.21
    picks its kernels from a table of known CPUs, falling back to SSE3 ("Prescott") on newer ones unless
    OPENBLAS_CORETYPE names a kernel set (SkylakeX for AVX-512, Haswell for AVX2)."""
    import ctypes
    paths = set()
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "blas" in os.path.basename(path).lower():
                    paths.add(os.path.realpath(path))
    except OSError:
        return {"library": "unknown", "core": None}
    core = None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            get = lib.openblas_get_corename
            get.restype = ctypes.c_char_p
            core = get().decode()
            return {"library": path, "core": core}
        except (OSError, AttributeError):
            continue
    return {"library": ", ".join(sorted(paths)) or "none found", "core": core}


def blas_warning(info):
    flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    library = info.get("library", "")
    if "openblas" not in library.lower():
        return (f"PyTorch's BLAS is {library} (not an optimized one): its matmuls will be very slow; install an "
                "optimized BLAS (Debian: apt-get install libopenblas0-pthread)")
    wanted = "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None
    if wanted and (info.get("core") or "").lower() in ("prescott", "core2", "nehalem", "generic", "katmai", "coppermine"):
        return (f"OpenBLAS chose its '{info.get('core')}' kernels on a CPU with {'AVX-512' if wanted == 'SkylakeX' else 'AVX2'}: "
                f"set OPENBLAS_CORETYPE={wanted} for PyTorch at this machine's speed")
    return None


def worker(model, variant, seq, steps, warmup, lora_rank, batch, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    start = time.perf_counter()
    run, inputs, trainable, vocab = build_program(model, lora_rank if variant == "lora" else 0)
    # foreach: one multi-tensor update per step instead of a loop of small ops per parameter, in both variants
    # (LoRA has two small factors per weight, so the per-parameter loop would cost it more than full).
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, foreach=True)
    startup = time.perf_counter() - start
    times, cpu_times = [], []
    for step in range(steps + warmup):
        t0, c0 = time.perf_counter(), time.process_time()
        ids = torch.randint(0, vocab, (batch, seq), dtype=torch.int64)
        logits = run({inputs[0]: ids})
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    print(json.dumps({
        "median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
        "median_step_cpu_s": statistics.median(cpu_times), "threads": threads,
        "startup_s": startup, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable": sum(p.numel() for p in trainable), "last_loss": float(loss), "blas": blas_info(),
    }))


# -------------------------------------------------------------------------------------------------- driver

def measure(model, variant, seq, args):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", variant, model, "--seq", str(seq),
                          "--steps", str(args.steps), "--warmup", str(args.warmup), "--lora", str(args.lora),
                          "--batch", str(args.batch), "--threads", str(args.threads)], capture_output=True, text=True,
                         # The BLAS under torch (OpenBLAS in Debian's build) keeps its own thread pool, which
                         # torch.set_num_threads does not size; it must be set before the library loads.
                         env=dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads)))
    if out.returncode != 0:
        fail(f"the PyTorch {variant} run at S={seq} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def sptc_results(args, lengths):
    if args.sptc_json:
        with open(args.sptc_json, encoding="utf-8") as f:
            return json.load(f)
    command = shlex.split(args.sptc) if args.sptc else ["dotnet", os.path.join(ROOT, "src/Spt.Cli/bin/Release/net10.0/sptc.dll")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        run = subprocess.run(command + ["bench", args.model, "--seq", ",".join(map(str, lengths)), "--steps", str(args.steps),
                                        "--warmup", str(args.warmup), "--batch", str(args.batch), "--lora", str(args.lora),
                                        "--json", path], text=True)
        if run.returncode != 0:
            fail("sptc bench failed")
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--seq", default="512,2048")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lora", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="PyTorch intra-op threads (default: every core, as sptc's sessions use)")
    parser.add_argument("--sptc-json", help="results of an earlier `sptc bench --json` run with the same settings")
    parser.add_argument("--sptc", help="the sptc command line (default: dotnet with this checkout's Release build)")
    parser.add_argument("--json", help="also write the combined results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        lengths = [int(s) for s in args.seq.split(",") if s.strip()]
    except ValueError:
        fail(f"--seq must be comma-separated lengths, got '{args.seq}'")
    if not os.path.isfile(args.model):
        fail(f"{args.model}: no such file")
    if args.worker:
        if args.threads < 1:
            fail("--threads must be at least 1")
        worker(args.model, args.worker, lengths[0], args.steps, args.warmup, args.lora, args.batch, args.threads)
        return
    if args.lora < 1:
        fail("--lora must be at least 1 (the LoRA baseline is part of the comparison)")
    if args.threads < 1:
        fail("--threads must be at least 1")

    sptc = sptc_results(args, lengths)
    rows = {r["seq"]: r for r in sptc["results"]}
    combined = []
    header = ("S", "PyTorch full ms", "PyTorch LoRA ms", "PyTorch full CPU ms", "PyTorch LoRA CPU ms", "sptc dense ms", "sptc dense-LoRA ms", "sptc SPT+LoRA ms",
              "SPT+LoRA vs PyTorch LoRA", "sptc dense vs PyTorch full", "PyTorch full RSS", "sptc dense RSS",
              "RSS dense/PyTorch", "sptc SPT+LoRA RSS")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def ms(m, key="median_step_s"):
        return f"{m[key] * 1000:.0f}" if m and m.get(key) is not None else "n/a"

    def gib(m):
        return f"{m['peak_rss_bytes'] / 2**30:.2f} GiB" if m and m.get("peak_rss_bytes") else "n/a"

    def ratio(a, b, key="median_step_s"):
        return f"{a[key] / b[key]:.2f}x" if a and b and a.get(key) and b.get(key) else "n/a"

    warned = False
    for seq in lengths:
        full = measure(args.model, "full", seq, args)
        lora = measure(args.model, "lora", seq, args)
        if not warned:
            warned = True
            blas = full.get("blas", {})
            print(f"PyTorch BLAS: {blas.get('library')} (kernels: {blas.get('core') or 'n/a'})", file=sys.stderr)
            if (warning := blas_warning(blas)) is not None:
                print(f"pytorch_compare: warning: {warning}", file=sys.stderr)
        row = rows.get(seq, {})
        dense, dense_lora, spt_lora = row.get("dense"), row.get("dense-lora"), row.get("spt-lora")
        print("| " + " | ".join([str(seq), ms(full), ms(lora), ms(full, "median_step_cpu_s"), ms(lora, "median_step_cpu_s"), ms(dense), ms(dense_lora), ms(spt_lora),
                                   ratio(spt_lora, lora), ratio(dense, full), gib(full), gib(dense),
                                   ratio(dense, full, "peak_rss_bytes"), gib(spt_lora)]) + " |", flush=True)
        combined.append({"seq": seq, "pytorch_full": full, "pytorch_lora": lora, "sptc": row})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": os.path.abspath(args.model), "steps": args.steps, "warmup": args.warmup,
                       "lora": args.lora, "results": combined}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
