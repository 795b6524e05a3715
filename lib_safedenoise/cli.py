"""``python -m lib_safedenoise bank build|inspect|verify|export|import|merge``: banks outside the WebUI.

Exit status: 0 success, 1 a bank problem (bad file, failed verification, nothing usable, an output that
exists without ``--overwrite``), 2 bad usage, 130 cancelled with Ctrl-C (the existing bank, if any, is left
as it was). Errors are printed as sentences, file-system errors included. ``--json`` prints one JSON object
on stdout (``{"ok": false, "error": ...}`` on failure); messages and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from lib_safedenoise.banks import builder, fileformat, legacy, metadata, presets, spaces
from lib_safedenoise.banks.store import BankStore
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.core.latent_bank import ROLES

PRIVACY_NOTE = ("A bank decodes back into recognisable low-resolution images: sharing a bank of private or "
                "explicit images is close to sharing the images.")


def _settings(text: str | None) -> dict | None:
    if text is None:
        return None
    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    try:
        return metadata.validate_settings(json.loads(raw))
    except ValueError as error:
        raise BankError(f"--settings: {error}") from None


def _card(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in presets.CARD_FIELDS if getattr(args, k, None) is not None}


def _add_card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description", help="card: what the bank contains")
    parser.add_argument("--author", help="card: who built it")
    parser.add_argument("--license", help="card: licence of the bank")
    parser.add_argument("--usage-hint", dest="usage_hint", help="card: intended use")
    parser.add_argument("--settings", help="recommended settings as JSON keyed by mode name, or @file.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib_safedenoise", description="Safe Denoiser tools.")
    groups = parser.add_subparsers(dest="group", required=True, metavar="bank")
    bank = groups.add_parser("bank", help="build, check and share negation banks",
                             description="Build, check and share negation banks. " + PRIVACY_NOTE)
    commands = bank.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print a JSON report on stdout")
        return sub

    build = command("build", "encode images (folders, files) into a bank file")
    build.add_argument("sources", nargs="+", help="image files and/or folders")
    build.add_argument("-o", "--output", required=True, help="bank file to write (.safetensors)")
    build.add_argument("--encoder", required=True,
                       help="'digits' (the efficacy benchmark's model), 'test' (deterministic stand-in, not a VAE), "
                            "or a diffusers-format VAE folder or single file (needs the 'diffusers' package)")
    build.add_argument("-r", "--recursive", action="store_true", help="include sub-folders")
    existing = build.add_mutually_exclusive_group()
    existing.add_argument("--append", action="store_true", help="add to an existing bank, keeping its provenance")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing bank")
    build.add_argument("--title", help="display name (default: file name)")
    build.add_argument("--role", choices=ROLES, default="negation")
    build.add_argument("--category", help="label every new image with this category name")
    build.add_argument("--batch-size", type=int, default=8)
    build.add_argument("--encode-mode", choices=metadata.ENCODE_MODES, default="mean",
                       help="VAE encoders: posterior mean (default, deterministic) or a seeded sample")
    build.add_argument("--seed", type=int, default=0, help="seed of --encode-mode sample")
    build.add_argument("--device", default="cpu", help="VAE encoders: torch device")
    build.add_argument("--resolution", type=int, help="VAE encoders: pixel size (default: the model's native)")
    build.add_argument("--max-pixels", type=int, default=builder.DEFAULT_MAX_PIXELS,
                       help="larger images are rejected as decompression bombs")
    _add_card_options(build)

    inspect = command("inspect", "show a bank's card, latent space and metadata (header only)")
    inspect.add_argument("bank")

    verify = command("verify", "check format, shapes, dtypes and hash (and latent space with --latent-space)")
    verify.add_argument("banks", nargs="+")
    verify.add_argument("--latent-space", choices=sorted(spaces.LATENT_SPACES),
                        help="also require this latent space")

    export = command("export", "write a shareable single-file preset (bank + card + settings, or settings only)")
    export.add_argument("bank")
    export.add_argument("dest")
    export.add_argument("--settings-only", action="store_true",
                        help="write a small .preset.json naming the bank by hash, without latents")
    export.add_argument("--title")
    _add_card_options(export)

    importing = command("import", "verify and copy a bank or preset into a bank folder (shows its card)")
    importing.add_argument("source", help="bank .safetensors, .preset.json, or a legacy torch pickle "
                                          "(.pt, .pth, .ckpt, .bin)")
    importing.add_argument("--into", default=".", help="bank folder (default: current folder)")
    importing.add_argument("--name", help="bank name in the folder (default: the file's name)")
    importing.add_argument("--overwrite", action="store_true")
    importing.add_argument("--allow-pickle", action="store_true",
                           help="allow converting a legacy torch pickle (.pt, .pth, .ckpt, .bin) with torch's "
                                "weights-only reader; only for files you trust")
    importing.add_argument("--latent-space", choices=sorted(spaces.LATENT_SPACES), default="sd1",
                           help="latent space of a legacy .pt (default sd1)")

    merge = command("merge", "concatenate banks of one latent space, dropping duplicate sources")
    merge.add_argument("banks", nargs="+")
    merge.add_argument("-o", "--output", required=True)
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output bank")
    merge.add_argument("--title")
    merge.add_argument("--settings", help="recommended settings as JSON keyed by mode name, or @file.json")
    return parser


def _build(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from lib_safedenoise.bench.digits import encoder as _digits  # noqa: F401  (registers the "digits" encoder)
    from lib_safedenoise.banks.encoders import describe, resolve_encoder

    options = {"device": args.device, "encode_mode": args.encode_mode, "seed": args.seed,
               "resolution": args.resolution}
    encoder = resolve_encoder(args.encoder, **options)
    print(f"encoder: {describe(encoder)}", file=sys.stderr)
    cancel = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    if in_main_thread:  # first Ctrl-C cancels cleanly, a second one interrupts
        signal.signal(signal.SIGINT, lambda *_: (cancel.set(), signal.signal(signal.SIGINT, previous)))
    bar = tqdm(unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = builder.build_bank(args.sources, encoder, args.output, title=args.title, role=args.role,
                                    recursive=args.recursive, append=args.append, overwrite=args.overwrite,
                                    batch_size=args.batch_size,
                                    settings=_settings(args.settings), category=args.category,
                                    progress=progress, cancel=cancel, max_pixels=args.max_pixels, **_card(args))
    finally:
        bar.close()
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    for item in report.files:
        if item.status != "added" or item.detail:
            print(f"{item.status}: {item.source} {item.detail}", file=sys.stderr)
    print(f"wrote {report.path}: {report.bank_count} latents, hash {report.short_hash} "
          f"({report.count('added')} added)", file=sys.stderr)
    return report.as_dict()


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    meta = fileformat.read_metadata(args.bank)
    data = meta.as_dict()
    data["sources_hashed"] = sum(bool(h) for h in data.pop("source_sha256"))
    data["file_bytes"] = Path(args.bank).stat().st_size
    if not args.json:
        print(f"{meta.title}: {meta.count} latents, {meta.describe_space()}, role {meta.role}, "
              f"hash {meta.short_hash}")
        for key, value in data.items():
            if value not in ("", None, (), {}, []):
                print(f"  {key}: {value}")
    return data


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for bank in args.banks:
        result = fileformat.verify_bank(bank, space_id=args.latent_space)
        results[bank] = result.as_dict()
        for line in result.problems + result.warnings:
            print(f"{bank}: {line}", file=sys.stderr)
        if not args.json:
            print(f"{bank}: {'OK' if result.ok else 'FAILED'}")
    failed = [b for b, r in results.items() if not r["ok"]]
    if failed:
        raise _Failed({"banks": results}, f"verification failed for {', '.join(failed)}")
    return {"banks": results}


def _export(args: argparse.Namespace) -> dict[str, Any]:
    dest = presets.export_preset(args.bank, args.dest, settings_only=args.settings_only,
                                 settings=_settings(args.settings), card=_card(args), title=args.title)
    print(f"wrote {dest}", file=sys.stderr)
    if not args.settings_only:
        print(PRIVACY_NOTE, file=sys.stderr)
    return {"path": str(dest), "preset": presets.read_preset(dest).as_dict()}


def _import(args: argparse.Namespace) -> dict[str, Any]:
    store = BankStore(args.into)
    source = Path(args.source)
    if legacy.is_torch_pickle(source):
        name = store.import_file(source, name=args.name, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
                                 space_id=args.latent_space)
        return {"name": name, "path": str(store.path_of(name)), "card": None}
    preset = store.read_preset(source)
    print(presets.card_text(preset), file=sys.stderr)
    name = store.install_preset(source, name=args.name, overwrite=args.overwrite)
    print(f"installed {name} in {store.folder}", file=sys.stderr)
    return {"name": name, "path": str(store.path_of(name)), "card": preset.as_dict()}


def _merge(args: argparse.Namespace) -> dict[str, Any]:
    meta = builder.merge_banks(args.banks, args.output, title=args.title, settings=_settings(args.settings),
                               overwrite=args.overwrite)
    print(f"wrote {args.output}: {meta.count} latents, hash {meta.short_hash}", file=sys.stderr)
    return {"path": args.output, "count": meta.count, "short_hash": meta.short_hash}


def _sentence(error: OSError) -> str:
    """An operating-system error as a sentence naming the file, without errno codes."""
    what = error.strerror or type(error).__name__
    if error.errno == errno.ENAMETOOLONG:
        what = "the file name is too long for the file system (most allow 255 bytes in UTF-8)"
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{what[0].lower()}{what[1:]}"


class _Failed(Exception):
    def __init__(self, report: dict, message: str):
        super().__init__(message)
        self.report = report


COMMANDS = {"build": _build, "inspect": _inspect, "verify": _verify, "export": _export, "import": _import,
            "merge": _merge}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status, report, error = 0, {}, ""
    try:
        report = COMMANDS[args.command](args)
    except _Failed as failure:
        status, report, error = 1, failure.report, str(failure)
    except builder.BuildCancelled as cancelled:
        status, report, error = 130, cancelled.report.as_dict(), str(cancelled)
    except builder.EmptyBuildError as empty:
        status, report, error = 1, empty.report.as_dict(), str(empty)
    except BankError as failure:
        status, error = 1, str(failure)
    except OSError as failure:
        status, error = 1, _sentence(failure)
    except KeyboardInterrupt:
        status, error = 130, "interrupted"
    if error:
        print(f"error: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": status == 0, **({"error": error} if error else {}), **report}, indent=2,
                         default=str))
    return status
