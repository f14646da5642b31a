#!/usr/bin/env python3
"""Paired comparison of two `eamet eval` reports of the same records (standard library only).

    tools/paired.py REPORT_DIR_A REPORT_DIR_B [metric ...]

For each metric (default: strict / lenient efficacy, strict generalization, classic specificity
and the neighbourhood KL), per record: post-edit value of B minus that of A. Prints the means,
the mean difference with its paired standard error, and for 0/1 metrics the number of records
only A succeeds on and only B succeeds on. Records where either report lacks a finite value of
the metric are left out; the "records" column says how many were compared. The reports must hold the same records in the same
order (checked by case id and subject).
"""
import json
import math
import sys

DEFAULT = [
    "strict.efficacy",
    "strict.generalization",
    "lenient.efficacy",
    "classic.specificity",
    "neighbourhood.kl",
]


def post_metrics(path):
    with open(f"{path}/report.json") as f:
        r = json.load(f)
    rows = []
    for pair in r["records"]:
        post = pair[1] if isinstance(pair, list) else pair
        rows.append(((post.get("case_id"), post["subject"]), post["metrics"]))
    return r["info"]["method"], rows


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    (ma, a), (mb, b) = post_metrics(argv[1]), post_metrics(argv[2])
    if [k for k, _ in a] != [k for k, _ in b]:
        sys.exit("the two reports do not hold the same records in the same order")
    metrics = argv[3:] or DEFAULT
    print(f"| metric | records | {ma} | {mb} | {mb} − {ma} (± paired s.e.) | only {ma} | only {mb} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in metrics:
        num = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
        pairs = [
            (x[m], y[m]) for (_, x), (_, y) in zip(a, b) if num(x.get(m)) and num(y.get(m))
        ]
        if not pairs:
            print(f"| {m} | 0 | - | - | - | - | - |")
            continue
        n = len(pairs)
        d = [y - x for x, y in pairs]
        mean = sum(d) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n) if n > 1 else float("nan")
        binary = all(v in (0.0, 1.0) for p in pairs for v in p)
        only = (
            (str(sum(1 for x, y in pairs if x > y)), str(sum(1 for x, y in pairs if y > x)))
            if binary
            else ("", "")
        )
        ma_ = sum(x for x, _ in pairs) / n
        mb_ = sum(y for _, y in pairs) / n
        print(f"| {m} | {n} | {ma_:.3f} | {mb_:.3f} | {mean:+.3f} ± {se:.3f} | {only[0]} | {only[1]} |")


if __name__ == "__main__":
    main(sys.argv)
