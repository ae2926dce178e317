#!/usr/bin/env python3
"""GPU check of the spt CUDA kernels (run by eng/gpu-check.sh on a machine with a GPU).

Runs the kernel tests on the shared case table (tests/kernel_cases.h, read from libspt_check.so) against the
CPU kernels and against PyTorch fp64 references, then the benchmarks, and writes report.json and report.md to
--out. Tolerances (judge()): fp32 results within 1e-4 relative (max abs difference over max abs value) of the
CPU kernel; fp16/bf16 results within twice the error of a plain PyTorch implementation in the same
precision, both measured against an fp64 reference.

Only numpy is needed for the CPU parts (argument handling, references, tolerance logic, report writer: tested by
gpu/test_check.py without a GPU); torch with CUDA for the GPU parts.
"""
import argparse
import ctypes
import json
import math
import os
import platform
import sys
import time

import numpy as np

DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2}
# Unit roundoff of each I/O type: the floor of a "plain implementation" error (a result it gets exactly right
# would otherwise make the 2x rule demand exactness from a kernel that rounds its output once).
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
FP32_REL_TOL = 1e-4


# ----------------------------------------------------------------------------------------------- arguments

def parse_args(argv):
    p = argparse.ArgumentParser(prog="check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for report.json and report.md (created)")
    p.add_argument("--lib", default=None, help="path of libspt_check.so (default: next to this script's build)")
    p.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    p.add_argument("--skip-bench", action="store_true", help="kernel tests only")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="wall-clock budget; benchmarks that would start after it are skipped (default 420)")
    p.add_argument("--seq", default="1024,2048,4096,8192", help="sequence lengths of the attention benchmark")
    args = p.parse_args(argv)
    try:
        args.seq = [int(s) for s in args.seq.split(",") if s.strip()]
    except ValueError:
        p.error("--seq must be a comma-separated list of integers")
    if not args.seq or any(s < 8 for s in args.seq):
        p.error("--seq values must be >= 8")
    if args.budget_s <= 0:
        p.error("--budget-s must be > 0")
    return args


# ----------------------------------------------------------------------------------------------- library

class Lib:
    """libspt_check.so through ctypes; every call raises RuntimeError with the library's message on failure."""

    def __init__(self, path):
        self.dll = ctypes.CDLL(path)
        self.dll.spt_last_error.restype = ctypes.c_char_p
        self.dll.spt_cases_json.restype = ctypes.c_char_p
        for name in ("spt_cuda_sparse_attention_grad_ws", "spt_cuda_pq_loss_ws", "spt_cuda_pq_loss_grad_ws",
                     "spt_cuda_routed_ffn_ws", "spt_cuda_routed_ffn_grad_ws"):
            if hasattr(self.dll, name):
                getattr(self.dll, name).restype = ctypes.c_int64
        self.has_cuda = bool(self.dll.spt_has_cuda())

    def cases(self):
        return json.loads(self.dll.spt_cases_json().decode())

    def call(self, name, *args):
        rc = getattr(self.dll, name)(*args)
        if rc != 0:
            raise RuntimeError(f"{name}: {self.dll.spt_last_error().decode()}")

    def size(self, name, *args):
        n = getattr(self.dll, name)(*args)
        if n < 0:
            raise RuntimeError(f"{name}: {self.dll.spt_last_error().decode()}")
        return n


def i64(values):
    return (ctypes.c_int64 * len(values))(*[int(v) for v in values])


def ptr(a):
    """ctypes pointer of a numpy array (None stays NULL)."""
    if a is None:
        return None
    assert a.flags["C_CONTIGUOUS"]
    return ctypes.c_void_p(a.ctypes.data)


def ptrs(arrays):
    return (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])


# ----------------------------------------------------------------------------------------------- tolerances

def rel_err(got, want):
    """max |got - want| / max |want| (want all zero: the absolute error)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape {got.shape} != {want.shape}")
    if got.size == 0:
        return 0.0
    if not np.all(np.isfinite(got)):
        return math.inf
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    return diff / scale if scale > 0 else diff


def judge(dtype, err, plain_err=None):
    """(passed, limit). fp32: err is against the CPU kernel, limit 1e-4. fp16/bf16: err and plain_err are both
    against fp64; limit twice the plain implementation's error (at least one unit roundoff)."""
    if dtype == "fp32":
        limit = FP32_REL_TOL
    else:
        if plain_err is None:
            raise ValueError("fp16/bf16 need the plain implementation's error")
        limit = 2.0 * max(plain_err, UNIT_ROUNDOFF[dtype])
    return bool(err <= limit), limit


# ----------------------------------------------------------------------------------------------- references

def kv_head(h, H, Hkv):
    return h // (H // Hkv)


def ref_sparse_attention(q, k, v, idx, bias, scale, clamp, causal):
    """fp64 fixed-k sparse attention (cpu/sparse_attention.h): q [B,H,Sq,E], k/v [B,Hkv,Sk,*], idx [B,H,Sq,L]."""
    B, H, Sq, _ = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    L = idx.shape[3]
    y = np.zeros((B, H, Sq, v.shape[3]))
    p = np.zeros((B, H, Sq, L))
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            for i in range(Sq):
                a = np.full(L, -np.inf)
                for t in range(L):
                    j = idx[b, h, i, t]
                    if j < 0 or (causal and j > i + Sk - Sq) or (bias is not None and not bias[b, j] > -1e30):
                        continue
                    s = scale * float(np.dot(q[b, h, i].astype(np.float64), k[b, g, j].astype(np.float64)))
                    if clamp > 0:
                        s = min(max(s, -clamp), clamp)
                    a[t] = s + (float(bias[b, j]) if bias is not None else 0.0)
                if not np.any(np.isfinite(a)):
                    continue
                e = np.where(np.isfinite(a), np.exp(a - np.max(a)), 0.0)
                p[b, h, i] = e / e.sum()
                for t in range(L):
                    if p[b, h, i, t] != 0:
                        y[b, h, i] += p[b, h, i, t] * v[b, g, idx[b, h, i, t]]
    return y, p


def ref_sparse_attention_grad(dy, q, k, v, idx, p, scale, clamp):
    """fp64 backward from P (spec 2.7): ds = p (dp - c) scale [clamp passes]; dK/dV summed over kv groups."""
    B, H, Sq, _ = q.shape
    Hkv = k.shape[1]
    dq = np.zeros(q.shape)
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            for i in range(Sq):
                js = idx[b, h, i]
                pr = p[b, h, i].astype(np.float64)
                live = (js >= 0) & (pr != 0)
                dp = np.array([float(np.dot(dy[b, h, i], v[b, g, j])) if ok else 0.0 for j, ok in zip(js, live)])
                c = float(np.sum(pr * dp))
                ds = np.zeros(len(js))
                for t, (j, ok) in enumerate(zip(js, live)):
                    if not ok:
                        continue
                    a = scale * float(np.dot(q[b, h, i], k[b, g, j]))
                    if clamp > 0 and (a < -clamp or a > clamp):
                        continue
                    ds[t] = pr[t] * (dp[t] - c) * scale
                    dq[b, h, i] += ds[t] * k[b, g, j]
                    dk[b, g, j] += ds[t] * q[b, h, i]
                for t, (j, ok) in enumerate(zip(js, live)):
                    if ok:
                        dv[b, g, j] += pr[t] * dy[b, h, i]
    return dq, dk, dv


def ref_topk_exact(cq, ck, keep, L, causal, window=0):
    """Brute force of PQTopK exact: per row the L eligible keys with most matching codes (ties: lower key),
    ascending, then -1. window > 0: only keys within window - 1 of the aligned position (and, causal, <= it)."""
    B, H, Sq, _ = cq.shape
    Hkv, Sk = ck.shape[1], ck.shape[2]
    out = np.full((B, H, Sq, L), -1, dtype=np.int32)
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv)
            counts = (cq[b, h][:, None, :] == ck[b, g][None, :, :]).sum(-1)
            for i in range(Sq):
                pos = i + Sk - Sq
                ranked = []
                for j in range(Sk):
                    if causal and j > pos:
                        continue
                    if window > 0 and (j < pos - window + 1 or (not causal and j > pos + window - 1)):
                        continue
                    if keep is not None and not keep[b, j]:
                        continue
                    ranked.append((-int(counts[i, j]), j))
                ranked.sort()
                keys = sorted(j for _, j in ranked[:L])
                out[b, h, i, :len(keys)] = keys
    return out


def ref_pq_encode(z, w):
    """codes [N, M]: L1-nearest codeword per subspace in fp64, ties to the lowest index."""
    M, C, dc = w.shape
    zz = z.reshape(-1, M, dc).astype(np.float64)
    dist = np.abs(zz[:, :, None, :] - w.astype(np.float64)[None]).sum(-1)  # [N, M, C]
    return np.argmin(dist, axis=-1).astype(np.int32)


def ref_pq_loss(z, w):
    """Spec 2.3 in fp64: mean((zs - zh)^2) + mean((z - zh)^2)."""
    M, C, dc = w.shape
    zz = z.reshape(-1, M, dc).astype(np.float64)
    ww = w.astype(np.float64)
    dist = np.abs(zz[:, :, None, :] - ww[None]).sum(-1)
    hard = np.argmin(dist, axis=-1)
    inv = 1.0 / np.maximum(dist, 1e-5)
    alpha = inv / inv.sum(-1, keepdims=True)
    soft = np.einsum("nmc,mcd->nmd", alpha, ww)
    zh = ww[np.arange(M)[None, :], hard]
    return float(np.mean((soft - zh) ** 2) + np.mean((zz - zh) ** 2))


def ffn_weights(case, rng):
    """Random RoutedFFN inputs for a case (fp32 numpy): x and the 13 weight slots (None = absent)."""
    T, d, F, nb = case["tokens"], case["d_model"], case["d_ff"], case["n_blocks"]
    r1, r2, r3 = case["rank1"], case["rank2"], case["rank3"]
    swiglu = case["activation"] in (4, 5, 6, 7)
    n = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    w = [n(d, F), n(F) if case["biases"] else None, n(F, d), n(d) if case["biases"] else None,
         (2 * n(d, nb)), n(nb) if case["biases"] else None, n(d, F) if swiglu else None,
         n(d, r1) if r1 else None, n(r1, F) if r1 else None, n(F, r2) if r2 else None, n(r2, d) if r2 else None,
         n(d, r3) if r3 else None, n(r3, F) if r3 else None]
    return rng.standard_normal((T, d)).astype(np.float32), w


def ffn_config(case):
    return [case[k] for k in ("tokens", "d_model", "d_ff", "n_blocks", "top_k", "rank1", "rank2", "rank3",
                              "activation", "gate")]


def ffn_grad_shapes(case, w):
    """Shapes of the 14 gradients the backward can produce for this case (None = does not apply)."""
    T, d, F, nb = case["tokens"], case["d_model"], case["d_ff"], case["n_blocks"]
    src = [(T, d), (d, nb), (nb,) if w[5] is not None else None, (d, F), (F,) if w[1] is not None else None, (F, d),
           (d,) if w[3] is not None else None, (d, F) if w[6] is not None else None]
    for a in (7, 8, 9, 10, 11, 12):
        src.append(w[a].shape if w[a] is not None else None)
    return src


# ----------------------------------------------------------------------------------------------- CPU runs

def random_indices(rng, B, H, Sq, Sk, L):
    return rng.integers(-1, Sk, size=(B, H, Sq, L)).astype(np.int32)


def attention_inputs(rng, c):
    """Random fp32 Q, K, V, dY and indices (sentinels and repeats included) for an attention case."""
    B, H, Hkv, Sq, Sk, E, Ev, L = (c[x] for x in ("B", "H", "Hkv", "Sq", "Sk", "E", "Ev", "L"))
    q = rng.standard_normal((B, H, Sq, E)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Sk, E)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Sk, Ev)).astype(np.float32)
    dy = rng.standard_normal((B, H, Sq, Ev)).astype(np.float32)
    return q, k, v, dy, random_indices(rng, B, H, Sq, Sk, L)


def cpu_sparse_attention(lib, q, k, v, idx, bias, scale, clamp, causal):
    B, H, Sq, E = q.shape
    Hkv, Sk, Ev = k.shape[1], k.shape[2], v.shape[3]
    L = idx.shape[3]
    y = np.zeros((B, H, Sq, Ev), np.float32)
    p = np.zeros((B, H, Sq, L), np.float32)
    lib.call("spt_cpu_sparse_attention", i64([B, H, Hkv, Sq, Sk, E, Ev, L]), ctypes.c_double(scale),
             ctypes.c_double(clamp), int(causal), ptr(q), ptr(k), ptr(v), ptr(idx), ptr(bias), ptr(y), ptr(p))
    return y, p


def cpu_sparse_attention_grad(lib, dy, q, k, v, idx, p, scale, clamp, causal):
    B, H, Sq, E = q.shape
    Hkv, Sk, Ev = k.shape[1], k.shape[2], v.shape[3]
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    lib.call("spt_cpu_sparse_attention_grad", i64([B, H, Hkv, Sq, Sk, E, Ev, idx.shape[3]]), ctypes.c_double(scale),
             ctypes.c_double(clamp), int(causal), ptr(dy), ptr(q), ptr(k), ptr(v), ptr(idx), ptr(p), ptr(dq), ptr(dk),
             ptr(dv))
    return dq, dk, dv


def cpu_topk(lib, cq, ck, keep, L, mode, causal):
    B, H, Sq, M = cq.shape
    out = np.zeros((B, H, Sq, L), np.int32)
    lib.call("spt_cpu_pq_topk", i64([B, H, ck.shape[1], Sq, ck.shape[2], M, L]), int(mode), int(causal), ptr(cq),
             ptr(ck), ptr(keep), ptr(out))
    return out


def cpu_pq_encode(lib, z, w):
    M, C, dc = w.shape
    codes = np.zeros((z.shape[0], M), np.int32)
    lib.call("spt_cpu_pq_encode", i64([z.shape[0], M, C, dc]), ptr(z), ptr(w), ptr(codes))
    return codes


def cpu_pq_loss(lib, z, w):
    M, C, dc = w.shape
    loss = np.zeros(1, np.float32)
    lib.call("spt_cpu_pq_loss", i64([z.shape[0], M, C, dc]), ptr(z), ptr(w), ptr(loss))
    return float(loss[0])


def cpu_pq_loss_grad(lib, z, w, dloss, detach):
    M, C, dc = w.shape
    dz, dw = np.zeros_like(z), np.zeros_like(w)
    lib.call("spt_cpu_pq_loss_grad", i64([z.shape[0], M, C, dc]), ctypes.c_float(dloss), ptr(z), ptr(w), int(detach),
             ptr(dz), ptr(dw))
    return dz, dw


def cpu_ffn(lib, case, x, w, dy=None):
    """Forward (and backward when dy is given) of the CPU kernel: y, probs, sel, pre, grads (14, None = absent)."""
    T, d, nb, k = case["tokens"], case["d_model"], case["n_blocks"], case["top_k"]
    bs = case["d_ff"] // nb
    pw = 2 * bs if case["activation"] in (4, 5, 6, 7) else bs
    y = np.zeros((T, d), np.float32)
    probs = np.zeros((T, nb), np.float32)
    sel = np.zeros((T, k), np.int32)
    pre = np.zeros((T * k, pw), np.float32)
    cfg = i64(ffn_config(case))
    lib.call("spt_cpu_routed_ffn", cfg, ptrs(w), ptr(x), ptr(y), ptr(probs), ptr(sel), ptr(pre))
    grads = None
    if dy is not None:
        grads = [None if s is None else np.zeros(s, np.float32) for s in ffn_grad_shapes(case, w)]
        lib.call("spt_cpu_routed_ffn_grad", cfg, ptrs(w), ptr(x), ptr(dy), ptr(probs), ptr(sel), ptr(pre), ptrs(grads))
    return y, probs, sel, pre, grads


def cpu_self_check(lib, seed=0):
    """The CPU kernels on the case table against this file's fp64 references: checks the references (and the
    ctypes plumbing) the GPU tests rely on. Returns a list of result rows."""
    rng = np.random.default_rng(seed)
    rows = []
    cases = lib.cases()
    for c in cases["attention"]:
        for causal in (True, False):
            q, k, v, dy, idx = attention_inputs(rng, c)
            scale, clamp = 1.0 / math.sqrt(c["E"]), 1.5
            y, p = cpu_sparse_attention(lib, q, k, v, idx, None, scale, clamp, causal)
            yr, pr = ref_sparse_attention(q, k, v, idx, None, scale, clamp, causal)
            dq, dk, dv = cpu_sparse_attention_grad(lib, dy, q, k, v, idx, p, scale, clamp, causal)
            gr = ref_sparse_attention_grad(dy, q, k, v, idx, p, scale, clamp)
            err = max(rel_err(y, yr), rel_err(p, pr), *(rel_err(a, b) for a, b in zip((dq, dk, dv), gr)))
            rows.append({"op": "SparseAttention(+Grad)", "case": c, "causal": causal, "err": err})
    for c in cases["topk"]:
        B, H, Hkv, Sq, Sk, M, L = (c[x] for x in ("B", "H", "Hkv", "Sq", "Sk", "M", "L"))
        cq = rng.integers(0, 3, (B, H, Sq, M)).astype(np.int32)
        ck = rng.integers(0, 3, (B, Hkv, Sk, M)).astype(np.int32)
        keep = (rng.integers(0, 4, (B, Sk)) != 0).astype(np.uint8) if c["masked"] else None
        got = cpu_topk(lib, cq, ck, keep, L, 0, c["causal"])
        rows.append({"op": "PQTopK", "case": c, "err": float(np.sum(got != ref_topk_exact(cq, ck, keep, L, c["causal"])))})
    for c in cases["pq"]:
        z = rng.standard_normal((c["N"], c["M"] * c["dc"])).astype(np.float32)
        w = rng.standard_normal((c["M"], c["C"], c["dc"])).astype(np.float32)
        mism = float(np.sum(cpu_pq_encode(lib, z, w) != ref_pq_encode(z, w)))
        rows.append({"op": "PQEncode", "case": c, "err": mism})
        rows.append({"op": "PQLoss", "case": c, "err": rel_err([cpu_pq_loss(lib, z, w)], [ref_pq_loss(z, w)])})
    return rows


# ----------------------------------------------------------------------------------------------- report

def write_report(out_dir, report):
    """report.json (everything) and report.md (the tables) in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=str)
    lines = ["# spt GPU check", ""]
    env = report.get("environment", {})
    if env:
        lines += [f"- {k}: {v}" for k, v in sorted(env.items())] + [""]
    tests = report.get("tests", [])
    if tests:
        failed = [t for t in tests if not t["passed"]]
        lines += [f"## Kernel tests: {len(tests) - len(failed)} passed, {len(failed)} failed", "",
                  "| op | dtype | case | error | limit | result |", "|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {t['op']} | {t['dtype']} | {t['case']} | {t['err']:.3g} | {t['limit']:.3g} | "
                         f"{'ok' if t['passed'] else 'FAIL'} |")
        lines.append("")
    for bench in report.get("benchmarks", []):
        lines += [f"## {bench['title']}", ""]
        cols = bench["columns"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in bench["rows"]:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# ----------------------------------------------------------------------------------------------- GPU parts

def gpu_run(args, lib, report, t0):
    import torch  # only on the GPU machine

    from gpu_kernels import GpuKernels, run_gpu_tests, run_benchmarks  # noqa: E402  (same folder)
    kern = GpuKernels(lib, torch)
    report["environment"].update({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                  "cuda": torch.version.cuda})
    if not args.skip_tests:
        report["tests"] = run_gpu_tests(kern, torch)
    if not args.skip_bench:
        report["benchmarks"], notes = run_benchmarks(kern, torch, args.seq, t0 + args.budget_s)
        report["notes"] += notes


def gpu_available():
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    here = os.path.dirname(os.path.abspath(__file__))
    lib_path = args.lib or os.path.join(here, "..", "..", "..", "build", "gpu-check", "libspt_check.so")
    lib = Lib(lib_path)
    report = {"environment": {"host": platform.node(), "python": platform.python_version(), "cuda_kernels": lib.has_cuda},
              "tests": [], "benchmarks": [], "notes": []}
    rows = cpu_self_check(lib)
    bad = [r for r in rows if r["err"] > 1e-4]
    report["notes"].append(f"CPU kernels vs the harness's fp64 references: {len(rows) - len(bad)}/{len(rows)} agree")
    status = 0 if not bad else 1
    gpu = gpu_available() if lib.has_cuda else False
    if not lib.has_cuda:
        report["notes"].append("library built without CUDA: GPU tests and benchmarks skipped")
        status = status or 3
    elif not gpu:
        report["notes"].append("no GPU visible to PyTorch (or no CUDA build of it): GPU tests and benchmarks skipped")
        status = status or 3
    else:
        sys.path.insert(0, here)
        gpu_run(args, lib, report, t0)
        if any(not t["passed"] for t in report["tests"]):
            status = 1
    report["environment"]["wall_s"] = round(time.time() - t0, 1)
    write_report(args.out, report)
    print(f"check: report in {args.out} ({report['environment']['wall_s']} s); status {status} "
          "(0 passed, 1 a test failed, 3 no GPU run)")
    return status


if __name__ == "__main__":
    sys.exit(main())
