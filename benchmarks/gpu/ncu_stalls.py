"""Summarize Nsight Compute's per-instruction warp-stall samples (``ncu -i REP --page source --csv
--print-source sass``, plain or .gz): share of each stall reason, then the opcodes that hold the most samples
with their top reasons, then the hottest instructions. Runs anywhere (no GPU).

    python benchmarks/gpu/ncu_stalls.py sass.csv[.gz] [--top 20]
"""
from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io


def _num(x: str) -> float:
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def load(path: str) -> list[dict[str, str]]:
    """Rows of the source page: one dict per SASS instruction (the first line names the kernel)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    hdr = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
    return list(csv.DictReader(io.StringIO("\n".join(lines[hdr:]))))


def summarize(rows: list[dict[str, str]], top: int = 20) -> str:
    reasons = [k for k in rows[0] if k.startswith("stall_") and "Not Issued" not in k]
    by_reason: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    op_reason: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    samples = [_num(r["Warp Stall Sampling (All Samples)"]) for r in rows]
    total = sum(samples) or 1.0
    for r, s in zip(rows, samples):
        words = r["Source"].split()
        op = (words[1] if words and words[0].startswith("@") else (words[0] if words else "?")).split(".")[0]
        by_op[op] += s
        for k in reasons:
            by_reason[k] += _num(r[k])
            op_reason[op][k] += _num(r[k])
    rtot = sum(by_reason.values()) or 1.0
    out = [f"{int(total)} warp-state samples"]
    out += [f"  {k[6:]:20s} {100 * v / rtot:5.1f}%" for k, v in by_reason.most_common() if v]
    out.append("by opcode: share of samples, top reasons")
    for op, v in by_op.most_common(top):
        why = ", ".join(f"{k[6:]} {100 * x / max(v, 1):.0f}%" for k, x in op_reason[op].most_common(3))
        out.append(f"  {op:10s} {100 * v / total:5.1f}%  {why}")
    out.append("hottest instructions")
    for r, s in sorted(zip(rows, samples), key=lambda x: -x[1])[:top]:
        out.append(f"  {100 * s / total:4.1f}%  {r['Source'].strip()[:64]:64s} long_sb {r.get('stall_long_sb', '')}")
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    print(summarize(load(a.csv), a.top))
