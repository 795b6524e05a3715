"""Legacy torch-pickle banks (the authors' ``repellency_proj_ref.pt`` caches), converted into bank files
only with explicit permission."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from lib_safedenoise.banks.errors import BankFormatError, PickleRefusedError
from lib_safedenoise.banks.fileformat import save_bank
from lib_safedenoise.banks.metadata import BankMetadata, new_metadata
from lib_safedenoise.banks.spaces import latent_space


def convert_legacy_pt(src: str | Path, dest: str | Path, *, allow_pickle: bool = False, space_id: str = "sd1",
                      title: str | None = None, role: str = "negation") -> BankMetadata:
    """Convert a torch-pickle bank (the authors' ``repellency_proj_ref.pt``) into a bank file.

    Refused unless ``allow_pickle``: unpickling runs code from the file. Even then only
    ``weights_only`` loading is used. Those caches hold channel-normalised latents (``[N, C, H, W]``
    or flattened ``[N, C*H*W]``), so the result is marked ``channel_normalized`` (reference mode only).
    """
    src = Path(src)
    if not allow_pickle:
        raise PickleRefusedError(f"{src.name} is a torch pickle: loading it can run arbitrary code. Import it "
                                 "only if you trust its source, with --allow-pickle (CLI) or the "
                                 "'allow pickle' checkbox.")
    warnings.warn(f"unpickling {src.name} (weights only); pickle files can be unsafe", stacklevel=2)
    try:
        data = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad or unsafe pickles
        raise BankFormatError(f"{src.name}: cannot load as a weights-only torch file ({error})") from None
    if isinstance(data, dict):
        candidates = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(candidates) != 1:
            raise BankFormatError(f"{src.name}: expected one tensor, found keys {list(data)[:10]}")
        data = candidates[0]
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.ndim not in (2, 4):
        raise BankFormatError(f"{src.name}: expected a float tensor [N, C, H, W] or [N, C*H*W], "
                              f"got {type(data).__name__} {tuple(getattr(data, 'shape', ()))}")
    space = latent_space(space_id)
    if data.ndim == 2:
        side = math.isqrt(data.shape[1] // space.channels)
        if space.channels * side * side != data.shape[1]:
            raise BankFormatError(f"{src.name}: {data.shape[1]} values per item is not {space.channels}×H×H "
                                  f"for {space.title}; pass the right latent space")
        data = data.reshape(data.shape[0], space.channels, side, side)
    if data.shape[1] != space.channels:
        raise BankFormatError(f"{src.name}: {data.shape[1]} channels, but {space.title} latents have "
                              f"{space.channels}")
    meta = new_metadata(title=title or src.stem, count=data.shape[0], shape=tuple(data.shape[1:]), space=space,
                        role=role, encode_mode="sample", channel_normalized=True,
                        description=f"imported from legacy pickle {src.name}")
    return save_bank(dest, meta, data.float())
