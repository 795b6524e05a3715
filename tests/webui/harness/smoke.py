"""Start a WebUI checkout you already have (AUTOMATIC1111 1.10.x, Forge or reForge) the way the real-WebUI
suite does, check that it generates, and stop it. Standard library only: run it with any Python 3.9+.

    python tests/webui/harness/smoke.py --webui-dir <root> --python <webui-python> \
        --hf-home <hf_home> [--ckpt <sd15-random.safetensors>] [--port 7861] [--keep-log <file>]

Steps: start ``launch.py`` with the suite's flags (printed in full; see ``webui_hosts.py``) and a throw-away data
dir, in its own process group; wait until the log says the model is loaded (Forge: "Startup time") and
``GET /sdapi/v1/sd-models`` answers; ``POST /sdapi/v1/txt2img`` (64x64, 3 steps, ``Euler a``, seed 1234; on Forge
this also loads the model); print the infotext; stop through ``/sdapi/v1/server-stop`` (Forge, reForge:
``server-kill``), then SIGINT, SIGTERM and SIGKILL to the process group it started if it is still running;
remove what the WebUI created in its root. Exit status 0 when the image came back. This extension is not linked
into the WebUI here: the check is the host alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import webui_hosts  # noqa: E402

PAYLOAD = {"prompt": "a cat", "negative_prompt": "", "steps": 3, "width": 64, "height": 64,
           "sampler_name": "Euler a", "cfg_scale": 7, "seed": 1234, "save_images": False}


def request(url: str, payload: dict | None = None, timeout: float = 600, *, parse: bool = True):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if parse else body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webui-dir", type=Path, required=True, help="the WebUI root (with launch.py)")
    parser.add_argument("--python", type=Path, required=True, help="the WebUI environment's interpreter")
    parser.add_argument("--hf-home", type=Path, help="offline HF cache (make_hf_cache.py); required for A1111")
    parser.add_argument("--ckpt", type=Path, help="checkpoint (make_random_sd15.py); required for Forge, reForge")
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server")
    parser.add_argument("--keep-log", type=Path, help="copy the server log here")
    args = parser.parse_args()

    root = args.webui_dir.resolve()
    kind = webui_hosts.detect_kind(root)
    print(f"host: {webui_hosts.describe(root)}")
    if kind != webui_hosts.A1111 and args.ckpt is None:
        print(f"{webui_hosts.HOST_NAMES[kind]} needs --ckpt (it has no empty test checkpoint)")
        return 2
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="webui-smoke-") as data_dir:
        command = webui_hosts.launch_command(args.python, root, port=port, data_dir=Path(data_dir),
                                             ckpt=args.ckpt.resolve() if args.ckpt else None)
        env = webui_hosts.offline_environment(args.hf_home.resolve() if args.hf_home else None)
        print(f"command (in {root}):\n  {shlex.join(command)}")
        log_path = Path(data_dir) / "webui.log"
        entries_before = set(os.listdir(root))
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        ok = False
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the WebUI exited with {process.returncode} while starting")
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError(f"not ready after {args.timeout:.0f} s")
                if webui_hosts.is_ready_log(kind, log_path.read_text(errors="replace")):
                    try:
                        request(url + "/sdapi/v1/sd-models", timeout=5)
                        break
                    except (urllib.error.URLError, OSError):
                        pass
                time.sleep(1)
            print(f"ready after {time.monotonic() - started:.1f} s")
            t0 = time.monotonic()
            answer = request(url + "/sdapi/v1/txt2img", PAYLOAD)
            png = base64.b64decode(answer["images"][0])
            print(f"txt2img: {len(png)} bytes of PNG in {time.monotonic() - t0:.1f} s")
            print("infotext: " + json.loads(answer["info"])["infotexts"][0].replace("\n", " | "))
            ok = png.startswith(b"\x89PNG")
        except Exception as error:  # report, stop, and show the log's end
            print(f"FAILED: {error}")
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
        finally:
            stop(process, url + webui_hosts.STOP_ROUTES[kind])
            if args.keep_log:
                args.keep_log.write_bytes(log_path.read_bytes())
            # --data-dir keeps most files out of the root; remove what the WebUI still created there
            # (e.g. config_states/, which it writes into its root whatever the data dir)
            for entry in sorted(set(os.listdir(root)) - entries_before):
                path = root / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                print(f"removed {entry}, which the WebUI created in its root")
    print("smoke test " + ("passed" if ok else "failed"))
    return 0 if ok else 1


def stop(process: subprocess.Popen, stop_url: str) -> None:
    if process.poll() is None:
        try:
            request(stop_url, {}, timeout=5, parse=False)  # A1111 answers "Stopping."
        except (urllib.error.URLError, OSError):
            pass  # server-kill exits before it answers
    for sig in (None, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
        try:
            process.wait(timeout=30 if sig is None else 10)
            break
        except subprocess.TimeoutExpired:
            continue
    print(f"stopped (exit status {process.returncode})")


if __name__ == "__main__":
    sys.exit(main())
