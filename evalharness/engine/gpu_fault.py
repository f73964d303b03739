"""The `gpu-fault` fault's kernel: one Triton program that writes far outside its buffer, an illegal memory access
like the one stale launch constants caused before transformers PR #45323 (max_batch_tokens 896/1024 in the seed's
report). Imported by the worker only when that fault fires (faults.gpu_fault), never by the parent."""

from __future__ import annotations

import triton
import triton.language as tl

# elements past the buffer: 4 TiB of float32, far beyond any allocation, so the address is not mapped
OFFSET = 1 << 40


@triton.jit
def _poke(ptr, offset):
    tl.store(ptr + offset, 1.0)


def fault() -> None:
    """Launch the out-of-bounds write and wait for it: raises CUDA's illegal memory access, after which this process's
    CUDA context is lost (under MPS, every client of the GPU gets the error)."""
    import torch

    buf = torch.zeros(1, device="cuda")
    _poke[(1,)](buf, OFFSET)
    torch.cuda.synchronize()
