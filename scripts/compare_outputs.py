#!/usr/bin/env python3
"""Compare the .safetensors files of two merged-model directories, element by element.

    compare_outputs.py REF_DIR OTHER_DIR [--max-ulp N] [--top K]

For every tensor: same name, dtype, shape and header order, then the distance in
units in the last place (ULP) between the two values of each element (floats are
compared as sign-magnitude integers, so +0 and -0 are 0 ULP apart; NaNs with equal
bits count as equal). Prints, per file, the max ULP distance and the fraction of
bitwise-identical elements, the number of elements more than N ulp apart and the
largest absolute difference, then the K worst tensors. Exits 1 if the file sets or
headers differ or some element is more than N ULP apart (default 0 = bit-identical).
Needs only numpy (bf16 is read as raw 16-bit words).
"""
import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

WIDTH = {"BF16": 2, "F16": 2, "F32": 4}
UINT = {2: np.uint16, 4: np.uint32}


def values(bits, dtype):
    """Decode raw words to float32 (bf16 is the top half of an f32)."""
    if dtype == "BF16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.float16 if dtype == "F16" else np.float32).astype(np.float32)


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def ordered(bits, width):
    """Map float bit patterns to integers whose difference is the ULP distance."""
    x = bits.astype(np.int64)
    sign = np.int64(1) << (8 * width - 1)
    return np.where(x & sign, -(x & (sign - 1)), x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref")
    ap.add_argument("other")
    ap.add_argument("--max-ulp", type=int, default=0)
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    ref, other = Path(args.ref), Path(args.other)

    files = sorted(p.name for p in ref.glob("*.safetensors"))
    other_files = sorted(p.name for p in other.glob("*.safetensors"))
    if not files or files != other_files:
        print(f"FAIL: safetensors files differ: {files} vs {other_files}")
        return 1
    ok, worst_overall = True, 0
    for name in files:
        (ha, oa), (hb, ob) = read_header(ref / name), read_header(other / name)
        if list(ha) != list(hb):
            print(f"FAIL {name}: tensor names or header order differ")
            ok = False
            continue
        ma = np.memmap(ref / name, dtype=np.uint8, mode="r")
        mb = np.memmap(other / name, dtype=np.uint8, mode="r")
        total = same = over = 0
        max_ulp, max_abs, rows = 0, 0.0, []
        for t, ia in ha.items():
            ib = hb[t]
            if (ia["dtype"], ia["shape"]) != (ib["dtype"], ib["shape"]):
                print(f"FAIL {name}:{t}: {ia['dtype']}{ia['shape']} vs {ib['dtype']}{ib['shape']}")
                ok = False
                continue
            w = WIDTH[ia["dtype"]]
            a = ma[oa + ia["data_offsets"][0] : oa + ia["data_offsets"][1]].view(UINT[w])
            b = mb[ob + ib["data_offsets"][0] : ob + ib["data_offsets"][1]].view(UINT[w])
            eq = a == b
            n_same = int(eq.sum())
            ulp = n_over = 0
            if n_same != a.size:
                da, db = a[~eq], b[~eq]
                dist = np.abs(ordered(da, w) - ordered(db, w))
                ulp, n_over = int(dist.max()), int((dist > args.max_ulp).sum())
                dabs = float(np.abs(values(da, ia["dtype"]) - values(db, ia["dtype"])).max())
                rows.append((ulp, a.size - n_same, n_over, dabs, a.size, t))
                max_abs = max(max_abs, dabs)
            total, same, over, max_ulp = total + a.size, same + n_same, over + n_over, max(max_ulp, ulp)
        status = "ok  " if max_ulp <= args.max_ulp else "FAIL"
        ok &= max_ulp <= args.max_ulp
        worst_overall = max(worst_overall, max_ulp)
        print(
            f"{status} {name}: {len(ha)} tensors, {total} elements, max ulp {max_ulp}, "
            f"identical {same / max(total, 1):.6%}, {over} elements > {args.max_ulp} ulp, "
            f"max |diff| {max_abs:.3g} ({len(rows)} tensors not bit-identical)"
        )
        for ulp, diff, n_over, dabs, size, t in sorted(rows, reverse=True)[: args.top]:
            print(
                f"       {t}: max {ulp} ulp, {diff}/{size} elements differ ({diff / size:.4%}), "
                f"{n_over} > {args.max_ulp} ulp, max |diff| {dabs:.3g}"
            )
    print(f"max ulp overall: {worst_overall}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
