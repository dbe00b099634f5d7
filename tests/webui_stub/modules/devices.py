"""The device and precisions the WebUI runs the model in: CPU and float32 in the stand-in."""
from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = dtype_vae = dtype_unet = torch.float32
unet_needs_upcast = False
gc_calls = 0   # how often torch_gc ran (the stand-in's record)


class _NansException(Exception):
    pass


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def test_for_nans(x, where):
    """The WebUI looks at the first element only."""
    if torch.isnan(x.flatten()[0]):
        raise _NansException(f"A tensor with NaNs was produced in {'Unet' if where == 'unet' else 'VAE'}.")


def torch_gc():
    global gc_calls
    gc_calls += 1


def autocast(disable=False):
    return contextlib.nullcontext()   # the WebUI's for float32 and the CPU


def without_autocast(disable=False):
    return contextlib.nullcontext()
