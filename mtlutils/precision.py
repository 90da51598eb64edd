"""Mixed precision for training and evaluation: the forward pass and the losses under ``torch.autocast``.

* ``"fp32"``: everything in float32 (the default of every chapter: the same numbers on every machine
  that has the same kernels).
* ``"bf16"``: autocast to bfloat16. Convolutions and matrix products run in bfloat16, PyTorch keeps the
  numerically delicate operations (softmax, log-softmax, losses, batch-norm statistics) in float32, and
  the weights, gradients and optimiser stay in float32. Needs no loss scaling (bfloat16 has float32's
  exponent range).
* ``"fp16"``: autocast to float16 with a gradient scaler (float16's range is narrow); CUDA only.
* ``"auto"``: ``"bf16"`` where the device runs it fast (a CUDA GPU that supports it; a CPU with AMX or
  AVX-512 bf16 instructions), else ``"fp32"``.

Metrics are always accumulated in float32/float64 (they convert what they receive), so only the model's
arithmetic changes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bfloat16 runs natively: a CUDA GPU that supports it, or a CPU with AMX or AVX-512 bf16
    (read from the processor's flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        from .provenance import cpu_description

        flags = set(cpu_description()[1].split())
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def resolve(precision: str, device: torch.device | str) -> str:
    """The precision a run uses on ``device``: ``"auto"`` resolved, the others checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid choices: {list(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (it trains with a gradient scaler); on "
                         f"{device.type} use 'bf16' or 'fp32'")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` for a resolved precision (nothing for ``"fp32"``)."""
    dtype = DTYPES[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def scaler(precision: str, device: torch.device | str) -> "torch.amp.GradScaler | None":
    """A gradient scaler for ``"fp16"``; None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
