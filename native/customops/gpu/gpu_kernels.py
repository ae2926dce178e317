"""GPU side of check.py: the CUDA kernels on torch tensors, their tests against the CPU kernels and PyTorch, and
the benchmarks. Imported only where torch has CUDA."""
import ctypes
import math
import time

import numpy as np

from check import (DTYPES, attention_inputs, cpu_ffn, cpu_pq_encode, cpu_pq_loss, cpu_pq_loss_grad, cpu_sparse_attention,
                   cpu_sparse_attention_grad, cpu_topk, ffn_config, ffn_grad_shapes, ffn_weights, i64, judge,
                   ref_topk_exact, rel_err)


class GpuKernels:
    """The CUDA entry points of libspt_check.so on torch tensors, on torch's current stream; workspaces are torch
    tensors, so torch.cuda.max_memory_allocated sees them."""

    def __init__(self, lib, torch):
        self.lib, self.torch = lib, torch
        self.tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def p(self, t):
        return None if t is None else ctypes.c_void_p(t.data_ptr())

    def stream(self):
        return ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)

    def ws(self, nbytes):
        return self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device="cuda")

    def sparse_attention(self, dt, q, k, v, idx, bias, scale, clamp, causal):
        B, H, Sq, E = q.shape
        Hkv, Sk, Ev = k.shape[1], k.shape[2], v.shape[3]
        y = self.torch.empty((B, H, Sq, Ev), dtype=q.dtype, device="cuda")
        pr = self.torch.empty((B, H, Sq, idx.shape[3]), dtype=q.dtype, device="cuda")
        self.lib.call("spt_cuda_sparse_attention", i64([B, H, Hkv, Sq, Sk, E, Ev, idx.shape[3]]), ctypes.c_double(scale),
                      ctypes.c_double(clamp), int(causal), DTYPES[dt], self.p(q), self.p(k), self.p(v), self.p(idx),
                      self.p(bias), self.p(y), self.p(pr), self.stream())
        return y, pr

    def sparse_attention_grad(self, dt, dy, q, k, v, idx, pr, scale, clamp, causal):
        B, H, Sq, E = q.shape
        dims = i64([B, H, k.shape[1], Sq, k.shape[2], E, v.shape[3], idx.shape[3]])
        ws = self.ws(self.lib.size("spt_cuda_sparse_attention_grad_ws", dims))
        dq, dk, dv = self.torch.empty_like(q), self.torch.empty_like(k), self.torch.empty_like(v)
        self.lib.call("spt_cuda_sparse_attention_grad", dims, ctypes.c_double(scale), ctypes.c_double(clamp), int(causal),
                      DTYPES[dt], self.p(dy), self.p(q), self.p(k), self.p(v), self.p(idx), self.p(pr), self.p(dq),
                      self.p(dk), self.p(dv), self.p(ws), self.stream())
        return dq, dk, dv

    def topk(self, cq, ck, keep, L, mode, causal, window=0):
        B, H, Sq, M = cq.shape
        out = self.torch.empty((B, H, Sq, L), dtype=self.torch.int32, device="cuda")
        self.lib.call("spt_cuda_pq_topk", i64([B, H, ck.shape[1], Sq, ck.shape[2], M, L]), int(mode), int(causal),
                      ctypes.c_int64(window), self.p(cq), self.p(ck), self.p(keep), self.p(out), self.stream())
        return out

    def pq_encode(self, dt, z, w):
        M, C, dc = w.shape
        codes = self.torch.empty((z.shape[0], M), dtype=self.torch.int32, device="cuda")
        self.lib.call("spt_cuda_pq_encode", i64([z.shape[0], M, C, dc]), DTYPES[dt], self.p(z), self.p(w),
                      self.p(codes), self.stream())
        return codes

    def pq_loss(self, dt, z, w):
        dims = i64([z.shape[0], *w.shape])
        ws = self.ws(self.lib.size("spt_cuda_pq_loss_ws", dims))
        loss = self.torch.empty(1, dtype=self.torch.float32, device="cuda")
        self.lib.call("spt_cuda_pq_loss", dims, DTYPES[dt], self.p(z), self.p(w), self.p(loss), self.p(ws), self.stream())
        return loss

    def pq_loss_grad(self, dt, z, w, dloss, detach):
        dims = i64([z.shape[0], *w.shape])
        ws = self.ws(self.lib.size("spt_cuda_pq_loss_grad_ws", dims))
        dl = self.torch.tensor([dloss], dtype=self.torch.float32, device="cuda")
        dz, dw = self.torch.empty_like(z), self.torch.empty_like(w)
        self.lib.call("spt_cuda_pq_loss_grad", dims, DTYPES[dt], self.p(dl), self.p(z), self.p(w), int(detach),
                      self.p(dz), self.p(dw), self.p(ws), self.stream())
        return dz, dw

    def ffn(self, dt, case, x, w, dy=None, grad_mask=None):
        """Forward (+ backward when dy is given) on the device; grad_mask: which of the 14 grads to produce."""
        torch = self.torch
        T, d, nb, k = case["tokens"], case["d_model"], case["n_blocks"], case["top_k"]
        bs = case["d_ff"] // nb
        pw = 2 * bs if case["activation"] in (4, 5, 6, 7) else bs
        cfg = i64(ffn_config(case))
        wp = (ctypes.c_void_p * 13)(*[None if a is None else a.data_ptr() for a in w])
        y = torch.empty((T, d), dtype=x.dtype, device="cuda")
        probs = torch.empty((T, nb), dtype=x.dtype, device="cuda")
        sel = torch.empty((T, k), dtype=torch.int32, device="cuda")
        pre = torch.empty((T * k, pw), dtype=x.dtype, device="cuda")
        ws = self.ws(self.lib.size("spt_cuda_routed_ffn_ws", cfg, DTYPES[dt]))
        self.lib.call("spt_cuda_routed_ffn", cfg, DTYPES[dt], wp, self.p(x), self.p(y), self.p(probs), self.p(sel),
                      self.p(pre), self.p(ws), self.stream())
        grads = None
        if dy is not None:
            shapes = ffn_grad_shapes(case, w)
            grads = [None if s is None or (grad_mask is not None and not grad_mask[i]) else
                     torch.empty(s, dtype=x.dtype, device="cuda") for i, s in enumerate(shapes)]
            gp = (ctypes.c_void_p * 14)(*[None if g is None else g.data_ptr() for g in grads])
            ws2 = self.ws(self.lib.size("spt_cuda_routed_ffn_grad_ws", cfg, DTYPES[dt], gp))
            self.lib.call("spt_cuda_routed_ffn_grad", cfg, DTYPES[dt], wp, self.p(x), self.p(dy), self.p(probs),
                          self.p(sel), self.p(pre), gp, self.p(ws2), self.stream())
        return y, probs, sel, pre, grads


# ----------------------------------------------------------------------------------------------- PyTorch side

def torch_sparse_attention(torch, q, k, v, idx, bias, scale, clamp, causal):
    """Plain differentiable fixed-k sparse attention in the tensors' own precision (the 'plain implementation'
    of the tolerance rule; in fp64 it is the PyTorch reference)."""
    B, H, Sq, E = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = H // Hkv
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    j = idx.long()
    valid = j >= 0
    jc = j.clamp(min=0)
    kg = torch.gather(kk.unsqueeze(2).expand(B, H, Sq, Sk, E), 3,
                      jc.unsqueeze(-1).expand(B, H, Sq, idx.shape[3], E))
    vg = torch.gather(vv.unsqueeze(2).expand(B, H, Sq, Sk, v.shape[3]), 3,
                      jc.unsqueeze(-1).expand(B, H, Sq, idx.shape[3], v.shape[3]))
    a = scale * (q.unsqueeze(3) * kg).sum(-1)
    if clamp > 0:
        a = a.clamp(-clamp, clamp)
    i = torch.arange(Sq, device=q.device).view(1, 1, Sq, 1)
    if causal:
        valid = valid & (j <= i + Sk - Sq)
    if bias is not None:
        bj = torch.gather(bias.view(B, 1, 1, Sk).expand(B, H, Sq, Sk), 3, jc).to(a.dtype)
        valid = valid & (bj > -1e30)
        a = a + torch.where(valid, bj, torch.zeros_like(bj))
    # Skipped slots get a large finite negative logit (exp underflows to exactly 0 next to any kept one) and are
    # zeroed, so a row with nothing kept gives P = 0 and finite gradients, as the kernels do.
    a = a.masked_fill(~valid, -30000.0)
    p = torch.softmax(a, dim=-1) * valid.to(a.dtype)
    return (p.unsqueeze(-1) * vg).sum(3), p


def run_gpu_tests(kern, torch):
    """Every op on the shared cases: fp32 vs the CPU kernel (1e-4), fp16/bf16 vs fp64 within twice the plain
    implementation's error; PQTopK/PQEncode exactly. Returns result rows."""
    lib = kern.lib
    cases = lib.cases()
    rows = []
    rng = np.random.default_rng(1)
    dev = "cuda"

    def add(op, dt, case, err, plain=None, exact=False):
        if exact:
            passed, limit = err == 0, 0.0
        else:
            passed, limit = judge(dt, err, plain)
        rows.append({"op": op, "dtype": dt, "case": str(case), "err": float(err), "limit": float(limit),
                     "passed": bool(passed)})

    for c in cases["attention"]:
        for causal in (True, False):
            q, k, v, dy, idx = attention_inputs(rng, c)
            bias = np.where(rng.integers(0, 5, (c["B"], c["Sk"])) == 0, -np.inf, 0.0).astype(np.float32)
            scale, clamp = 1.0 / math.sqrt(c["E"]), 1.5
            yc, pc = cpu_sparse_attention(lib, q, k, v, idx, bias, scale, clamp, causal)
            gc = cpu_sparse_attention_grad(lib, dy, q, k, v, idx, pc, scale, clamp, causal)
            t = lambda a, dtype: torch.tensor(a, device=dev, dtype=dtype)  # noqa: E731
            ti = t(idx, torch.int32)
            tb = t(bias, torch.float32)
            # fp64 PyTorch reference (autograd for the gradients).
            ref_in = [t(a, torch.float64).requires_grad_() for a in (q, k, v)]
            yr, pr = torch_sparse_attention(torch, *ref_in, ti, tb, scale, clamp, causal)
            yr.backward(t(dy, torch.float64))
            gref = [a.grad for a in ref_in]
            for dt in ("fp32", "fp16", "bf16"):
                td = kern.tdtype[dt]
                qd, kd, vd, dyd = (t(a, td) for a in (q, k, v, dy))
                y, pp = kern.sparse_attention(dt, qd, kd, vd, ti, tb, scale, clamp, causal)
                g = kern.sparse_attention_grad(dt, dyd, qd, kd, vd, ti, pp, scale, clamp, causal)
                torch.cuda.synchronize()
                outs = [("Y", y, yc, yr), ("P", pp, pc, pr)] + [
                    (n, a, b, r) for n, a, b, r in zip(("dQ", "dK", "dV"), g, gc, gref)]
                if dt == "fp32":
                    for n, a, b, r in outs:
                        add(f"SparseAttention {n} vs CPU", dt, c, rel_err(a.cpu().numpy(), b))
                        add(f"SparseAttention {n} vs PyTorch fp64", dt, c, rel_err(a.double().cpu().numpy(),
                                                                                   r.detach().cpu().numpy()))
                else:
                    plain_in = [t(a, td).requires_grad_() for a in (q, k, v)]
                    yp, ppl = torch_sparse_attention(torch, *plain_in, ti, tb, scale, clamp, causal)
                    yp.backward(t(dy, td))
                    plain = [yp, ppl] + [a.grad for a in plain_in]
                    for (n, a, _, r), pl in zip(outs, plain):
                        rr = r.detach().double().cpu().numpy()
                        add(f"SparseAttention {n} vs fp64", dt, c, rel_err(a.double().cpu().numpy(), rr),
                            rel_err(pl.detach().double().cpu().numpy(), rr))
    for c in cases["topk"]:
        B, H, Hkv, Sq, Sk, M, L = (c[x] for x in ("B", "H", "Hkv", "Sq", "Sk", "M", "L"))
        cq = rng.integers(0, 3, (B, H, Sq, M)).astype(np.int32)
        ck = rng.integers(0, 3, (B, Hkv, Sk, M)).astype(np.int32)
        keep = (rng.integers(0, 4, (B, Sk)) != 0).astype(np.uint8) if c["masked"] else None
        tq, tk = torch.tensor(cq, device=dev), torch.tensor(ck, device=dev)
        tkeep = torch.tensor(keep, device=dev) if keep is not None else None
        for mode in (0, 1):
            got = kern.topk(tq, tk, tkeep, L, mode, c["causal"]).cpu().numpy()
            want = cpu_topk(lib, cq, ck, keep, L, mode, c["causal"])
            add(f"PQTopK {'bucketed' if mode else 'exact'} vs CPU", "int32", c, float(np.sum(got != want)), exact=True)
        window = max(2, Sk // 3)
        got = kern.topk(tq, tk, tkeep, L, 0, c["causal"], window).cpu().numpy()
        add(f"PQTopK exact window={window} vs brute force", "int32", c,
            float(np.sum(got != ref_topk_exact(cq, ck, keep, L, c["causal"], window))), exact=True)
    for c in cases["pq"]:
        z = rng.standard_normal((c["N"], c["M"] * c["dc"])).astype(np.float32)
        w = rng.standard_normal((c["M"], c["C"], c["dc"])).astype(np.float32)
        for dt in ("fp32", "fp16", "bf16"):
            td = kern.tdtype[dt]
            zd, wd = torch.tensor(z, device=dev, dtype=td), torch.tensor(w, device=dev, dtype=td)
            # The CPU kernel on the same (rounded) values: the codes must agree exactly.
            zr, wr = zd.float().cpu().numpy(), wd.float().cpu().numpy()
            add("PQEncode vs CPU", dt, c, float(np.sum(kern.pq_encode(dt, zd, wd).cpu().numpy() != cpu_pq_encode(lib, zr, wr))),
                exact=True)
            loss = float(kern.pq_loss(dt, zd, wd).cpu()[0])
            dz, dw = kern.pq_loss_grad(dt, zd, wd, 0.7, False)
            dzc, dwc = cpu_pq_loss_grad(lib, zr, wr, 0.7, False)
            # fp16/bf16: the inputs are the rounded values, so the only rounding left is the output's.
            plain = None if dt == "fp32" else 1.0 / {"fp16": 2048.0, "bf16": 256.0}[dt]
            add("PQLoss vs CPU", dt, c, rel_err([loss], [cpu_pq_loss(lib, zr, wr)]), plain)
            add("PQLossGrad dZ vs CPU", dt, c, rel_err(dz.float().cpu().numpy(), dzc), plain)
            add("PQLossGrad dW vs CPU", dt, c, rel_err(dw.float().cpu().numpy(), dwc), plain)
    for c in cases["ffn"]:
        x, w = ffn_weights(c, rng)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        yc, pc, sc, uc, gc = cpu_ffn(lib, c, x, w, dy)
        # fp32 only: the fp16/bf16 RoutedFFN paths (same code, cuBLAS in the I/O type) have no plain PyTorch
        # counterpart here yet; the benchmark runs them in fp16.
        for dt in ("fp32",):
            td = kern.tdtype[dt]
            tw = [None if a is None else torch.tensor(a, device=dev, dtype=td) for a in w]
            y, pp, ss, uu, g = kern.ffn(dt, c, torch.tensor(x, device=dev, dtype=td), tw,
                                         torch.tensor(dy, device=dev, dtype=td))
            torch.cuda.synchronize()
            add("RoutedFFN Sel vs CPU", "int32", c, float(np.sum(ss.cpu().numpy() != sc)), exact=True)
            for n, a, b in (("Y", y, yc), ("P", pp, pc), ("U", uu, uc)):
                add(f"RoutedFFN {n} vs CPU", dt, c, rel_err(a.float().cpu().numpy(), b))
            names = ("dX", "dWr", "dbr", "dW1", "db1", "dW2", "db2", "dW3", "dA1", "dB1", "dA2", "dB2", "dA3", "dB3")
            for n, a, b in zip(names, g, gc):
                if a is not None:
                    add(f"RoutedFFNGrad {n} vs CPU", dt, c, rel_err(a.float().cpu().numpy(), b))
    return rows


# ----------------------------------------------------------------------------------------------- benchmarks

def timed(torch, fn, reps=10, warmup=3):
    """Median ms of fn() over reps (CUDA events) and the peak memory of one call beyond what was allocated."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return float(np.median(times)), peak / 2 ** 20


def run_benchmarks(kern, torch, seqs, deadline):
    """SparseAttention fwd+bwd vs SDPA backends and unfused attention; RoutedFFN vs the dense FFN."""
    notes = []
    benches = []
    dt, td = "fp16", torch.float16
    att = {"title": "Attention forward+backward, fp16, causal, L = S/8, B*S = 16384 tokens, H = 16",
           "columns": ["S", "E", "impl", "ms", "TFLOP/s dense", "TFLOP/s useful", "peak MiB"], "rows": []}
    from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3
    backends = {"sdpa default": None, "sdpa flash": SDPBackend.FLASH_ATTENTION,
                "sdpa efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa math": SDPBackend.MATH}
    for E in (64, 128):
        for S in seqs:
            if time.time() > deadline:
                notes.append(f"attention S={S} E={E} skipped: time budget")
                continue
            H = 16
            B = max(1, 16384 // S)
            L = max(1, S // 8)
            dense_flops = 4.0 * B * H * S * S * E * 3 / 2  # fwd 2 GEMMs + bwd 4, causal halves: x 3 / 2 total
            useful_flops = 4.0 * B * H * S * L * E * 3
            q, k, v = (torch.randn(B, H, S, E, device="cuda", dtype=td, requires_grad=True) for _ in range(3))
            dy = torch.randn(B, H, S, E, device="cuda", dtype=td)
            for name, be in backends.items():
                def run(be=be):
                    q.grad = k.grad = v.grad = None
                    if be is None:
                        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    else:
                        with sdpa_kernel(be):
                            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    out.backward(dy)
                try:
                    ms, peak = timed(torch, run)
                    att["rows"].append({"S": S, "E": E, "impl": name, "ms": ms, "TFLOP/s dense": dense_flops / ms / 1e9,
                                        "TFLOP/s useful": dense_flops / ms / 1e9, "peak MiB": peak})
                except RuntimeError as e:  # a backend that does not support the shape
                    att["rows"].append({"S": S, "E": E, "impl": name + " (n/a: " + str(e).split("\n")[0][:60] + ")"})
            if S <= 4096:
                def unfused():
                    q.grad = k.grad = v.grad = None
                    s = (q @ k.transpose(-1, -2)) / math.sqrt(E)
                    s = s.masked_fill(torch.triu(torch.ones(S, S, device="cuda", dtype=torch.bool), 1), float("-inf"))
                    (torch.softmax(s, -1) @ v).backward(dy)
                ms, peak = timed(torch, unfused, reps=5)
                att["rows"].append({"S": S, "E": E, "impl": "unfused", "ms": ms, "TFLOP/s dense": dense_flops / ms / 1e9,
                                    "TFLOP/s useful": dense_flops / ms / 1e9, "peak MiB": peak})
            # Ours: top-S/8 causal keys per query (random selection: the kernels' cost does not depend on which).
            qs, ks, vs = (t.detach() for t in (q, k, v))
            j = torch.randint(0, S, (B, H, S, L), device="cuda")
            i = torch.arange(S, device="cuda").view(1, 1, S, 1)
            idx = torch.where(j <= i, j, j % (i + 1)).to(torch.int32)
            scale = 1.0 / math.sqrt(E)

            def ours():
                _, pr = kern.sparse_attention(dt, qs, ks, vs, idx, None, scale, 10.0, True)
                kern.sparse_attention_grad(dt, dy, qs, ks, vs, idx, pr, scale, 10.0, True)
            ms, peak = timed(torch, ours)
            att["rows"].append({"S": S, "E": E, "impl": "spt sparse (L=S/8)", "ms": ms,
                                "TFLOP/s dense": dense_flops / ms / 1e9, "TFLOP/s useful": useful_flops / ms / 1e9,
                                "peak MiB": peak})
            saved_ours = B * H * S * L * (4 + 2) / 2 ** 20  # indices + P
            saved_unfused = B * H * S * S * 2 * 2 / 2 ** 20  # scores + probabilities
            notes.append(f"S={S} E={E}: saved state spt {saved_ours:.0f} MiB vs unfused {saved_unfused:.0f} MiB "
                         f"({saved_ours / saved_unfused:.3f})")
            del q, k, v, dy
            torch.cuda.empty_cache()
    benches.append(att)

    ffn = {"title": "FFN forward+backward, fp16, 16384 tokens, d 2048, d_ff 8192 (routed: 4 blocks, top 2, ReLU)",
           "columns": ["impl", "ms", "TFLOP/s dense", "TFLOP/s useful", "peak MiB"], "rows": []}
    if time.time() < deadline:
        T, d, F = 16384, 2048, 8192
        x = torch.randn(T, d, device="cuda", dtype=td)
        dy = torch.randn(T, d, device="cuda", dtype=td)
        w1 = (torch.randn(d, F, device="cuda", dtype=td) / math.sqrt(d)).requires_grad_()
        w2 = (torch.randn(F, d, device="cuda", dtype=td) / math.sqrt(F)).requires_grad_()
        dense_flops = 2.0 * T * d * F * 2 * 3  # two GEMMs, fwd + 2 bwd each

        def dense():
            w1.grad = w2.grad = None
            xr = x.detach().requires_grad_()
            (torch.relu(xr @ w1) @ w2).backward(dy)
        ms, peak = timed(torch, dense)
        ffn["rows"].append({"impl": "dense (cuBLAS)", "ms": ms, "TFLOP/s dense": dense_flops / ms / 1e9,
                            "TFLOP/s useful": dense_flops / ms / 1e9, "peak MiB": peak})
        case = {"tokens": T, "d_model": d, "d_ff": F, "n_blocks": 4, "top_k": 2, "rank1": 0, "rank2": 0, "rank3": 0,
                "activation": 0, "gate": 0, "biases": False}
        wr = torch.randn(d, 4, device="cuda", dtype=td) / math.sqrt(d)
        weights = [w1.detach(), None, w2.detach(), None, wr, None, None, None, None, None, None, None, None]
        # dX, dWr, dW1, dW2: the full fine-tuning grads of the dense run plus the router.
        mask = [True, True, False, True, False, True, False, False, False, False, False, False, False, False]
        ms, peak = timed(torch, lambda: kern.ffn(dt, case, x, weights, dy, mask))
        ffn["rows"].append({"impl": "spt routed (4 blocks, top 2)", "ms": ms, "TFLOP/s dense": dense_flops / ms / 1e9,
                            "TFLOP/s useful": dense_flops / 2 / ms / 1e9, "peak MiB": peak})
    else:
        notes.append("FFN benchmark skipped: time budget")
    benches.append(ffn)
    return benches, notes
