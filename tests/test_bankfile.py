"""The bank file format: round trip, hash, tamper detection, compatibility, caching, legacy pickles."""

import dataclasses
import hashlib
import json
import pickle
import struct
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from lib_safedenoise.banks import fileformat, metadata, spaces
from lib_safedenoise.banks.legacy import convert_legacy_pt
from lib_safedenoise.banks.errors import BankCompatibilityError, BankError, BankFormatError, BankIntegrityError, PickleRefusedError


def make_bank(path, *, space="sd1", count=5, shape=(4, 8, 8), seed=0, **values):
    latents = torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed)).half()
    meta = metadata.new_metadata(title=path.stem, count=count, shape=shape, space=spaces.LATENT_SPACES[space],
                                 **values)
    return fileformat.save_bank(path, meta, latents, weights=torch.linspace(0.5, 1, count),
                              labels=torch.arange(count) % 2), latents


def data_region(path):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw, 8 + length


def test_round_trip_is_a_plain_safetensors_file_with_modelspec_metadata(tmp_path):
    path = tmp_path / "nudity.safetensors"
    settings_ = {"paper": {"strength": 1.0, "bandwidth": 3.15}, "reference": {"scale": 0.4}}
    meta, latents = make_bank(path, settings=settings_, categories={"0": "a", "1": "b"},
                              description="test set", license="CC0", encode_mode="sample", encode_seed=42,
                              source_sha256=tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(5)))
    tensors = load_file(str(path))
    assert torch.equal(tensors["latents"], latents) and tensors["latents"].dtype == torch.float16
    assert tensors["labels"].tolist() == [0, 1, 0, 1, 0]
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata()
    assert stored["modelspec.sai_model_spec"] == "1.0.0"
    assert stored["modelspec.architecture"] == "stable-diffusion-v1/safe-denoiser-bank"
    assert json.loads(stored["sdn_settings"]) == settings_
    assert stored["sdn_encode_seed"] == "42" and stored["sdn_latent_space"] == "sd1"
    raw, start = data_region(path)
    assert stored["modelspec.hash_sha256"] == "0x" + hashlib.sha256(raw[start:]).hexdigest()
    parsed = fileformat.read_metadata(path)
    assert parsed == meta and parsed.settings == settings_ and parsed.encode_seed == 42
    assert parsed.short_hash == stored["modelspec.hash_sha256"][2:2 + metadata.SHORT_HASH_LENGTH]
    bank = fileformat.load_bank(path)
    assert bank.name == "nudity" and bank.latent_space == "sd1" and bank.short_hash == parsed.short_hash
    assert torch.equal(bank.latents, latents) and bank.role == "negation" and not bank.channel_normalized


def test_flipped_data_byte_fails_verification_and_loading(tmp_path):
    path = tmp_path / "b.safetensors"
    make_bank(path)
    assert fileformat.verify_bank(path).ok
    raw, start = data_region(path)
    flipped = bytearray(raw)
    flipped[start + 7] ^= 0x01
    path.write_bytes(bytes(flipped))
    result = fileformat.verify_bank(path)
    assert not result.ok and "does not match its hash" in result.problems[0]
    with pytest.raises(BankIntegrityError, match="altered or damaged"):
        fileformat.load_bank(path)


def test_truncated_and_foreign_files_are_rejected_with_reasons(tmp_path):
    path = tmp_path / "b.safetensors"
    make_bank(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(BankFormatError, match="truncated"):
        fileformat.read_header(path)
    other = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(other), metadata={"ss_network_dim": "4"})
    with pytest.raises(BankFormatError, match="not a Safe Denoiser bank"):
        fileformat.load_bank(other)
    meta, latents = make_bank(tmp_path / "b.safetensors")
    mislabelled = dataclasses.replace(meta, latent_space="sd3")
    with pytest.raises(BankFormatError, match="4-channel latents cannot be SD3 latents"):
        fileformat.save_bank(tmp_path / "c.safetensors", mislabelled, latents)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello there, this is not a tensor file at all")
    with pytest.raises(BankFormatError, match="not a safetensors file"):
        fileformat.verify_file(text)


def test_newer_format_version_is_refused_clearly(tmp_path):
    path = tmp_path / "b.safetensors"
    meta, _ = make_bank(path)
    strings = meta.to_strings() | {"sdn_format_version": str(metadata.FORMAT_VERSION + 1)}
    with pytest.raises(BankFormatError, match="update the extension"):
        metadata.parse_metadata(strings)


def test_metadata_edit_keeps_hash_and_data(tmp_path):
    path = tmp_path / "b.safetensors"
    meta, latents = make_bank(path)
    edited = fileformat.rewrite_metadata(path, description="now with a card", settings={"paper": {"strength": 2}})
    assert edited.hash_sha256 == meta.hash_sha256
    assert fileformat.verify_bank(path).ok
    assert torch.equal(fileformat.load_bank(path).latents, latents)
    assert fileformat.read_metadata(path).description == "now with a card"


def test_compatibility_is_by_latent_space_with_a_clear_message(tmp_path):
    meta, _ = make_bank(tmp_path / "x.safetensors", space="sdxl", shape=(4, 16, 16), vae_name="sdxl_vae")
    with pytest.raises(BankCompatibilityError) as error:
        fileformat.check_compatibility(meta, "sd1", name="x", model_label="SD1")
    assert "bank 'x' was built for SDXL latents (4×16×16 from VAE sdxl_vae); the loaded model is SD1" \
        in str(error.value)
    assert spaces.latent_space_for_family("sd2") is spaces.latent_space_for_family("sd1")
    sd3, _ = make_bank(tmp_path / "sd3.safetensors", space="sd3", shape=(16, 8, 8))
    with pytest.raises(BankCompatibilityError, match="SD3 latents"):
        fileformat.check_compatibility(sd3, spaces.latent_space_for_family("flux").id)
    assert fileformat.check_compatibility(sd3, "sd3") == []
    with pytest.raises(BankCompatibilityError):
        fileformat.load_bank(tmp_path / "sd3.safetensors", space_id="sdxl")


def test_vae_hash_difference_within_a_space_is_a_warning(tmp_path):
    meta, _ = make_bank(tmp_path / "b.safetensors", vae_name="vae-ft-mse", vae_hash="aaaaaaaaaa")
    notes = fileformat.check_compatibility(meta, "sd1", vae_hash="bbbbbbbbbb")
    assert len(notes) == 1 and "still applies" in notes[0]


def test_load_is_cached_and_picks_up_changes_on_disk(tmp_path):
    path = tmp_path / "b.safetensors"
    make_bank(path, seed=1)
    first = fileformat.load_bank(path)
    assert fileformat.load_bank(path) is first
    _, replacement = make_bank(path, seed=2, count=3)
    reloaded = fileformat.load_bank(path)
    assert reloaded is not first and torch.equal(reloaded.latents, replacement)


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "b.safetensors"
    meta, _ = make_bank(path)
    before = path.read_bytes()

    def failing_chunks():
        yield b"\x00" * 64
        raise OSError("disk full")

    broken = fileformat.TensorData("latents", "F16", (1, 4, 4, 2), failing_chunks)
    with pytest.raises(OSError, match="disk full"):
        fileformat.write_bank(path, meta, [broken])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]


def test_legacy_pickle_refused_by_default_and_marked_channel_normalised(tmp_path):
    latents = torch.nn.functional.normalize(torch.randn(3, 4, 8, 8), dim=1)
    legacy = tmp_path / "repellency_proj_ref.pt"
    torch.save(latents.flatten(1), legacy)
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        convert_legacy_pt(legacy, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.warns(UserWarning, match="unpickling"):
        meta = convert_legacy_pt(legacy, tmp_path / "out.safetensors", allow_pickle=True)
    bank = fileformat.load_bank(tmp_path / "out.safetensors")
    assert meta.channel_normalized and bank.channel_normalized and bank.latent_space == "sd1"
    assert torch.equal(bank.latents, latents)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['SDN_PWNED']).touch()",))


def test_legacy_pickle_with_code_is_not_executed_even_when_allowed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SDN_PWNED", str(marker))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Exploit()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BankFormatError, match="weights-only"):
            convert_legacy_pt(evil, tmp_path / "out.safetensors", allow_pickle=True)
    assert not marker.exists()


VALID = None


def valid_strings():
    global VALID
    if VALID is None:
        meta = metadata.new_metadata(title="t", count=2, shape=(4, 8, 8), space=spaces.LATENT_SPACES["sd1"])
        VALID = meta.to_strings()
    return VALID


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=8), json_values))
def test_parser_never_crashes_on_arbitrary_input(raw):
    try:
        metadata.parse_metadata(raw)
    except BankFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([k.key for k in metadata.SCHEMA]),
       st.one_of(st.text(max_size=40), json_values.map(json.dumps)))
def test_any_single_key_replaced_parses_or_fails_clearly(key, value):
    raw = dict(valid_strings()) | {key: value}
    try:
        meta = metadata.parse_metadata(raw)
    except BankFormatError as error:
        assert key in str(error) or "version" in str(error) or "shape" in str(error) or "sources" in str(error)
    else:
        assert meta.to_strings().keys() <= raw.keys() | {"modelspec.hash_sha256"}


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_header_reader_never_crashes_on_arbitrary_bytes(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("h") / "x.safetensors"
    path.write_bytes(payload)
    try:
        fileformat.read_header(path)
    except BankError:
        pass


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "out" / "result.json"
    fileformat.write_atomically(dest, b"first")
    assert dest.read_bytes() == b"first" and dest.stat().st_mode & 0o777 == 0o644
    fileformat.write_atomically(dest, lambda f: (f.write(b"sec"), f.write(b"ond")))
    assert dest.read_bytes() == b"second"

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        fileformat.write_atomically(dest, half_then_fail)

    def refuse(tmp):
        assert tmp.read_bytes() == b"checked" and tmp.parent == dest.parent
        raise BankFormatError("check failed")

    with pytest.raises(BankFormatError, match="check failed"):
        fileformat.write_atomically(dest, b"checked", check=refuse)
    assert dest.read_bytes() == b"second" and [p.name for p in dest.parent.iterdir()] == ["result.json"]
