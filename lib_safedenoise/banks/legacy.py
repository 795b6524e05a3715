"""Legacy torch-pickle banks (the authors' ``repellency_proj_ref.pt`` caches), converted into bank files
only with explicit permission.

A torch pickle is recognised by its content, whatever its suffix (``.pt``, ``.pth``, ``.ckpt``, ``.bin``):
torch's zip container, or a bare pickle stream. Even with permission it is read with torch's
weights-only unpickler, which builds tensors, numbers, lists and dicts and refuses anything else; a file
it refuses is refused here too, with our own explanation (never torch's advice to turn the guard off).
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path

import torch

from lib_safedenoise.banks.errors import BankFormatError, PickleRefusedError
from lib_safedenoise.banks.fileformat import BANK_SUFFIX, check_finite, save_bank
from lib_safedenoise.banks.metadata import BankMetadata, new_metadata
from lib_safedenoise.banks.spaces import latent_space


LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def stem_of(file_name: str) -> str:
    """The bank name a file suggests: its name without a bank or torch suffix."""
    for suffix in (BANK_SUFFIX, *LEGACY_SUFFIXES):
        if file_name.lower().endswith(suffix):
            return file_name[:-len(suffix)]
    return file_name


def is_torch_pickle(path: str | Path) -> bool:
    """Whether the file is a torch pickle (zip container or bare pickle stream) rather than safetensors.

    A safetensors file has its JSON header's ``{`` at byte 8; a torch zip starts ``PK\\x03\\x04``; a pickle
    starts with the PROTO opcode ``0x80`` and a protocol number 2..5.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


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
    except pickle.UnpicklingError:
        raise BankFormatError(
            f"{src.name} holds Python objects besides plain tensors, lists and dicts. Unpickling those would "
            "run code chosen by whoever made the file, so this extension refuses them, even with "
            "--allow-pickle (which only permits the weights-only reader). A bank needs nothing but its latent "
            "tensor: ask for a .safetensors bank, or extract the tensor yourself in a throw-away, offline "
            "environment and save it with safetensors.") from None
    except Exception as error:  # torch raises many types for damaged or unknown layouts
        raise BankFormatError(f"{src.name} is not a torch file this extension can read ({type(error).__name__}: "
                              "damaged, or written in an unknown layout)") from None
    if isinstance(data, dict):
        candidates = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(candidates) != 1:
            raise BankFormatError(f"{src.name}: a legacy bank holds exactly one latent tensor, this file holds "
                                  f"{len(candidates)} at its top level (keys {list(data)[:10]}); model "
                                  "checkpoints (.ckpt, .bin) and state dicts are not banks")
        data = candidates[0]
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.ndim not in (2, 4):
        raise BankFormatError(f"{src.name}: expected a float tensor [N, C, H, W] or [N, C*H*W], "
                              f"got {type(data).__name__} {tuple(getattr(data, 'shape', ()))}")
    check_finite(data, bank=src.name)
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
