#!/usr/bin/env python3
"""Reference values for worker/src/kernels/torch_sum.rs (torch's CPU `sum()` order).

Prints the rows of the Rust test tables (`DEFAULT`, `LARGE`, `THREADED`): bit patterns of torch's
`x.sum()` and `x.abs().sum()` for deterministic inputs. The inputs come from a counter-based
splitmix64 hash of the element index, so the Rust tests regenerate them without data files (see
`gen_a` / `gen_b` in torch_sum.rs):

    z_i   = mix64(seed + (i + 1) * 0x9E3779B97F4A7C15)          (wrapping u64 arithmetic)
    gen_a = (-1)^(z & 1) * (z >> 40) * 2^(((z >> 8) & 15) - 40)  (24-bit mantissas, float32)
    gen_b = (-1)^(z & 1) * (z >> 56) * 2^((z >> 8) & 7), but the elements with
            (z >> 16) & 15 == 0 are +2^30, -2^30, +2^30, ... in order (an unpaired last one keeps
            its small value). The large values cancel exactly, so the result exposes the rounding
            of the large partial sums. Every gen_b value is exact in bfloat16.

    gen_c = (-1)^(z & 1) * (z >> 53) * 2^(((z >> 8) & 7) - 24)    (seed 3; exact in float16)

Usage: python torch_sum_vectors.py [--large | --f16]   (the torch version and thread count are
printed; the committed values come from torch 2.15.0, CPU capability AVX512, 2 threads).
--large adds the sizes that reach cascade level power 5 (~0.5 GB f32 + ~1 GB bf16 inputs).
--f16 prints the `F16` table instead: (n, threads, [f16 bits of c.sum(), c.abs().sum()]) for
float16 gen_c inputs.
"""

import sys

import numpy as np
import torch

SEED_A = 1
SEED_B = 2
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 2048,
         4096 + 3, 8191, 32767, 32768, 32769, 65536, 65536 + 5, 100003, (1 << 20) + 17]
LARGE = [(1 << 26) + (1 << 20) + 3, (1 << 27) + (1 << 21) + 5]
# (n, threads) pairs also printed with torch.set_num_threads(threads).
THREADED = [(32769, 1), (100003, 1), (65536 + 5, 3), (100003, 3), ((1 << 20) + 17, 4)]


def mix(n, seed):
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sign(z):
    return np.where(z & np.uint64(1), np.float32(-1), np.float32(1))


def gen_a(n):
    z = mix(n, SEED_A)
    e = ((z >> np.uint64(8)) & np.uint64(15)).astype(np.int32) - 40
    return (sign(z) * (z >> np.uint64(40)).astype(np.float32) * np.ldexp(np.float32(1), e)).astype(np.float32)


def gen_b(n):
    z = mix(n, SEED_B)
    e = ((z >> np.uint64(8)) & np.uint64(7)).astype(np.int32)
    x = (sign(z) * (z >> np.uint64(56)).astype(np.float32) * np.ldexp(np.float32(1), e)).astype(np.float32)
    big = ((z >> np.uint64(16)) & np.uint64(15)) == 0
    count = np.cumsum(big)
    odd = count % 2 == 1
    if n and count[-1] % 2 == 1:
        big[np.flatnonzero(big)[-1]] = False
    return np.where(big, np.where(odd, np.float32(2.0**30), np.float32(-(2.0**30))), x).astype(np.float32)


def gen_c(n):
    z = mix(n, 3)
    e = ((z >> np.uint64(8)) & np.uint64(7)).astype(np.int32) - 24
    return (sign(z) * (z >> np.uint64(53)).astype(np.float32) * np.ldexp(np.float32(1), e)).astype(np.float32)


def f16_table():
    f16_sizes = [1, 7, 16, 17, 129, 1000, 4096 + 3, 32767, 32768, 32769, 65536, 65536 + 5, 100003,
                 (1 << 20) + 17]
    default_threads = torch.get_num_threads()
    for n, threads in [(n, default_threads) for n in f16_sizes] + THREADED:
        torch.set_num_threads(threads)
        c = torch.from_numpy(gen_c(n))
        cc = c.to(torch.float16)
        assert torch.equal(cc.float(), c), "gen_c must be exact in float16"
        print(f"({n}, {threads}, [0x{bf16_bits(cc.sum()):04x}, 0x{bf16_bits(cc.abs().sum()):04x}]),")
    torch.set_num_threads(default_threads)


def f32_bits(t):
    return int(t.reshape(1).view(torch.int32).item()) & 0xFFFFFFFF


def bf16_bits(t):
    return int(t.reshape(1).view(torch.int16).item()) & 0xFFFF


def row(n):
    a = torch.from_numpy(gen_a(n))
    b = torch.from_numpy(gen_b(n))
    bb = b.to(torch.bfloat16)
    assert torch.equal(bb.float(), b), "gen_b must be exact in bf16"
    vals = [f32_bits(a.sum()), f32_bits(a.abs().sum()), f32_bits(b.sum()), f32_bits(b.abs().sum())]
    vals += [bf16_bits(bb.sum()), bf16_bits(bb.abs().sum())]
    return "[" + ", ".join(f"0x{v:08x}" if i < 4 else f"0x{v:04x}" for i, v in enumerate(vals)) + "]"


def main():
    if "--f16" in sys.argv[1:]:
        f16_table()
        return
    default_threads = torch.get_num_threads()
    print(f"// torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{default_threads} threads")
    print("// (n, [a.sum, a.abs.sum, b.sum, b.abs.sum: f32 bits; bf16(b).sum, bf16(b).abs.sum: bf16 bits])")
    for n in SIZES + (LARGE if "--large" in sys.argv[1:] else []):
        print(f"({n}, {row(n)}),")
    print("// (n, threads, [same columns]) under torch.set_num_threads(threads)")
    for n, threads in THREADED:
        torch.set_num_threads(threads)
        print(f"({n}, {threads}, {row(n)}),")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
