"""Shared pieces of the host-stub generation tests: the digits checkpoint loaded as ``shared.sd_model``,
a negation bank of held-out digits of one class written as a real bank file, and the evaluator."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from lib_safedenoise.banks import fileformat, metadata, spaces
from lib_safedenoise.bench.digits import data, latents
from lib_safedenoise.webui.args import GenerationArgs
from tests.host_stub.harness import StubWebUI

NEGATED_CLASS = 3
BANK = "digit-3"


@functools.lru_cache(maxsize=1)
def _checkpoint():
    from lib_safedenoise.bench import digits

    return digits.load_model().eval(), digits.load_evaluator().eval()


def load_sd_model():
    """What the stub's model loading does in place of ``sd_models.load_model``: name the latent space (for
    ``set_model_type``), the checkpoint and its short hash."""
    from tests import host_stub

    host_stub.install()
    from modules import sd_models

    model, _ = _checkpoint()
    model.latent_space = "digits"
    model.sd_checkpoint_info = sd_models.CheckpointInfo("digits", lambda: model)
    model.sd_model_hash = "d16175"  # the short hash sd_models.load_model sets
    return model


def heldout_latents(digit: int, count: int | None = None) -> torch.Tensor:
    pixels, _ = data.subset("heldout", digit=digit)
    return latents.encode(pixels[:count] if count else pixels)


def ordinary_latents() -> torch.Tensor:
    """Training digits of every class but the negated one: what a user's reference bank would hold."""
    pixels, labels = data.subset("train")
    return latents.encode(pixels[labels != NEGATED_CLASS])


def write_bank(folder: Path, name: str, *, digit: int = NEGATED_CLASS, space: str = "digits",
               bank: torch.Tensor | None = None, role: str = "negation") -> Path:
    bank = heldout_latents(digit) if bank is None else bank
    meta = metadata.new_metadata(title=name, count=bank.shape[0], shape=tuple(bank.shape[1:]),
                                 space=spaces.latent_space(space), role=role)
    path = Path(folder) / f"{name}{fileformat.BANK_SUFFIX}"
    fileformat.save_bank(path, meta, bank.half())
    return path


def start(tmp_path: Path, *, forge: bool = False, enforce: str | None = None, app=None) -> StubWebUI:
    bank_dir = Path(tmp_path) / "banks"
    bank_dir.mkdir(parents=True, exist_ok=True)
    write_bank(bank_dir, BANK)
    webui = StubWebUI(load_sd_model(), bank_dir, forge=forge, enforce=enforce, app=app)
    webui.bank_dir = bank_dir
    return webui


def open_server_latents(folder: Path, request: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of ``request`` on a server without enforcement: extension off, and with the enforced
    settings asked for by the request (what an enforced server must give at least)."""
    from lib_safedenoise.webui import enforcement

    webui = start(folder)
    off = webui.txt2img(**request)["p"].latents[0]
    on = webui.txt2img(**request, safe_denoiser=enforcement.enforced_args((BANK,)).to_script_args())
    return off, on["p"].latents[0]


def args(*, banks=(BANK,), strength=1.0, mode="default", window_end=0.25, threshold=-1.0) -> list:
    return GenerationArgs(True, tuple(banks), (strength,), mode, 0.0, 0.0, window_end, threshold).to_script_args()


def class_share(response: dict, digit: int) -> float:
    _, evaluator = _checkpoint()
    pixels = torch.stack(response["images"])
    predictions, _, _ = evaluator.judge(pixels)
    return float((predictions == digit).float().mean())


class WrappedDigitsModel(torch.nn.Module):
    """The digits model seen as another checkpoint: subclasses change how its latents or pixels look."""

    parameterization = "eps"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.alphas_cumprod = inner.alphas_cumprod
        self.sd_checkpoint_info, self.sd_model_hash = inner.sd_checkpoint_info, inner.sd_model_hash

    def get_learned_conditioning(self, labels):
        return self.inner.get_learned_conditioning(labels)

    def apply_model(self, x, t, cond, **kwargs):
        return self.inner.apply_model(x, t, cond, **kwargs)


class SixteenChannelModel(WrappedDigitsModel):
    """An SD3-like checkpoint: the digits model seen through a pixel-unshuffle, so its latents have 16
    channels at half the size; the WebUI marks such a model ``is_sd3`` (modules/sd_models.py)."""

    is_sd3 = True
    latent_channels = 16

    def apply_model(self, x, t, cond, **kwargs):
        return F.pixel_unshuffle(self.inner.apply_model(F.pixel_shuffle(x, 2), t, cond), 2)

    def decode_first_stage(self, z):
        return self.inner.decode_first_stage(F.pixel_shuffle(z, 2))
