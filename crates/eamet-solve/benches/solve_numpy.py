#!/usr/bin/env python3
"""numpy/scipy baseline for `cargo bench -p eamet-solve` (benches/solve.rs runs this).

Usage: solve_numpy.py '<json plan>'  — the plan is {"memit": [{"d_k", "d_r", "n", "lambda",
"reps"}...], "stats": [{"d", "batch", "batches"}...]}. Prints one JSON object on stdout with
the timings (seconds, median over reps) and what BLAS numpy uses. Thread count comes from the
environment the parent sets (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS).

The work timed is the numpy/scipy equivalent of the Rust calls, in two variants:
  MEMIT "idiomatic":  A = lam*C + K.T @ K;  B = K.T @ R;  Delta = cho_solve(cho_factor(A), B).T
        (numpy's bundled OpenBLAS for the products, scipy's for the factorization)
  MEMIT "direct":     the same through scipy.linalg.blas/lapack (dsyrk, dgemm, dpotrf, dpotrs) on
        Fortran-ordered views: one OpenBLAS, no copies
  stats:  S += K.T @ K;  s += K.sum(0)            (per batch of rows)
"""

import io
import json
import statistics
import sys
import time
from contextlib import redirect_stdout


def blas_info(np):
    info = {}
    try:
        import threadpoolctl

        info["threadpoolctl"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "filepath")}
            for p in threadpoolctl.threadpool_info()
        ]
    except Exception:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        info["numpy_blas"] = deps.get("blas", {})
        info["numpy_lapack"] = deps.get("lapack", {})
    except Exception:
        buf = io.StringIO()
        with redirect_stdout(buf):
            np.show_config()
        info["numpy_show_config"] = buf.getvalue()[:2000]
    info["runtime"] = openblas_runtime()
    return info


def openblas_runtime():
    """Core type and configuration OpenBLAS picked at run time, for numpy's and scipy's copies."""
    import ctypes
    import glob
    import os

    import numpy
    import scipy

    found = {}
    for pkg, mod, suffix in (("numpy", numpy, "64_"), ("scipy", scipy, "")):
        libs = os.path.join(os.path.dirname(os.path.dirname(mod.__file__)), pkg + ".libs")
        for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so")):
            try:
                lib = ctypes.CDLL(path)
                entry = {}
                for what in ("corename", "config"):
                    fn = getattr(lib, f"scipy_openblas_get_{what}{suffix}")
                    fn.restype = ctypes.c_char_p
                    entry[what] = fn().decode()
                found[pkg] = entry
            except Exception as e:  # best effort
                found[pkg] = {"error": str(e)}
    return found


def memit_idiomatic(sla, C, K, R, lam):
    A = lam * C
    A += K.T @ K
    B = K.T @ R
    cf = sla.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
    X = sla.cho_solve(cf, B, overwrite_b=True, check_finite=False)
    return X.T


def memit_direct(blas, lapack, C, K, R, lam):
    # C-ordered symmetric lam*C seen transposed is the same matrix, Fortran-ordered.
    A = (lam * C).T
    A = blas.dsyrk(1.0, K.T, beta=1.0, c=A, trans=0, lower=1, overwrite_c=1)
    B = blas.dgemm(1.0, K.T, R.T, trans_b=1)
    c, info = lapack.dpotrf(A, lower=1, overwrite_a=1, clean=0)
    assert info == 0, info
    X, info = lapack.dpotrs(c, B, lower=1, overwrite_b=1)
    assert info == 0, info
    return X.T


def main():
    plan = json.loads(sys.argv[1])
    try:
        import numpy as np
        import scipy
        import scipy.linalg as sla
        from scipy.linalg import blas, lapack
    except Exception as e:  # reported, the parent prints "skipped"
        print(json.dumps({"error": f"cannot import numpy/scipy: {e}"}))
        return

    out = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": blas_info(np),
        "memit": [],
        "stats": [],
    }
    rng = np.random.default_rng(0)

    for case in plan.get("memit", []):
        d_k, d_r, n, lam, reps = case["d_k"], case["d_r"], case["n"], case["lambda"], case["reps"]
        g = rng.standard_normal((64, d_k))
        C = g.T @ g / 64.0
        C[np.diag_indices(d_k)] += 0.5
        del g
        K = rng.standard_normal((n, d_k))
        R = rng.standard_normal((n, d_r))
        result = dict(case)
        for name, run in (
            ("idiomatic", lambda: memit_idiomatic(sla, C, K, R, lam)),
            ("direct", lambda: memit_direct(blas, lapack, C, K, R, lam)),
        ):
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                delta = run()
                times.append(time.perf_counter() - t0)
                assert delta.shape == (d_r, d_k)
                del delta
            result[name] = statistics.median(times)
            result[name + "_all"] = times
        # sanity: both variants solve the same system
        a, b = memit_idiomatic(sla, C, K, R, lam), memit_direct(blas, lapack, C, K, R, lam)
        result["variants_rel_diff"] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
        del a, b
        out["memit"].append(result)
        del C, K, R

    for case in plan.get("stats", []):
        d, batch, batches = case["d"], case["batch"], case["batches"]
        K = rng.standard_normal((batch, d))
        S = np.zeros((d, d))
        s = np.zeros(d)
        S += K.T @ K  # warm-up (allocations, thread start)
        t0 = time.perf_counter()
        for _ in range(batches):
            S += K.T @ K
            s += K.sum(axis=0)
        dt = time.perf_counter() - t0
        out["stats"].append({**case, "seconds": dt, "rows_per_s": batch * batches / dt})
        del K, S, s

    print(json.dumps(out))


if __name__ == "__main__":
    main()
