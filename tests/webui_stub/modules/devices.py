from __future__ import annotations

import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32
unet_needs_upcast = False
gc_calls = 0


class NansException(Exception):
    pass


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def test_for_nans(x, where):
    if not torch.isnan(x[(0, ) * len(x.shape)]):
        return
    raise NansException(f"A tensor with NaNs was produced in {'Unet' if where == 'unet' else 'VAE'}.")


def torch_gc() -> None:
    global gc_calls
    gc_calls += 1


def autocast(disable=False):
    # The WebUI returns a no-op context for float32 and for the CPU.
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()
