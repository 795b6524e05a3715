"""A negation (or reference) bank as tensors, adapted on demand to each generation.

A bank is encoded once, at one latent size, in one latent space. A generation may run at any device,
dtype and latent size, so the bank is *adapted*: moved, cast, and resized. Resizing is "cover then
centre-crop": scale uniformly (bilinear, antialiased when shrinking) until the bank covers the target,
then cut the centre. Uniform scaling keeps shapes undistorted for every aspect ratio; the crop drops only
borders, where composition matters least. Each adapted view is cached until the bank is edited.

Storage: a view keeps the bank's own half-precision dtype, and a large float32 bank (``LARGE_BANK_BYTES``)
is stored in float16 (bfloat16 on devices that prefer it, or where values exceed float16's range): the
kernels widen every chunk to float32, so only the items' own rounding (about 5e-4 relative) differs. A
bank too large for a device's memory budget stays in CPU memory as a ``HostedBank``, of which the kernel
fetches only the rows it needs (``LatentBank.hosted``).
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ROLES = ("negation", "reference")

LARGE_BANK_BYTES = 256 << 20
"""A float32 bank above this many bytes is stored in half precision on every device."""

BF16_DEVICES = ("xla", "hpu")
"""Device types whose half-precision arithmetic is bfloat16."""

FLOAT16_MAX = 65504.0

_view_owners: dict[int, tuple[weakref.ref, tuple, int]] = {}  # id(view) -> (bank, view key, view._version)


def lasting_store(view: torch.Tensor) -> dict | None:
    """A dict for values derived from an adapted ``view`` that outlive the view (``release`` drops views when
    a generation ends, not what was learnt from them): one per bank, dtype and latent size, holding CPU
    tensors by convention, emptied when the bank is edited. ``None`` for a tensor that is not a bank's
    current, unedited view."""
    owner = _view_owners.get(id(view))
    bank = None if owner is None else owner[0]()
    if bank is None or view._version != owner[2]:
        return None
    with bank._lock:
        if bank._views.get(owner[1]) is not view:
            return None
        return bank._lasting.setdefault(owner[1][1:], {})


def storage_dtype(latents: torch.Tensor, device) -> torch.dtype:
    """The dtype a bank's items are kept in on ``device`` (see the module docstring)."""
    if latents.dtype in (torch.float16, torch.bfloat16):
        return latents.dtype
    if latents.numel() * 4 <= LARGE_BANK_BYTES:
        return torch.float32
    largest = max(max(-float(low), float(high)) for low, high in map(torch.aminmax, latents.split(256)))
    if torch.device(device).type in BF16_DEVICES or largest > FLOAT16_MAX:
        return torch.bfloat16
    return torch.float16


@dataclass(eq=False)
class HostedBank:
    """A bank's items ``[M, C, H, W]`` kept in CPU memory for queries on ``device``: the kernel fetches only
    the rows it scores (the survivors of its pruning bounds, or chunk by chunk for a full pass) and keeps
    its pruning index on ``device``."""

    items: torch.Tensor
    device: torch.device

    @property
    def shape(self) -> torch.Size:
        return self.items.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.items.dtype

    def nbytes(self) -> int:
        return self.items.numel() * self.items.element_size()


def resize_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cover-then-centre-crop resize of ``[M, C, H, W]`` latents to ``size = (H', W')``."""
    height, width = latents.shape[-2:]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return latents
    scale = max(target_h / height, target_w / width)
    cover_h, cover_w = max(target_h, math.ceil(height * scale)), max(target_w, math.ceil(width * scale))
    resized = F.interpolate(latents.float(), size=(cover_h, cover_w), mode="bilinear",
                            align_corners=False, antialias=scale < 1)
    top, left = (cover_h - target_h) // 2, (cover_w - target_w) // 2
    return resized[..., top:top + target_h, left:left + target_w].to(latents.dtype)


@dataclass(eq=False)
class LatentBank:
    """Latents ``[M, C, H, W]`` of one image set, with what is needed to use them safely.

    ``latent_space`` names the VAE and scaling the latents come from (banks are compatible with a model
    exactly when this matches). ``channel_normalized`` marks latents whose every spatial position was
    scaled to a unit channel vector, as the authors' released code caches them: only the ``reference``
    mode, which reproduces that code, may use such a bank.
    """

    name: str
    latents: torch.Tensor
    role: str = "negation"
    latent_space: str = ""
    channel_normalized: bool = False
    short_hash: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._views: dict[tuple, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}  # storage dtype per device type
        self._lasting: dict[tuple, dict] = {}  # (dtype, size) -> lasting_store
        self.version = 0
        self._validate(self.latents)
        if self.role not in ROLES:
            raise ValueError(f"bank {self.name!r}: role must be one of {ROLES}, not {self.role!r}")

    def _validate(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[0] == 0:
            raise ValueError(f"bank {self.name!r}: latents must be [M, C, H, W] with M >= 1, "
                             f"got shape {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"bank {self.name!r}: latents must be floating point, got {latents.dtype}")
        if not all(bool(torch.isfinite(chunk).all()) for chunk in latents.split(256)):  # no bank-sized mask
            raise ValueError(f"bank {self.name!r}: latents contain NaN or Inf")

    @property
    def count(self) -> int:
        return self.latents.shape[0]

    @property
    def channels(self) -> int:
        return self.latents.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.latents.shape[-2:])

    def replace(self, latents: torch.Tensor) -> None:
        """Swap in new latents; every adapted view is dropped."""
        self._validate(latents)
        with self._lock:
            self.latents = latents
            self._views.clear()
            self._dtypes.clear()
            self._lasting.clear()
            self.version += 1

    def adapted(self, *, device, size: tuple[int, int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """The bank on ``device`` in ``dtype`` (``None``: ``storage_dtype``) at latent ``size`` (cached)."""
        with self._lock:
            dtype = dtype or self._storage_dtype(device)
            key = (str(torch.device(device)), dtype, tuple(size))
            view = self._views.get(key)
            if view is None:
                view = resize_latents(self.latents, tuple(size)).to(device=device, dtype=dtype).contiguous()
                self._views[key] = view
                if id(view) not in _view_owners:  # a live view (maybe the latents themselves) has one finalizer
                    weakref.finalize(view, _view_owners.pop, id(view), None)
                _view_owners[id(view)] = (weakref.ref(self), key, view._version)
            return view

    def _storage_dtype(self, device) -> torch.dtype:
        kind = torch.device(device).type
        if kind not in self._dtypes:
            self._dtypes[kind] = storage_dtype(self.latents, device)
        return self._dtypes[kind]

    def hosted(self, *, device, size: tuple[int, int], memory_budget: int | None):
        """``adapted(device=device, size=size)`` when its bytes fit ``memory_budget`` (``None``: no limit),
        else a ``HostedBank`` of the view adapted in CPU memory, for queries on ``device``."""
        with self._lock:
            dtype = self._storage_dtype(device)
        if memory_budget is None or self.count * math.prod(size) * self.channels * dtype.itemsize <= memory_budget:
            return self.adapted(device=device, size=size, dtype=dtype)
        return HostedBank(self.adapted(device="cpu", size=size, dtype=dtype), torch.device(device))

    def release(self) -> None:
        """Free every adapted view (called when a generation ends, so banks leave the GPU); their
        ``lasting_store`` values stay."""
        with self._lock:
            self._views.clear()
