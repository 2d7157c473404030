#!/usr/bin/env python3
"""Reference values for worker/src/kernels/torch_norm.rs (torch's CPU f32 `linalg.vector_norm`).

Prints the rows of the Rust test tables `VECTORS`, `ROWS` and `PARTS`: f32 bit patterns of torch's
L2 norms of deterministic inputs, computed the way mergekit's SLERP calls them.

Inputs: `gen_a` / `gen_b` of torch_sum_vectors.py (24-bit mantissas over 16 binades; bf16-exact
values with +-2^30 spikes) and `gen_c` (full 24-bit mantissas within 4 binades, where fused and
unfused multiply-adds give different roundings most often), all from the splitmix64 hash:

    z_i   = mix64(seed + (i + 1) * 0x9E3779B97F4A7C15)          (wrapping u64 arithmetic)
    gen_c = (-1)^(z & 1) * (z >> 40) * 2^(((z >> 8) & 3) - 23)   (seed 3)

Tables:
  VECTORS  (n, [a, b, c]): vector_norm(x.reshape(1, -1), dim=1, keepdim=True) of gen_a/b/c(n).
  ROWS     (w, [4 norms]):  vector_norm(gen_c(4 * w).reshape(4, w), dim=1, keepdim=True).
  PARTS    (k, [p, q0, q1]): p = vector_norm(torch.stack(k tensors of shape [1, 1]), dim=0) with
           the values |gen_c(k)|; q = vector_norm(torch.stack(k tensors of shape [2, 1]), dim=0)
           with part i = |gen_c(2k)[2i:2i+2]| (a [k, 2, 1] stack: two outputs).

The script also checks that every value is the same under 1, 3 and 4 intra-op threads.

Usage: python torch_norm_vectors.py   (committed values: torch 2.15.0, CPU capability AVX512,
2 threads).
"""

import numpy as np
import torch

from torch_sum_vectors import gen_a, gen_b, mix, sign

SEED_C = 3
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4099, 32767,
         32768, 32769, 65541, 100003, 1 << 20, (1 << 20) + 17]
WIDTHS = range(1, 25)
PARTS = range(1, 41)


def gen_c(n):
    z = mix(n, SEED_C)
    e = ((z >> np.uint64(8)) & np.uint64(3)).astype(np.int32) - 23
    return (sign(z) * (z >> np.uint64(40)).astype(np.float32) * np.ldexp(np.float32(1), e)).astype(np.float32)


def bits(t):
    return [int(v) & 0xFFFFFFFF for v in t.reshape(-1).view(torch.int32).tolist()]


def norm(x, dim):
    return torch.linalg.vector_norm(x, dim=dim, keepdim=True)


def tables():
    vectors = []
    for n in SIZES:
        row = []
        for gen in (gen_a, gen_b, gen_c):
            row += bits(norm(torch.from_numpy(gen(n)).reshape(1, -1), 1))
        vectors.append((n, row))
    rows = [(w, bits(norm(torch.from_numpy(gen_c(4 * w)).reshape(4, w), 1))) for w in WIDTHS]
    parts = []
    for k in PARTS:
        single = np.abs(gen_c(k))
        p = torch.linalg.vector_norm(torch.stack([torch.from_numpy(single[i:i + 1]).reshape(1, 1)
                                                  for i in range(k)]), dim=0)
        double = np.abs(gen_c(2 * k))
        q = torch.linalg.vector_norm(torch.stack([torch.from_numpy(double[2 * i:2 * i + 2]).reshape(2, 1)
                                                  for i in range(k)]), dim=0)
        parts.append((k, bits(p) + bits(q)))
    return vectors, rows, parts


def show(rows):
    for key, vals in rows:
        print(f"({key}, [{', '.join(f'0x{v:08x}' for v in vals)}]),")


def main():
    default_threads = torch.get_num_threads()
    print(f"// torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{default_threads} threads")
    result = tables()
    for threads in (1, 3, 4):
        torch.set_num_threads(threads)
        assert tables() == result, f"values differ with {threads} threads"
    torch.set_num_threads(default_threads)
    print("// (identical with 1, 3 and 4 threads)")
    for name, rows in zip(("VECTORS", "ROWS", "PARTS"), result):
        print(f"// {name}")
        show(rows)


if __name__ == "__main__":
    main()
