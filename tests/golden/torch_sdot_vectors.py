#!/usr/bin/env python3
"""Reference values for `sdot` in worker/src/kernels/karcher.rs (torch's CPU f32 `torch.dot`,
which calls MKL's `sdot`; karcher takes its dot products with it).

Prints the rows of the Rust test table `SDOT`: `(n, f32 bits of torch.dot(gen_a(n), gen_c(n)))`,
with `gen_a` / `gen_c` of torch_sum_vectors.py, for lengths that cover every residue mod 16
(whole 16-element blocks, 1 to 3 leftover 4-element vectors, 1 to 3 last elements).

Usage: python torch_sdot_vectors.py   (committed values: torch 2.15.0, CPU capability AVX512,
1 and 2 threads give the same values).
"""

import torch

from torch_sum_vectors import gen_a, gen_c

SIZES = list(range(1, 50)) + [61, 62, 63, 100, 1021, 1022, 1023, 4099]


def main():
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows = []
        for n in SIZES:
            d = torch.dot(torch.from_numpy(gen_a(n)), torch.from_numpy(gen_c(n)))
            rows.append((n, int(d.view(torch.int32).item()) & 0xFFFFFFFF))
        if threads == 1:
            first = rows
        elif rows != first:
            raise SystemExit("torch.dot depends on the thread count")
    print("    const SDOT: &[(usize, u32)] = &[")
    for n, b in first:
        print(f"        ({n}, {b:#010x}),")
    print("    ];")


if __name__ == "__main__":
    main()
