"""``python -m lib_safedenoise bank ...``: exit codes, JSON reports, readable errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_safedenoise.banks import fileformat
from lib_safedenoise import cli
from tests.images import write_broken, write_digits, write_photos

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys, *argv):
    status, out, err = run(capsys, *argv, "--json")
    return status, json.loads(out), err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_photos(root / "photos")
    write_broken(root / "photos")
    return root


def test_build_json_report_and_bank(folder, tmp_path, capsys):
    status, report, err = run_json(capsys, "bank", "build", folder / "photos", "-o", tmp_path / "p.safetensors",
                                   "--encoder", "test", "--settings", '{"paper": {"strength": 1.5}}',
                                   "--license", "CC0")
    assert status == 0 and report["ok"] and report["bank_count"] == 9
    assert report["counts"] == {"added": 9, "decompression-bomb": 1, "not-an-image": 1, "truncated": 1,
                                "zero-byte": 1}
    assert "truncated: " in err and "wrote " in err
    meta = fileformat.read_metadata(tmp_path / "p.safetensors")
    assert meta.license == "CC0" and meta.settings == {"paper": {"strength": 1.5}}
    assert report["short_hash"] == meta.short_hash


def test_build_with_nothing_usable_fails_with_the_report(folder, tmp_path, capsys):
    write_broken(tmp_path / "bad")
    status, report, err = run_json(capsys, "bank", "build", tmp_path / "bad", "-o", tmp_path / "x.safetensors",
                                   "--encoder", "test")
    assert status == 1 and not report["ok"] and "no usable images" in report["error"]
    assert {f["status"] for f in report["files"]} == {"truncated", "zero-byte", "not-an-image", "decompression-bomb"}
    assert not (tmp_path / "x.safetensors").exists()


def test_verify_inspect_and_tamper(folder, tmp_path, capsys):
    bank = tmp_path / "b.safetensors"
    assert run(capsys, "bank", "build", folder / "photos" / "coffee.jpg", "-o", bank, "--encoder", "test")[0] == 0
    status, report, _ = run_json(capsys, "bank", "verify", bank)
    assert status == 0 and report["banks"][str(bank)]["ok"]
    status, report, _ = run_json(capsys, "bank", "inspect", bank)
    assert status == 0 and report["count"] == 1 and report["latent_space"] == "test"
    status, report, err = run_json(capsys, "bank", "verify", bank, "--latent-space", "sdxl")
    assert status == 1 and "the loaded model is SDXL" in err
    raw = bytearray(bank.read_bytes())
    raw[-5] ^= 0x10
    bank.write_bytes(bytes(raw))
    status, out, err = run(capsys, "bank", "verify", bank)
    assert status == 1 and "FAILED" in out and "does not match its hash" in err


def test_export_import_merge(folder, tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run(capsys, "bank", "build", folder / "photos" / "coffee.jpg", "-o", a, "--encoder", "test")
    run(capsys, "bank", "build", folder / "photos" / "chelsea.webp", "-o", b, "--encoder", "test")
    status, report, err = run_json(capsys, "bank", "export", a, tmp_path / "share" / "a-preset.safetensors",
                                   "--settings", '{"paper": {"strength": 2}}', "--usage-hint", "no coffee")
    assert status == 0 and report["preset"]["settings"] == {"paper": {"strength": 2}}
    assert "close to sharing the images" in err
    status, report, err = run_json(capsys, "bank", "import", tmp_path / "share" / "a-preset.safetensors",
                                   "--into", tmp_path / "store")
    assert status == 0 and report["name"] == "a-preset" and "usage hint: no coffee" in err
    status, report, _ = run_json(capsys, "bank", "merge", a, b, a, "-o", tmp_path / "m.safetensors")
    assert status == 0 and report["count"] == 2


def test_legacy_pickle_needs_allow_pickle(tmp_path, capsys):
    legacy = tmp_path / "repellency_proj_ref.pt"
    torch.save(torch.randn(3, 4 * 8 * 8), legacy)
    status, report, err = run_json(capsys, "bank", "import", legacy, "--into", tmp_path / "store")
    assert status == 1 and "--allow-pickle" in report["error"]
    with pytest.warns(UserWarning, match="unpickling"):
        status, report, _ = run_json(capsys, "bank", "import", legacy, "--into", tmp_path / "store",
                                     "--allow-pickle")
    assert status == 0 and fileformat.read_metadata(report["path"]).channel_normalized


def test_readable_errors(tmp_path, capsys):
    status, out, err = run(capsys, "bank", "inspect", tmp_path / "missing.safetensors")
    assert status == 1 and err.startswith("error: cannot read") and "Traceback" not in err
    status, out, err = run(capsys, "bank", "build", tmp_path, "-o", tmp_path / "x", "--encoder", "nonsense")
    assert status == 1 and "neither one of digits, test nor an existing VAE" in err
    status, out, err = run(capsys, "bank", "build", tmp_path, "-o", tmp_path / "x", "--encoder", "test",
                           "--settings", "[1, 2]")
    assert status == 1 and "mode names to objects" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["bank", "build"])
    assert usage.value.code == 2


def test_vae_encoder_without_diffusers_says_what_to_install(tmp_path, capsys):
    try:
        import diffusers  # noqa: F401
        pytest.skip("diffusers is installed here")
    except ImportError:
        pass
    (tmp_path / "vae").mkdir()
    status, out, err = run(capsys, "bank", "build", tmp_path, "-o", tmp_path / "x", "--encoder", tmp_path / "vae")
    assert status == 1 and "pip install diffusers" in err


def test_digits_encoder_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("lib_safedenoise.bench.digits.latents", reason="the digits model is written by another helper")
    write_digits(tmp_path / "digits", count=10)
    status, report, _ = run_json(capsys, "bank", "build", tmp_path / "digits", "-o", tmp_path / "d.safetensors",
                                 "--encoder", "digits")
    assert status == 0 and report["bank_count"] == 10
    assert fileformat.read_metadata(tmp_path / "d.safetensors").latent_space == "digits"


def test_module_entry_point_help_and_exit_status(folder, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shown = subprocess.run([sys.executable, "-m", "lib_safedenoise", "bank", "import", "--help"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--allow-pickle" in shown.stdout and "--latent-space" in shown.stdout
    failed = subprocess.run([sys.executable, "-m", "lib_safedenoise", "bank", "verify",
                             str(folder / "photos" / "notes.png")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 1 and "not a safetensors file" in failed.stderr
