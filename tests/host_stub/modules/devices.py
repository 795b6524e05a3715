"""Follows modules/devices.py as it runs on a CPU: float32 everywhere, and ``autocast`` a null context
(A1111 returns one for float32; Forge, dfdcbab6, always does)."""

import contextlib

import torch

device = torch.device("cpu")
dtype = dtype_vae = torch.float32


def autocast(disable=False):
    return contextlib.nullcontext()
