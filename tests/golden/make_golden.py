"""Regenerate ``reference_kernel.safetensors``: the released Safe Denoiser code run on fixed inputs.

Usage: ``python tests/golden/make_golden.py PATH_TO_CHECKOUT`` where the checkout is
MingyuKim87/Safe_Denoiser (read at commit 223415b2739de049969c8188e8c6c331ae3531b3). Only the inputs and
the outputs it computes are committed, never that code. Its ``kernel_fast`` class (from
``repellency/repellency_methods_threshold.py``) is instantiated without its constructor, which needs a
VAE, a scheduler and CUDA; the attributes the kernel methods read are set directly.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lib_safedenoise.banks.fileformat import write_atomically  # noqa: E402
from lib_safedenoise.core.modes import sd1_alpha_bar  # noqa: E402

BANDWIDTHS = (1.0, 3.15, 13.15)
SCALE, MARGIN = 0.33, 1.6


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(20250211)
    raw = torch.randn(24, 4, 16, 16, generator=generator)
    bank = raw / raw.norm(dim=1, keepdim=True)
    alpha_bar_1 = sd1_alpha_bar(1)  # SD-v1 DDPM, timestep 1
    noisy = alpha_bar_1 ** 0.5 * bank + (1 - alpha_bar_1) ** 0.5 * torch.randn(bank.shape, generator=generator)
    queries = torch.stack([
        torch.randn(4, 16, 16, generator=generator),                                 # an ordinary raw latent
        bank[5] + 0.1 * torch.randn(4, 16, 16, generator=generator),                 # next to a bank item
        5 * torch.randn(4, 16, 16, generator=generator),                             # far from everything
    ])
    return {"bank": bank, "noisy": noisy.float(), "queries": queries}


def main(checkout: str) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    sys.modules.setdefault("six", types.ModuleType("six"))  # imported, never used, by its LSH helper
    from repellency.repellency_methods_threshold import __CONDITIONING_METHOD__

    data = inputs()
    released = object.__new__(__CONDITIONING_METHOD__["kernel_fast"])
    released.proj_refs = data["bank"]
    released.noisy_proj_refs = {1: data["noisy"]}
    released.epsilon, released.scale, released.beta_threshold_margin = 1e-8, SCALE, MARGIN
    out = dict(data)
    for index, bandwidth in enumerate(BANDWIDTHS):
        released.sigma = bandwidth
        threshold = released.empirical_beta(sigma=bandwidth, quantitle=0.0)[1]
        released.beta_threshold = float(threshold)
        out[f"threshold_{index}"] = threshold.reshape(1).float()
        unsafe, denominators, corrected, gates = [], [], [], []
        for query in data["queries"]:
            score, item = released.empirical_denoiser(x_t=query[None].clone(), sigma=bandwidth)
            result = released.conditioning_threshold(query[None].clone(), beta_threshold=True)
            unsafe.append(score[0])
            denominators.append(item["denominator"])
            corrected.append(result["x_0_hat"][0])
            gates.append(result["is_negation"])
        out[f"unsafe_{index}"] = torch.stack(unsafe)
        out[f"denominator_{index}"] = torch.tensor(denominators, dtype=torch.float64)
        out[f"corrected_{index}"] = torch.stack(corrected)
        out[f"fired_{index}"] = torch.tensor(gates, dtype=torch.uint8)
    out["bandwidths"] = torch.tensor(BANDWIDTHS, dtype=torch.float64)
    out["scale_margin"] = torch.tensor([SCALE, MARGIN], dtype=torch.float64)
    write_atomically(Path(__file__).with_name("reference_kernel.safetensors"),
                     save({k: v.contiguous() for k, v in out.items()}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
