"""The bank folder the WebUI uses: listing, caching, renames, imports, presets and concurrency."""

import threading

import pytest
import torch

from lib_safedenoise.banks import errors, fileformat, presets
from lib_safedenoise.banks.store import BankStore
from lib_safedenoise.banks.errors import BankError, PickleRefusedError
from lib_safedenoise.banks.encoders import TestEncoder
from tests.images import write_digits, write_photos


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return write_photos(folder / "photos"), write_digits(folder / "digits", count=5)


@pytest.fixture()
def store(tmp_path, images):
    photos, digits = images
    store = BankStore(tmp_path / "SafeDenoiser")
    store.build(list(photos.values())[:3], TestEncoder(32), "photos", description="three photos", license="CC0")
    store.build(list(digits.values()), TestEncoder(32, latent_space="sd1"), "digits")
    return store


def test_list_shows_card_size_space_and_compatibility(store):
    (store.folder / "broken.safetensors").write_bytes(b"\x00" * 20)
    (store.folder / ".partial.safetensors").write_bytes(b"")
    entries = {e.name: e for e in store.list(space_id="sd1")}
    assert sorted(entries) == ["broken", "digits", "photos"]
    assert entries["digits"].compatible is True and entries["digits"].meta.count == 5
    assert entries["photos"].compatible is False and "the loaded model is SD1/SD2" in entries["photos"].compatibility
    assert entries["photos"].as_dict()["card"]["license"] == "CC0"
    assert entries["photos"].size_bytes == (store.folder / "photos.safetensors").stat().st_size
    assert entries["broken"].meta is None and "not a safetensors file" in entries["broken"].problem


def test_load_is_cached_and_reloaded_when_the_file_changes(store, images):
    photos, _ = images
    first = store.load("photos")
    assert store.load("photos") is first and first.count == 3
    store.build(list(photos.values())[3:5], TestEncoder(32), "photos", append=True)
    second = store.load("photos")
    assert second is not first and second.count == 5 and torch.equal(second.latents[:3], first.latents)
    with pytest.raises(errors.BankCompatibilityError, match="bank 'photos' was built for test encoder"):
        store.load("photos", space_id="sdxl")


def test_rename_delete_and_name_safety(store):
    assert store.rename("photos", "my photos") == "my photos"
    assert "my photos" in store.names() and "photos" not in store.names()
    with pytest.raises(BankError, match="already exists"):
        store.rename("digits", "my photos")
    with pytest.raises(BankError, match="no bank named"):
        store.load("photos")
    assert store.path_of("../../outside").parent == store.folder
    with pytest.raises(BankError, match="reserved"):
        store.rename("digits", "CON")
    store.delete("digits")
    assert store.names() == ["my photos"]
    with pytest.raises(BankError, match="already exists"):
        store.build([], TestEncoder(32), "my photos")


def test_import_verifies_before_copying(store, tmp_path):
    outside = tmp_path / "download.safetensors"
    outside.write_bytes(store.path_of("digits").read_bytes())
    assert store.import_file(outside, name="shared") == "shared"
    assert torch.equal(store.load("shared").latents, store.load("digits").latents)
    raw = bytearray(outside.read_bytes())
    raw[-1] ^= 0xFF
    outside.write_bytes(bytes(raw))
    with pytest.raises(errors.BankIntegrityError):
        store.import_file(outside, name="tampered")
    assert "tampered" not in store.names()
    legacy = tmp_path / "repellency_proj_ref.pt"
    torch.save(torch.randn(2, 4 * 8 * 8), legacy)
    with pytest.raises(PickleRefusedError):
        store.import_file(legacy)
    with pytest.warns(UserWarning):
        name = store.import_file(legacy, allow_pickle=True)
    assert store.load(name).channel_normalized
    assert not [p for p in store.folder.iterdir() if p.name.startswith(".")]


def test_settings_only_preset_shows_card_then_installs_into_its_bank(store, tmp_path):
    preset_file = presets.export_preset(store.path_of("digits"), tmp_path / "zeros", settings_only=True,
                                        settings={"paper": {"strength": 2.0}}, card={"usage_hint": "no zeros"})
    shown = store.read_preset(preset_file)
    assert shown.card["usage_hint"] == "no zeros" and not shown.problems
    assert fileformat.read_metadata(store.path_of("digits")).settings == {}  # reading changed nothing
    assert store.install_preset(preset_file) == "digits"
    meta = fileformat.read_metadata(store.path_of("digits"))
    assert meta.settings == {"paper": {"strength": 2.0}} and meta.usage_hint == "no zeros"
    store.delete("digits")
    assert "not in this bank folder" in store.read_preset(preset_file).problems[0]
    with pytest.raises(BankError, match="not in"):
        store.install_preset(preset_file)


def test_concurrent_loads_during_metadata_rewrites_never_see_partial_files(store):
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert store.load("digits").count == 5
                store.list()
            except Exception as error:  # the assertion is that nothing at all goes wrong
                errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(15):
        store.save_settings("digits", {"paper": {"strength": float(i)}})
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.load("digits").metadata["settings"] == {"paper": {"strength": 14.0}}


def test_a_bank_cannot_be_built_twice_at_once(store, images):
    photos, _ = images
    entered, release = threading.Event(), threading.Event()

    class Slow(TestEncoder):
        def __call__(self, pixels):
            entered.set()
            release.wait(10)
            return super().__call__(pixels)

    worker = threading.Thread(target=store.build, args=(list(photos.values())[:2], Slow(32), "new"))
    worker.start()
    entered.wait(10)
    try:
        with pytest.raises(BankError, match="already being built"):
            store.build(list(photos.values())[:2], TestEncoder(32), "new")
    finally:
        release.set()
        worker.join()
    assert store.load("new").count == 2
