"""Hostile and careless inputs to bank files, folders and the CLI (issue 10, "Data and files").

Each test is named after the issue's item number; every one asserts the clear error and that nothing
existing was lost.
"""

import hashlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from lib_safedenoise import cli
from lib_safedenoise.banks import builder, fileformat, legacy, metadata, presets, spaces
from lib_safedenoise.banks.encoders import TestEncoder
from lib_safedenoise.banks.errors import (BankExistsError, BankFormatError, BankNameError, BankValuesError,
                                          PickleRefusedError)
from lib_safedenoise.banks.store import BankStore, upload_file_name
from tests.images import write_photos

ROOT = Path(__file__).resolve().parents[1]
CJK_95 = "安全" * 47 + "安"  # 95 characters, 285 bytes in UTF-8


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    return status, json.loads(out), err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("hostile-photos"))


def raw_bank(path: Path, latents: torch.Tensor, **meta_values) -> Path:
    """A bank written the way an outside tool would: plain safetensors, any values, a correct hash."""
    meta = metadata.new_metadata(title=path.stem, count=latents.shape[0], shape=tuple(latents.shape[1:]),
                                 space=spaces.LATENT_SPACES["sd1"], **meta_values)
    raw = safetensors_bytes({"latents": latents}, metadata=meta.to_strings())
    (length,) = struct.unpack("<Q", raw[:8])
    digest = "0x" + hashlib.sha256(raw[8 + length:]).hexdigest()
    path.write_bytes(raw.replace(meta.hash_sha256.encode(), digest.encode()))
    return path


def poisoned_latents(value=float("nan")):
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1)).half()
    latents[2, 1, 3, 3] = value
    return latents


# --------------------------------------------------------------------------- 6

def test_item6_build_and_merge_never_replace_an_existing_bank_unasked(photos, tmp_path, capsys):
    bank, other = tmp_path / "mine.safetensors", tmp_path / "other.safetensors"
    files = list(photos.values())
    builder.build_bank(files[:4], TestEncoder(), bank)  # what --encoder test makes
    builder.build_bank(files[4:5], TestEncoder(), other)
    before = bank.read_bytes()

    status, report, err = run(capsys, "bank", "build", files[5], "-o", bank, "--encoder", "test")
    assert status == 1 and "already exists" in report["error"] and "--overwrite" in report["error"]
    assert "--append" in report["error"] and bank.read_bytes() == before
    status, report, _ = run(capsys, "bank", "merge", other, "-o", bank)
    assert status == 1 and "already exists" in report["error"] and "--overwrite" in report["error"]
    assert bank.read_bytes() == before
    with pytest.raises(SystemExit):  # argparse: the two are mutually exclusive
        cli.main(["bank", "build", str(files[5]), "-o", str(bank), "--encoder", "test", "--append", "--overwrite"])
    capsys.readouterr()

    status, report, _ = run(capsys, "bank", "build", files[5], "-o", bank, "--encoder", "test", "--append")
    assert status == 0 and report["bank_count"] == 5
    status, report, _ = run(capsys, "bank", "merge", other, "-o", bank, "--overwrite")
    assert status == 0 and fileformat.read_metadata(bank).count == 1
    status, report, _ = run(capsys, "bank", "build", *files[:2], "-o", bank, "--encoder", "test", "--overwrite")
    assert status == 0 and fileformat.read_metadata(bank).count == 2


# --------------------------------------------------------------------------- 7

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_item7_nan_or_inf_latents_never_enter_a_folder_or_a_generation(photos, tmp_path, capsys, value):
    poisoned = raw_bank(tmp_path / "poisoned.safetensors", poisoned_latents(value))
    store_folder = tmp_path / "store"
    store = BankStore(store_folder)
    message = r"bank poisoned\.safetensors: 1 of its 4 latents rows hold NaN or infinite values \(rows 2\)"

    with pytest.raises(BankValuesError, match=message):  # generation
        fileformat.load_bank(poisoned)
    assert not fileformat.verify_bank(poisoned).ok
    with pytest.raises(BankValuesError, match=message):  # API import goes through the store
        store.import_file(poisoned)
    status, report, _ = run(capsys, "bank", "import", poisoned, "--into", store_folder)  # CLI import
    assert status == 1 and "NaN or infinite" in report["error"] and "poisoned" in report["error"]
    assert not store_folder.exists() or not list(store_folder.iterdir())

    good = tmp_path / "good.safetensors"
    builder.build_bank(list(photos.values())[:2], TestEncoder(64, latent_space="sd1"), good)
    status, report, _ = run(capsys, "bank", "merge", good, poisoned, "-o", tmp_path / "merged.safetensors")
    assert status == 1 and "NaN or infinite" in report["error"]
    assert not (tmp_path / "merged.safetensors").exists()  # no fresh, valid hash for poisoned rows

    before = poisoned.read_bytes()
    with pytest.raises(BankValuesError):  # build --append onto a poisoned bank
        builder.build_bank(list(photos.values())[3:4], TestEncoder(64, latent_space="sd1"), poisoned, append=True)
    assert poisoned.read_bytes() == before

    pickled = tmp_path / "repellency_proj_ref.pt"  # --allow-pickle legacy conversion
    torch.save(poisoned_latents(value).float().flatten(1), pickled)
    with pytest.warns(UserWarning, match="unpickling"):
        status, report, _ = run(capsys, "bank", "import", pickled, "--into", store_folder, "--allow-pickle")
    assert status == 1 and "repellency_proj_ref.pt: 1 of its 4 latents rows hold NaN" in report["error"]
    assert not store_folder.exists() or not list(store_folder.iterdir())

    meta = metadata.new_metadata(title="x", count=4, shape=(4, 8, 8), space=spaces.LATENT_SPACES["sd1"])
    with pytest.raises(BankValuesError):  # and the writer itself refuses
        fileformat.save_bank(tmp_path / "direct.safetensors", meta, poisoned_latents(value))
    assert not (tmp_path / "direct.safetensors").exists()


# --------------------------------------------------------------------------- 9

KILLABLE_BUILD = """
import sys, time
from pathlib import Path
from lib_safedenoise.banks import builder
from lib_safedenoise.banks.encoders import TestEncoder

def progress(done, total, label):
    if done == 2:  # one batch is already in the spill file
        Path(sys.argv[3]).touch()
        time.sleep(600)

builder.build_bank(sys.argv[1], TestEncoder(16), sys.argv[2], batch_size=1, progress=progress)
"""


def start_build(photo_folder: Path, dest: Path, marker: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILLABLE_BUILD, str(photo_folder), str(dest), str(marker)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(marker: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)


def spills(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.safetensors.*.latents.tmp"))


@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGKILL", "SIGTERM"])
def test_item9_spill_files_of_killed_builds_are_removed_never_a_live_one_or_a_bank(photos, tmp_path, how):
    folder = tmp_path / "banks"
    photo_folder = next(iter(photos.values())).parent
    killed = start_build(photo_folder, folder / "killed.safetensors", tmp_path / "killed.started")
    running = start_build(photo_folder, folder / "running.safetensors", tmp_path / "running.started")
    try:
        wait_for(tmp_path / "killed.started", killed)
        wait_for(tmp_path / "running.started", running)
        killed.send_signal(how)
        killed.wait(30)
        killed_spills, running_spills = spills(folder, "killed"), spills(folder, "running")
        assert len(killed_spills) == 1 and len(running_spills) == 1
        finished = folder / "finished.safetensors"
        builder.build_bank(list(photos.values())[:1], TestEncoder(16), finished)
        finished_bytes = finished.read_bytes()
        old = folder / ".lost.safetensors.abcd1234.write.tmp"  # an older version's name, writer unknown
        fresh = folder / ".recent.safetensors.abcd1234.write.tmp"
        old.write_bytes(b"x")
        fresh.write_bytes(b"x")
        stale = time.time() - fileformat.STALE_TEMPORARY_SECONDS - 60
        os.utime(old, (stale, stale))

        builder.build_bank(list(photos.values())[1:2], TestEncoder(16), folder / "next.safetensors")
        assert not spills(folder, "killed") and spills(folder, "running") == running_spills
        assert not old.exists() and fresh.exists() and finished.read_bytes() == finished_bytes
    finally:
        running.kill()
        running.wait(30)
    BankStore(folder)  # opening the folder cleans up too
    assert not spills(folder, "running") and fresh.exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        ["finished.safetensors", "next.safetensors"]


# --------------------------------------------------------------------------- 10

def test_item10_names_over_the_byte_limit_and_empty_file_names_are_clear_errors(photos, tmp_path, capsys):
    with pytest.raises(BankNameError, match=r"too long: 285 bytes in UTF-8 \(95 characters\), the limit is 150"):
        builder.sanitize_name(CJK_95)
    store = BankStore(tmp_path / "store")
    with pytest.raises(BankNameError, match="too long"):
        store.build(list(photos.values())[:1], TestEncoder(16), CJK_95)
    longest = "安全" * 25  # 150 bytes: the limit, with every temporary file beside it still a valid name
    assert store.build(list(photos.values())[:1], TestEncoder(16), longest).bank_count == 1
    assert store.names() == [longest] and store.load(longest).latents.shape[0] == 1

    status, report, err = run(capsys, "bank", "build", list(photos.values())[0], "-o",
                              tmp_path / f"{CJK_95}.safetensors", "--encoder", "test")
    assert status == 1 and "too long" in report["error"] and "Errno" not in err
    status, report, err = run(capsys, "bank", "build", list(photos.values())[0], "-o",
                              tmp_path / ("d" * 300) / "x.safetensors", "--encoder", "test")
    assert status == 1 and "file name is too long" in report["error"] and "Errno" not in err + report["error"]

    bank = store.path_of(longest)
    for bad in ("", ".", "..", "a/..", "folder/", "nul\0.safetensors", "x" * 256 + ".safetensors"):
        with pytest.raises(BankNameError):
            upload_file_name(bad)
    assert upload_file_name("../../etc/mine.safetensors") == "mine.safetensors"
    for bad in (Path(""), Path(".."), tmp_path / "store" / ".."):  # file names that name no file
        with pytest.raises(BankNameError, match="no usable characters"):
            store.import_file(bad)
    assert store.names() == [longest]


# --------------------------------------------------------------------------- 11

def test_item11_links_and_special_files_are_reported_and_never_opened(photos, tmp_path, capsys):
    folder, outside = tmp_path / "chosen", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    first, second = list(photos.values())[:2]
    (folder / "real.png").write_bytes(first.read_bytes())
    (outside / "secret.png").write_bytes(second.read_bytes())
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "null.png").symlink_to(os.devnull)
    os.mkfifo(tmp_path / "pipe")
    (folder / "pipe.png").symlink_to(tmp_path / "pipe")  # opening it would block the build forever
    (folder / "loop").symlink_to(folder)
    (folder / "outside.png").symlink_to(outside / "secret.png")
    (folder / "inside.png").symlink_to(folder / "real.png")

    report = builder.build_bank(folder, TestEncoder(16), tmp_path / "bank.safetensors", recursive=True)
    lines = {Path(f.source).name: (f.status, f.detail) for f in report.files}
    assert set(lines) == {"real.png", "gone.png", "null.png", "pipe.png", "loop", "outside.png", "inside.png"}
    assert lines["gone.png"] == ("unreadable", f"broken symbolic link: its target {tmp_path / 'missing.png'} "
                                               "does not exist")
    assert lines["null.png"] == ("unreadable", "not a regular file: a character device (through a symbolic "
                                               "link); not read")
    assert lines["pipe.png"][0] == "unreadable" and "a named pipe" in lines["pipe.png"][1]
    assert lines["loop"] == ("ignored", "symbolic link to a folder; not followed")
    assert lines["outside.png"] == ("added", f"symbolic link to {outside / 'secret.png'}, outside the chosen "
                                             "folder; followed")
    assert lines["inside.png"] == ("added", "") and lines["real.png"][0] == "duplicate"  # a link kept inside
    assert report.bank_count == 2

    status, _, err = run(capsys, "bank", "build", folder, "-o", tmp_path / "cli.safetensors", "--encoder", "test")
    assert status == 0 and "outside the chosen folder" in err and "broken symbolic link" in err


# --------------------------------------------------------------------------- 12

@pytest.mark.parametrize("name", ["COM¹", "lpt³", "Com².txt", "LPT¹.safetensors", "com0", "Lpt9", "AUX.png",
                                  "nul", " CON .bank"])
def test_item12_windows_device_names_are_refused(name, photos, tmp_path):
    with pytest.raises(BankNameError, match="reserved on Windows"):
        builder.sanitize_name(name)
    with pytest.raises(BankNameError, match="reserved on Windows"):
        BankStore(tmp_path).build(list(photos.values())[:1], TestEncoder(16), name)
    assert not list(tmp_path.iterdir())


def test_item12_names_that_only_look_like_devices_are_kept():
    assert [builder.sanitize_name(n) for n in ("COM10", "COM¹²", "console", "lpt1x", "my con")] == \
        ["COM10", "COM¹²", "console", "lpt1x", "my con"]


# --------------------------------------------------------------------------- 13

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_item13_refused_pickles_say_why_in_our_words(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"latents": torch.zeros(1), "payload": _RunsCode()}))
    with pytest.warns(UserWarning), pytest.raises(BankFormatError) as error:
        legacy.convert_legacy_pt(evil, tmp_path / "out.safetensors", allow_pickle=True)
    message = str(error.value)
    assert "weights_only" not in message and "likely succeed" not in message
    assert "run code chosen by whoever made the file" in message and ".safetensors bank" in message
    with pytest.raises(PickleRefusedError, match="can run arbitrary code"):
        legacy.convert_legacy_pt(evil, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_item13_ckpt_and_bin_pickles_are_converted_or_explained(suffix, tmp_path, capsys):
    store = tmp_path / "store"
    cache = tmp_path / f"cache{suffix}"
    torch.save(torch.randn(3, 4 * 8 * 8), cache)
    status, report, _ = run(capsys, "bank", "import", cache, "--into", store)
    assert status == 1 and "--allow-pickle" in report["error"]
    with pytest.warns(UserWarning, match="unpickling"):
        status, report, _ = run(capsys, "bank", "import", cache, "--into", store, "--allow-pickle")
    assert status == 0 and report["name"] == "cache"
    assert fileformat.load_bank(report["path"]).latents.shape == (3, 4, 8, 8)

    checkpoint = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, checkpoint)
    with pytest.warns(UserWarning):
        status, report, _ = run(capsys, "bank", "import", checkpoint, "--into", store, "--allow-pickle")
    assert status == 1 and "model checkpoints (.ckpt, .bin) and state dicts are not banks" in report["error"]
    assert "not a safetensors file" not in report["error"]

    renamed = tmp_path / f"shared{suffix}"  # a real bank under a torch suffix is imported as the bank it is
    renamed.write_bytes(Path(BankStore(store).path_of("cache")).read_bytes())
    status, report, _ = run(capsys, "bank", "import", renamed, "--into", store)
    assert status == 0 and report["name"] == "shared"


# --------------------------------------------------------------------------- 16

def test_item16_metadata_fields_have_limits_on_write(photos, tmp_path, capsys):
    image = list(photos.values())[0]
    for field, limit in metadata.TEXT_LIMITS.items():
        option = "--" + field.replace("_", "-")
        status, report, _ = run(capsys, "bank", "build", image, "-o", tmp_path / f"{field}.safetensors",
                                "--encoder", "test", option, "x" * (limit + 1))
        assert status == 1 and report["error"] == (f"card {field} is {limit + 1} characters long; the limit is "
                                                   f"{limit} characters")
        assert not (tmp_path / f"{field}.safetensors").exists()
        builder.build_bank(image, TestEncoder(8), tmp_path / f"{field}.safetensors", **{field: "x" * limit})
        assert getattr(fileformat.read_metadata(tmp_path / f"{field}.safetensors"), field) == "x" * limit
    many_modes = {f"mode{i}": {"strength": 1.0} for i in range(metadata.MAX_SETTINGS_MODES + 1)}
    with pytest.raises(BankFormatError, match="settings is 33 modes long; the limit is 32 modes"):
        builder.build_bank(image, TestEncoder(8), tmp_path / "s.safetensors", settings=many_modes)
    with pytest.raises(BankFormatError, match="parameters"):
        metadata.validate_settings({"paper": {f"p{i}": 1 for i in range(metadata.MAX_SETTINGS_PARAMETERS + 1)}})
    with pytest.raises(BankFormatError, match="as JSON"):
        metadata.validate_settings({"paper": {"note": "x" * metadata.MAX_SETTINGS_CHARS}})
    with pytest.raises(BankFormatError, match="category name"):
        builder.build_bank(image, TestEncoder(8), tmp_path / "c.safetensors", category="c" * 201)
    with pytest.raises(presets.PresetError, match="card description is 10001 characters long"):
        presets.parse_settings_preset(json.dumps({"safe_denoiser_preset": 1, "bank": {"hash_sha256": "0x" + "0" * 64},
                                                  "card": {"description": "x" * 10_001}}))


def test_item16_oversized_metadata_is_refused_on_read(tmp_path):
    latents = torch.randn(2, 4, 8, 8).half()
    huge = raw_bank(tmp_path / "huge.safetensors", latents, description="x" * 20_000_000)
    with pytest.raises(BankFormatError, match="modelspec.description is 20000000 characters long; the limit is "
                                              "10000"):
        fileformat.read_metadata(huge)
    keys = raw_bank(tmp_path / "keys.safetensors", latents)
    header, offset, _ = fileformat.read_raw_header(keys)
    header["__metadata__"].update({f"k{i}": "v" for i in range(200_000)})
    text = json.dumps(header).encode()
    keys.write_bytes(struct.pack("<Q", len(text)) + text + keys.read_bytes()[offset:])
    with pytest.raises(BankFormatError, match=r"bank metadata is 2000\d\d keys long; the limit is 128 keys"):
        fileformat.read_metadata(keys)
    categories = raw_bank(tmp_path / "cats.safetensors", latents,
                          categories={str(i): "c" for i in range(metadata.MAX_CATEGORIES + 1)})
    with pytest.raises(BankFormatError, match="sdn_categories is 1001 entries long"):
        fileformat.read_metadata(categories)
    store = BankStore(tmp_path)
    entry = {e.name: e for e in store.list()}["huge"]  # the folder lists it as broken, with the reason
    assert entry.meta is None and "limit is 10000" in entry.problem
