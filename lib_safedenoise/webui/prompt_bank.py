"""Banks from a prompt: the loaded model's own samples of a prompt, generated through the WebUI's own txt2img
processing, kept as latents and written as a negation or reference bank.

Nobody has to collect images: "a photo of a cat" gives a bank of cats as this checkpoint draws them, with
the sampler, LoRAs (extra networks in the prompt) and styles the request names. The samples are generated a
few at a time (``batch_size``) with seeds ``seed, seed + 1, ...``: the first ``unguided_share`` of them at CFG
1 (``banks.builder.UNGUIDED_SHARE`` says why), the rest at the requested CFG; with several ``prompts`` each
batch takes the next in turn. The card's ``sdn_generation`` records everything needed to generate the same
latents again.

The one-click reference (``as_one_click_reference``) is ``REFERENCE_SAMPLES`` guided samples of
``GENERIC_PROMPTS``: ordinary images as this checkpoint draws them when asked for ordinary things.

Failure policy, as for image builds: the bank is written once, atomically, after the last sample; a
cancelled, interrupted or failed run writes nothing; an existing bank is replaced only when asked.

Enforcement: a bank's latents decode back into images, so on a server with enforced banks a prompt bank is
generated like any other request there, with the enforced correction running (our script runs with the
request's own correction off; the enforced one cannot be switched off). Every batch's report must show the
enforced correction ran and did not fail, else the run stops and writes nothing; the card names the
enforced banks that were active.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from lib_safedenoise.banks import spaces
from lib_safedenoise.banks.builder import (UNGUIDED_SHARE, BuildReport, Progress, unguided_samples,
                                           write_generated_bank)
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.metadata import MAX_GENERATION_CHARS, TEXT_LIMITS
from lib_safedenoise.core.latent_bank import ROLES
from lib_safedenoise.webui.args import GenerationArgs
from lib_safedenoise.webui.enforcement import EnforcementError
from lib_safedenoise.webui.keys import REPORT_KEY, SCRIPT_TITLE

MAX_SAMPLES = 10_000
MAX_BATCH = 64
MAX_STEPS = 150
MAX_SIDE = 4096
MAX_SEED = 2**32 - 1
MAX_PROMPTS = 1_000
REFERENCE_SAMPLES = 400
"""Samples of the one-click reference bank (``as_one_click_reference``)."""
REFERENCE_PREFIX = "reference-own-samples"
GENERIC_PROMPTS = (
    "a photo of a city street", "a portrait photo of a person", "a mountain landscape with a lake",
    "a bowl of fruit on a wooden table", "a dog running in a park", "a cat sleeping on a sofa",
    "an oil painting of a harbour with boats", "a cosy living room", "a forest path in autumn",
    "a plate of pasta", "a red car parked on a street", "a bird on a branch", "a beach at sunset",
    "people at a street market", "a pencil sketch of an old house", "a watercolor of flowers in a vase",
    "a bicycle leaning against a brick wall", "a modern kitchen", "a snowy village at night",
    "a desk with a laptop and a cup of coffee", "a portrait of an old man", "a group of friends laughing",
    "a lighthouse on a cliff", "a field of sunflowers", "a train station", "a cartoon of a smiling robot",
    "a horse in a meadow", "a bookshelf full of books", "a bridge over a river", "a child playing with a ball",
    "a castle on a hill", "a close-up of a flower", "a rainy street with umbrellas", "a woman reading in a cafe",
    "a fishing boat on the sea", "a desert with sand dunes", "an anime drawing of a girl with a hat",
    "a farmhouse with a garden", "a plate of sushi", "a busy airport terminal")
"""The one-click reference's prompts: ordinary subjects and styles. A reference of what the model draws when
asked for ordinary things is a typical image's estimate; the empty prompt's samples (the model's unconditional
draws) are less typical, and so was the safe estimate made from them (README, "As a new user gets it")."""


def reference_bank_name(latent_space: str) -> str:
    """The one-click reference bank's name: one per latent space, since each model family needs its own."""
    return f"{REFERENCE_PREFIX}-{latent_space}"


class GenerationCancelled(BankError):
    def __init__(self, done: int, total: int):
        super().__init__(f"cancelled after {done} of {total} samples; nothing was written")


@dataclass(frozen=True)
class PromptBankRequest:
    """What to generate. ``width``/``height`` 0 mean the model's native size; ``seed`` -1 a random one."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""
    samples: int = 100
    role: str = "negation"
    prompts: tuple[str, ...] = ()
    """Several prompts, one per batch in turn, instead of ``prompt`` (which must then be empty)."""
    unguided_share: float = UNGUIDED_SHARE
    """The share of the samples (the first ones) drawn at CFG 1, the rest at ``cfg_scale``."""
    styles: tuple[str, ...] = ()
    seed: int = -1
    steps: int = 20
    cfg_scale: float = 7.0
    sampler_name: str = "Euler"
    width: int = 0
    height: int = 0
    batch_size: int = 4
    overwrite: bool = False
    card: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        def bounded(what: str, value: Any, low: float, high: float, kind: type) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high) or \
                    (kind is int and value != int(value)):
                raise ValueError(f"{what} must be {'a whole number' if kind is int else 'a number'} from {low} "
                                 f"to {high}, not {value!r}")

        bounded("samples", self.samples, 1, MAX_SAMPLES, int)
        bounded("batch_size", self.batch_size, 1, MAX_BATCH, int)
        bounded("steps", self.steps, 1, MAX_STEPS, int)
        bounded("cfg_scale", self.cfg_scale, 0.0, 100.0, float)
        bounded("unguided_share", self.unguided_share, 0.0, 1.0, float)
        bounded("seed", self.seed, -1, MAX_SEED, int)
        for side in ("width", "height"):
            bounded(side, getattr(self, side), 0, MAX_SIDE, int)
            if getattr(self, side) % 8:
                raise ValueError(f"{side} must be a multiple of 8 (the latent is 1/8 of the image), not "
                                 f"{getattr(self, side)}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if not isinstance(self.sampler_name, str) or not self.sampler_name.strip():
            raise ValueError("sampler_name must name one of the WebUI's samplers, e.g. Euler")
        texts = [("prompt", self.prompt), ("negative_prompt", self.negative_prompt),
                 *((f"prompts[{i}]", text) for i, text in enumerate(self.prompts))]
        for what, text in texts:
            if not isinstance(text, str) or len(text) > TEXT_LIMITS["description"]:
                raise ValueError(f"{what} must be text of at most {TEXT_LIMITS['description']} characters")
        if len(self.prompts) > MAX_PROMPTS:
            raise ValueError(f"prompts may list at most {MAX_PROMPTS} prompts, not {len(self.prompts)}")
        if sum(map(len, self.prompts)) > MAX_GENERATION_CHARS // 4:  # recorded twice (as given, as used)
            raise ValueError(f"the prompts may hold at most {MAX_GENERATION_CHARS // 4} characters in all, to "
                             "fit on the bank's card")
        if self.prompts and self.prompt:
            raise ValueError("give either one prompt or a list of prompts, not both")
        if not all(isinstance(style, str) for style in self.styles):
            raise ValueError("styles must be a list of style names")


def as_one_click_reference(request: PromptBankRequest) -> PromptBankRequest:
    """``request``'s count and sampling settings as the one-click reference bank: ``GENERIC_PROMPTS`` in turn,
    all at the requested CFG (the reference stands for what users generate), role reference, named for the
    loaded model's latent space."""
    return dataclasses.replace(request, name="", role="reference", prompt="", prompts=GENERIC_PROMPTS,
                               unguided_share=0.0)


class Cancel(threading.Event):
    """A cancel flag that also interrupts the WebUI's running generation, so a cancel stops within a step."""

    def __init__(self):
        super().__init__()
        self.interrupt: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        if self.interrupt is not None:
            self.interrupt()


def enforced_correction_problem(report: Any, enforced: Sequence[str]) -> str:
    """Why a batch's latents may not enter a bank on a server enforcing ``enforced``, or "" when they may:
    the batch's report must show the enforced correction planned and never failed."""
    if not enforced:
        return ""
    if not isinstance(report, Mapping):
        return "the enforced correction did not run (no Safe Denoiser report)"
    if report.get("failed"):
        return f"the enforced correction failed: {report['failed']}"
    if not any(correction.get("enforced") for correction in report.get("corrections", [])):
        return "the enforced correction did not run"
    return ""


def generate_bank(request: PromptBankRequest, *, path, encoder, generate: Callable[..., dict],
                  enforced: Sequence[str], host_name: str, progress: Progress | None = None,
                  cancel: Cancel | None = None, interrupt: Callable[[], None] | None = None) -> BuildReport:
    """Generate ``request.samples`` samples with ``generate`` (``host.txt2img_latents``) and write them to
    ``path``. ``encoder`` is the loaded model's (``host.WebuiVaeEncoder``), read for its latent space, native
    size and VAE; call under the WebUI's queue lock. Raises ``GenerationCancelled``, ``EnforcementError`` or
    ``BankError`` with nothing written."""
    started = time.perf_counter()
    space = spaces.latent_space(encoder.latent_space)
    height, width = request.height or encoder.resolution[0], request.width or encoder.resolution[1]
    seed = request.seed if request.seed >= 0 else random.randrange(MAX_SEED - request.samples)
    own_args = GenerationArgs(enabled=False).to_script_args()
    unguided = unguided_samples(request.samples, request.unguided_share)
    prompts = request.prompts or (request.prompt,)
    kept: list[torch.Tensor] = []
    done, batches, used, prompts_used = 0, 0, {}, {}
    if cancel is not None:
        cancel.interrupt = interrupt
    try:
        while done < request.samples:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(done, request.samples)
            # a batch never straddles the unguided and guided parts
            count = min(request.batch_size, (unguided if done < unguided else request.samples) - done)
            try:
                batch = generate(prompt=prompts[batches % len(prompts)], negative_prompt=request.negative_prompt,
                                 styles=request.styles, seed=seed + done, batch_size=count, steps=request.steps,
                                 cfg_scale=1.0 if done < unguided else request.cfg_scale,
                                 sampler_name=request.sampler_name, width=width, height=height,
                                 own_script_args=own_args, own_script_title=SCRIPT_TITLE)
            except BankError:
                raise
            except Exception as error:  # the WebUI's processing failed (a bad sampler name, out of memory, ...)
                raise BankError(f"the generation failed after {done} of {request.samples} samples "
                                f"({type(error).__name__}: {error}); nothing was written") from error
            problem = enforced_correction_problem(batch["extra_generation_params"].get(REPORT_KEY), enforced)
            if problem:
                raise EnforcementError(f"{problem}; the samples were discarded and no bank was written")
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(done, request.samples)
            if batch["interrupted"]:
                raise BankError(f"the generation was interrupted after {done} of {request.samples} samples "
                                "(the WebUI's Interrupt or Skip button); nothing was written")
            latents = batch["latents"]
            if latents is None or latents.shape[0] != count or batch["seeds"] != list(range(seed + done,
                                                                                             seed + done + count)):
                raise BankError(f"the WebUI returned {0 if latents is None else latents.shape[0]} samples with "
                                f"seeds {batch['seeds']} for {count} samples from seed {seed + done}; nothing "
                                "was written")
            if not torch.isfinite(latents).all():
                raise BankError("the model produced NaN or Inf latents (try another sampler, or --no-half); "
                                "nothing was written")
            kept.append(latents.half())
            used = batch
            prompts_used.setdefault(batches % len(prompts), batch["prompt_used"])
            done += count
            batches += 1
            if progress is not None:
                progress(done, request.samples, f"sample {done} of {request.samples}")
    finally:
        if cancel is not None:
            cancel.interrupt = None
    generation = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "styles": list(request.styles),
        "prompt_used": used["prompt_used"], "negative_prompt_used": used["negative_prompt_used"],
        "model": used["model"], "model_hash": used["model_hash"], "sampler": used["sampler"],
        "scheduler": used["scheduler"], "steps": request.steps, "cfg_scale": float(request.cfg_scale),
        "unguided_samples": unguided, "width": width, "height": height, "batch_size": request.batch_size,
        "seed": seed, "samples": request.samples, "host": host_name, "enforced": list(enforced)}
    if request.prompts:  # each prompt as given and as used (styles applied), in the order they were used
        generation["prompts"] = list(request.prompts)
        generation["prompts_used"] = [prompts_used[i] for i in sorted(prompts_used)]
        generation["prompt_used"] = ""
    card = {key: value for key, value in request.card.items() if value}
    what = f"{len(request.prompts)} prompts in turn" if request.prompts else \
        repr(request.prompt[:200]) if request.prompt else "an empty prompt"
    card.setdefault("description", f"{request.samples} samples of {what} by {used['model'] or 'the loaded model'}"
                                   + (f", the first {unguided} at CFG 1" if unguided else ""))
    report = write_generated_bank(torch.cat(kept), path, space=space, generation=generation, role=request.role,
                                  overwrite=request.overwrite, model_family=encoder.family,
                                  vae_name=encoder.vae_name, vae_hash=encoder.vae_hash, **card)
    report.seconds = time.perf_counter() - started  # the generation included
    return report
