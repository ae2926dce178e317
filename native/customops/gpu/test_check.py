"""The GPU check's CPU-side parts, without a GPU: argument handling, the tolerance rule, the report writer, the
fp64 references against the CPU kernels on the shared case table (through libspt_check.so), and, where torch
is installed, the PyTorch 'plain implementation' against the numpy reference.

Run: SPT_CHECK_LIB=build/native/libspt_check.so python3 -m unittest native/customops/gpu/test_check.py
"""
import json
import math
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

LIB = os.environ.get("SPT_CHECK_LIB", os.path.join(os.path.dirname(__file__), "..", "..", "..", "build", "native",
                                                   "libspt_check.so"))


class Arguments(unittest.TestCase):
    def test_out_is_required_and_values_are_checked(self):
        with self.assertRaises(SystemExit):
            check.parse_args([])
        for bad in (["--out", "x", "--seq", "a,b"], ["--out", "x", "--seq", "4"], ["--out", "x", "--budget-s", "0"]):
            with self.assertRaises(SystemExit, msg=str(bad)):
                check.parse_args(bad)
        a = check.parse_args(["--out", "x", "--seq", "1024, 2048", "--skip-bench"])
        self.assertEqual(a.seq, [1024, 2048])
        self.assertTrue(a.skip_bench)
        self.assertEqual(check.parse_args(["--out", "x"]).seq, [1024, 2048, 4096, 8192])


class Tolerances(unittest.TestCase):
    def test_relative_error(self):
        self.assertEqual(check.rel_err([1.0, 2.0], [1.0, 2.0]), 0.0)
        self.assertAlmostEqual(check.rel_err([1.0, 2.2], [1.0, 2.0]), 0.1)
        self.assertEqual(check.rel_err([0.5], [0.0]), 0.5)  # all-zero reference: absolute error
        self.assertEqual(check.rel_err([math.nan], [1.0]), math.inf)
        with self.assertRaises(ValueError):
            check.rel_err([1.0], [1.0, 2.0])

    def test_judge_fp32_against_the_cpu_kernel(self):
        self.assertEqual(check.judge("fp32", 9e-5), (True, 1e-4))
        self.assertFalse(check.judge("fp32", 2e-4)[0])

    def test_judge_half_precision_is_twice_the_plain_error_with_a_roundoff_floor(self):
        self.assertEqual(check.judge("fp16", 0.0019, 1e-3), (True, 2e-3))
        self.assertFalse(check.judge("fp16", 0.0021, 1e-3)[0])
        ok, limit = check.judge("bf16", 0.0, 0.0)
        self.assertTrue(ok)
        self.assertEqual(limit, 2 * 2.0 ** -8)
        self.assertFalse(check.judge("bf16", 0.01, 0.0)[0])
        with self.assertRaises(ValueError):
            check.judge("fp16", 0.1)


class Report(unittest.TestCase):
    def test_json_and_markdown(self):
        report = {"environment": {"gpu": "X"},
                  "tests": [{"op": "A", "dtype": "fp32", "case": "{}", "err": 1e-6, "limit": 1e-4, "passed": True},
                            {"op": "B", "dtype": "fp16", "case": "{}", "err": 0.5, "limit": 0.01, "passed": False}],
                  "benchmarks": [{"title": "T", "columns": ["impl", "ms"], "rows": [{"impl": "a", "ms": 1.25},
                                                                                  {"impl": "b"}]}],
                  "notes": ["n1"]}
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "sub")
            check.write_report(out, report)
            with open(os.path.join(out, "report.json")) as f:
                self.assertEqual(json.load(f), report)
            with open(os.path.join(out, "report.md")) as f:
                md = f.read()
        self.assertIn("## Kernel tests: 1 passed, 1 failed", md)
        self.assertIn("| B | fp16 | {} | 0.5 | 0.01 | FAIL |", md)
        self.assertIn("| a | 1.25 |", md)
        self.assertIn("| b | - |", md)
        self.assertIn("- gpu: X", md)
        self.assertIn("- n1", md)


@unittest.skipUnless(os.path.exists(LIB), f"{LIB} not built")
class ReferencesAgainstTheCpuKernels(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lib = check.Lib(LIB)

    def test_case_table_is_read_from_the_library(self):
        cases = self.lib.cases()
        self.assertEqual(sorted(cases), ["attention", "ffn", "pq", "topk"])
        self.assertTrue(any(c["Hkv"] < c["H"] for c in cases["attention"]), "GQA cases in the table")
        self.assertTrue(any(c["Hkv"] == 1 and c["H"] > 1 for c in cases["topk"]), "MQA cases in the table")

    def test_every_reference_agrees_with_the_cpu_kernels(self):
        rows = check.cpu_self_check(self.lib)
        self.assertGreater(len(rows), 30)
        for r in rows:
            self.assertLessEqual(r["err"], 1e-4, f"{r['op']} {r['case']}")

    def test_reference_catches_a_wrong_result(self):
        # The comparison can fail: a perturbed kernel output is caught by the same rule.
        rng = np.random.default_rng(3)
        q, k, v = (rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for _ in range(3))
        idx = check.random_indices(rng, 1, 2, 5, 5, 3)
        y, _ = check.cpu_sparse_attention(self.lib, q, k, v, idx, None, 0.5, 0.0, False)
        yr, _ = check.ref_sparse_attention(q, k, v, idx, None, 0.5, 0.0, False)
        self.assertTrue(check.judge("fp32", check.rel_err(y, yr))[0])
        y[0, 1, 2, 0] += 1e-2
        self.assertFalse(check.judge("fp32", check.rel_err(y, yr))[0])

    def test_library_errors_become_python_errors(self):
        q = np.zeros((1, 1, 2, 4), np.float32)
        idx = np.array([[[[0, 2], [1, -1]]]], np.int32)  # key 2 of Sk = 2 is out of range
        with self.assertRaisesRegex(RuntimeError, r"SparseAttention: input 'indices' holds 2 at \[0, 0, 0, 1\]"):
            check.cpu_sparse_attention(self.lib, q, q, q, idx, None, 0.0, 0.0, False)

    def test_ffn_cases_run_forward_and_backward(self):
        rng = np.random.default_rng(5)
        for c in self.lib.cases()["ffn"]:
            x, w = check.ffn_weights(c, rng)
            y, probs, sel, pre, grads = check.cpu_ffn(self.lib, c, x, w, np.ones_like(x))
            self.assertTrue(np.all(np.isfinite(y)))
            self.assertTrue(np.all((sel >= 0) & (sel < c["n_blocks"])))
            self.assertEqual(grads[0].shape, x.shape)

    def test_main_without_cuda_writes_the_report_and_says_so(self):
        if self.lib.has_cuda:
            self.skipTest("library built with CUDA")
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(check.main(["--out", d, "--lib", LIB]), 3)
            with open(os.path.join(d, "report.json")) as f:
                report = json.load(f)
        self.assertIn("library built without CUDA: GPU tests and benchmarks skipped", report["notes"])
        self.assertTrue(any("agree" in n for n in report["notes"]))


try:
    import torch
except ImportError:  # Debian's python3-torch is optional here; the GPU machine has torch
    torch = None


@unittest.skipIf(torch is None, "torch not installed")
class PlainTorchImplementation(unittest.TestCase):
    def test_fp64_torch_sparse_attention_matches_the_numpy_reference(self):
        import gpu_kernels
        rng = np.random.default_rng(7)
        for causal in (True, False):
            q = rng.standard_normal((2, 4, 6, 8))
            k = rng.standard_normal((2, 2, 7, 8))
            v = rng.standard_normal((2, 2, 7, 5))
            idx = check.random_indices(rng, 2, 4, 6, 7, 4)
            bias = np.where(rng.integers(0, 4, (2, 7)) == 0, -np.inf, 0.0)
            bias[0, :] = -np.inf  # batch 0: every key padded, rows with nothing kept (P = 0, finite gradients)
            bias[0, 3] = -0.5     # ... except key 3, with a finite additive bias
            yr, pr = check.ref_sparse_attention(q, k, v, idx, bias, 0.4, 1.0, causal)
            t = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
            y, p = gpu_kernels.torch_sparse_attention(torch, *t, torch.tensor(idx), torch.tensor(bias), 0.4, 1.0, causal)
            self.assertLess(check.rel_err(y.detach().numpy(), yr), 1e-12)
            self.assertLess(check.rel_err(p.detach().numpy(), pr), 1e-12)
            dy = rng.standard_normal(y.shape)
            y.backward(torch.tensor(dy))
            gr = check.ref_sparse_attention_grad(dy, q, k, v, idx, pr, 0.4, 1.0)
            for a, b in zip(t, gr):
                self.assertTrue(np.all(np.isfinite(a.grad.numpy())))
                self.assertLess(check.rel_err(a.grad.numpy(), b), 1e-10)


if __name__ == "__main__":
    unittest.main()
