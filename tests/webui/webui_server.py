"""A real WebUI (AUTOMATIC1111 v1.10.x, Forge or reForge) started for the integration suite, and its HTTP API.

The server runs from ``SD_WEBUI_DIR`` with ``SD_WEBUI_PYTHON`` on a free loopback port. Everything it writes
(``config.json``, ``ui-config.json``, ``params.txt``, outputs, the bank folder, our extension's link) goes into a
temporary ``--data-dir``; the only files left in the WebUI root are those the WebUI writes there itself whatever
the data dir (``config_states/``, ``__pycache__``), and ``WebUIServer.stop`` removes those it created.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION_LINK_NAME = "sd-webui-safe-denoiser"
SCRIPT_TITLE = "Safe Denoiser"
SCRIPT_API_NAME = SCRIPT_TITLE.lower()  # /sdapi/v1/scripts lists titles lowercased
START_TIMEOUT_S = float(os.environ.get("SD_WEBUI_START_TIMEOUT", "300"))
REQUEST_TIMEOUT_S = 600.0

SD1_BANK, WRONG_FAMILY_BANK = "webui-suite-sd1", "webui-suite-sdxl"

import webui_hosts  # noqa: E402
from webui_hosts import A1111, FORGE, HOST_NAMES, REFORGE  # noqa: E402,F401

sys.path.insert(0, str(REPO_ROOT))  # tests/webui is on sys.path, the repository root is not
from lib_safedenoise.banks import fileformat, metadata, spaces  # noqa: E402


@dataclass(frozen=True)
class WebUIConfig:
    """The suite's settings, read from the environment (see tests/webui/README.md)."""

    root: Path
    python: Path
    ckpt: Path | None
    hf_home: Path | None
    extra_args: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``a1111``, ``forge`` or ``reforge`` (webui_hosts.detect_kind)."""
        return webui_hosts.detect_kind(self.root)

    @property
    def host_name(self) -> str:
        return HOST_NAMES[self.kind]

    def describe(self) -> str:
        return webui_hosts.describe(self.root)

    @classmethod
    def from_environment(cls) -> "WebUIConfig | str":
        """The configuration, or the reason the suite is skipped."""
        root, python = os.environ.get("SD_WEBUI_DIR"), os.environ.get("SD_WEBUI_PYTHON")
        if not root or not python:
            return "real-WebUI suite: set SD_WEBUI_DIR (a WebUI root) and SD_WEBUI_PYTHON (its interpreter)"
        config = cls(Path(root).resolve(), Path(python), _optional_path("SD_WEBUI_CKPT"),
                     _optional_path("SD_WEBUI_HF_HOME"), tuple(os.environ.get("SD_WEBUI_ARGS", "").split()))
        if not (config.root / "launch.py").is_file():
            return f"SD_WEBUI_DIR={root} is not a WebUI root (no launch.py)"
        if not config.python.is_file():
            return f"SD_WEBUI_PYTHON={python} does not exist"
        if config.ckpt is not None and not config.ckpt.is_file():
            return f"SD_WEBUI_CKPT={config.ckpt} does not exist"
        if config.kind != A1111 and config.ckpt is None:
            return (f"{config.host_name} has no empty test checkpoint: set SD_WEBUI_CKPT to a real (e.g. "
                    "random-weights) one")
        if config.kind == A1111 and config.hf_home is None:
            return ("the AUTOMATIC1111 WebUI loads the openai/clip-vit-large-patch14 tokenizer from the Hugging Face "
                    "cache even with --do-not-download-clip: set SD_WEBUI_HF_HOME to an offline cache "
                    "(tests/webui/harness/make_hf_cache.py)")
        return config


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).resolve() if value else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_image(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def encode_image(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Generation:
    """One API answer: decoded images, the parsed ``info`` and its infotexts."""

    images: list[np.ndarray]
    info: dict
    raw: dict = field(repr=False)

    @classmethod
    def from_response(cls, response: httpx.Response) -> "Generation":
        raw = response.json()
        return cls([decode_image(b64) for b64 in raw["images"]], json.loads(raw["info"]), raw)

    @property
    def infotexts(self) -> list[str]:
        return self.info["infotexts"]

    @property
    def report(self) -> dict | None:
        return self.info.get("extra_generation_params", {}).get("Safe Denoiser report")


class WebUIServer:
    """One WebUI process with our working tree linked in as an extension."""

    def __init__(self, config: WebUIConfig, data_dir: Path, extra_args: tuple[str, ...] = (), *,
                 warm_up: bool = True):
        self.config = config
        self.data_dir = data_dir
        self.extra_args = tuple(extra_args)
        # Forge loads the checkpoint lazily, on the first generation; a warm-up generation loads it before the
        # tests run. ``warm_up=False`` leaves it unloaded: what a user's first action meets after a start.
        self.warm_up = warm_up
        self.generations = 0  # generation requests this server answered (the warm-up included)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"webui-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)
        self._root_entries_before: set[str] = set()
        self._parser: subprocess.Popen | None = None

    # ------------------------------------------------------------------ paths

    @property
    def extension_link(self) -> Path:
        return self.data_dir / "extensions" / EXTENSION_LINK_NAME

    @property
    def bank_dir(self) -> Path:
        """``<models dir>/safe-denoiser``, the extension's default bank folder (host.default_bank_dir)."""
        return self.data_dir / "models" / "safe-denoiser"

    def environment(self) -> dict[str, str]:
        env = webui_hosts.offline_environment(self.config.hf_home)
        for name in ("SD_WEBUI_DIR", "SD_WEBUI_PYTHON", "SD_WEBUI_CKPT", "SD_WEBUI_ARGS", "SD_WEBUI_HF_HOME"):
            env.pop(name, None)
        return env

    def host_flags(self) -> list[str]:
        """The device flags; the backends of Forge (backend/args.py) and reForge
        (ldm_patched/modules/args_parser.py) pick the device on import and need ``--always-cpu`` in any process
        that imports ``modules.shared``, or they look for a CUDA device."""
        return list(webui_hosts.DEVICE_FLAGS[self.config.kind])

    def command(self) -> list[str]:
        """The full launch command (webui_hosts.launch_command) plus ``SD_WEBUI_ARGS`` and this server's flags."""
        return webui_hosts.launch_command(self.config.python, self.config.root, port=self.port,
                                          data_dir=self.data_dir, ckpt=self.config.ckpt,
                                          extra_args=(*self.config.extra_args, *self.extra_args))

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._root_entries_before = set(os.listdir(self.config.root))
        self.extension_link.parent.mkdir(parents=True, exist_ok=True)
        if self.extension_link.is_symlink():  # left by an interrupted run; the data dir is the suite's own
            self.extension_link.unlink()
        self.extension_link.symlink_to(REPO_ROOT, target_is_directory=True)
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self.command(), cwd=self.config.root, env=self.environment(),
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the WebUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            if webui_hosts.is_ready_log(self.config.kind, self.log()):
                try:
                    if self.client.get("/sdapi/v1/sd-models", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        else:
            raise RuntimeError(f"the WebUI was not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
        if self.warm_up and webui_hosts.LOADS_MODEL_LAZILY[self.config.kind]:
            self.txt2img(steps=1)

    def stop(self) -> None:
        """Stop the process this object started (API route, then signals to its own process group) and
        remove what the run added to the WebUI root and the data dir's extensions folder."""
        try:
            if self.process is not None and self.process.poll() is None:
                route = webui_hosts.STOP_ROUTES[self.config.kind]
                try:
                    self.client.post(route, timeout=5)
                except httpx.HTTPError:
                    pass  # server-kill exits before it answers
                self._wait_exit(30)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                    if self.process.poll() is not None:
                        break
                    try:
                        os.killpg(self.process.pid, sig)
                    except ProcessLookupError:
                        break
                    self._wait_exit(10)
        finally:
            if self._parser is not None:
                try:
                    self._parser.stdin.close()
                    self._parser.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):  # it died (its log says why) or hangs
                    self._parser.kill()
            self.client.close()
            if self.extension_link.is_symlink():
                self.extension_link.unlink()
            for entry in set(os.listdir(self.config.root)) - self._root_entries_before:
                path = self.config.root / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _wait_exit(self, seconds: float) -> None:
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ------------------------------------------------------------------ API

    def get(self, route: str) -> Any:
        response = self.client.get(route)
        response.raise_for_status()
        return response.json()

    def post(self, route: str, payload: dict) -> httpx.Response:
        return self.client.post(route, json=payload)

    def generate(self, route: str, payload: dict) -> Generation:
        response = self.generate_response(route, payload)
        if response.status_code != 200:
            raise AssertionError(f"{route} answered {response.status_code}: {response.text[:2000]}\n"
                                 f"--- server log ---\n{self.log_tail()}")
        return Generation.from_response(response)

    def generate_response(self, route: str, payload: dict) -> httpx.Response:
        """The raw answer, whatever its status (for requests that may rightly fail)."""
        self.generations += 1
        return self.post(route, payload)

    def txt2img(self, **payload) -> Generation:
        return self.generate("/sdapi/v1/txt2img", base_payload(payload))

    def img2img(self, **payload) -> Generation:
        return self.generate("/sdapi/v1/img2img", base_payload(payload))

    def parse_infotext(self, infotext: str) -> dict:
        """The WebUI's own parser, ``modules.infotext_utils.parse_generation_parameters``, run in the WebUI's
        interpreter (one helper process per server, started on first use)."""
        if self._parser is None:
            self._parser = subprocess.Popen(
                [str(self.config.python), "-c", PARSER_LOOP, "--data-dir", str(self.data_dir), *self.host_flags()],
                cwd=self.config.root,
                env=dict(self.environment(), PYTHONDONTWRITEBYTECODE="1"), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=open(self.data_dir / "infotext-parser.log", "wb"), text=True)
            self._parser.stdin.write(json.dumps(self.get("/sdapi/v1/options")) + "\n")
        self._parser.stdin.write(json.dumps(infotext) + "\n")
        self._parser.stdin.flush()
        line = self._parser.stdout.readline()
        if not line.startswith("PARSED="):
            log = (self.data_dir / "infotext-parser.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the WebUI's infotext parser failed: {line!r}\n{log}")
        return json.loads(line[len("PARSED="):])


# Reads the server's options (``GET /sdapi/v1/options``) from the first line, then one JSON string per line, and
# answers ``PARSED=<json>`` on its own copy of stdout (anything the WebUI prints goes to stderr). Options are
# initialised as the server's are (``shared_init.initialize`` with the same data dir and device flags, then the
# server's values), since the parser reads some of them (Forge: ``sd_model_checkpoint``).
# reForge: ldm_patched/modules/args_parser.py parses an empty argument list when imported (only webui.py's
# modules_forge.initialization.initialize_forge re-reads sys.argv), so without the re-parse here its model
# management never sees --always-cpu and dies with "Found no NVIDIA driver".
PARSER_LOOP = """
import json, os, sys
answers = os.fdopen(os.dup(1), 'w')
os.dup2(2, 1)
sys.path.insert(0, '.')
sys.argv = ['webui-suite-parser', *sys.argv[1:]]
if os.path.isfile(os.path.join('ldm_patched', 'modules', 'args_parser.py')):
    from ldm_patched.modules import args_parser
    args_parser.args, _ = args_parser.parser.parse_known_args()
from modules import shared, shared_init
shared_init.initialize()
shared.opts.data.update(json.loads(sys.stdin.readline()))
from modules.infotext_utils import parse_generation_parameters
for line in sys.stdin:
    print('PARSED=' + json.dumps(parse_generation_parameters(json.loads(line)), default=str), file=answers, flush=True)
"""


def base_payload(payload: dict) -> dict:
    """The suite's small, deterministic request (64x64, 3 steps, fixed seed) with ``payload`` on top."""
    return {"prompt": "a cat", "negative_prompt": "", "steps": 3, "width": 64, "height": 64,
            "sampler_name": "Euler a", "cfg_scale": 7, "seed": 1234, "batch_size": 1, "n_iter": 1,
            "save_images": False, "send_images": True, **payload}


# A mode whose gate is always open (threshold 1e-9 below the kernel's 1e-8 floor) and whose correction is
# large (scale 0.69): it fires on every step of its window whatever the bank, so the window and the effect on
# the image are both observable with any checkpoint.
ALWAYS_FIRING_MODE = "reference-memorization"


def script_args(enabled: bool = True, banks=(), strengths="", mode: str = ALWAYS_FIRING_MODE,
                bandwidth: float = 0.0, window_start: float = 0.0, window_end: float = 1.0,
                threshold: float = -1.0) -> dict:
    """``alwayson_scripts`` entry for our script, in the documented positional order
    (lib_safedenoise/generation_args.py)."""
    return {SCRIPT_TITLE: {"args": [enabled, list(banks), strengths, mode, bandwidth, window_start, window_end,
                                    threshold]}}


def expected_fired_steps(steps: int, window: tuple[float, float]) -> list[int]:
    """1-based sampler steps inside ``window``: step ``i`` (0-based) of ``steps`` sits at ``i / (steps-1)``."""
    return [i + 1 for i in range(steps) if window[0] <= (i / (steps - 1) if steps > 1 else 0.0) <= window[1]]


def write_bank(folder: Path, name: str, space_id: str, count: int = 6, seed: int = 7, *,
               role: str = "negation") -> Path:
    """A bank of seeded random 4x8x8 latents declared to be in ``space_id`` (written with our own writer)."""
    space = spaces.latent_space(space_id)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, space.channels, 8, 8, generator=generator).half()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name + fileformat.BANK_SUFFIX)
    meta = metadata.new_metadata(title=name, count=count, shape=(space.channels, 8, 8), space=space, role=role)
    fileformat.save_bank(path, meta, latents)
    return path


def write_nan_bank(folder: Path, name: str, space_id: str, *, role: str = "reference") -> Path:
    """A well-formed bank whose latents are all NaN, its recorded hash matching (as another tool, or a writer
    without our value check, would leave it): our writer refuses NaN, so its data is replaced afterwards."""
    path = write_bank(folder, name, space_id, role=role)
    header, data_offset, size = fileformat.read_raw_header(path)
    data = b"\x00\x7e" * ((size - data_offset) // 2)  # float16 NaN
    header["__metadata__"]["modelspec.hash_sha256"] = "0x" + hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path
