"""Presets: bank presets and settings-only presets, their cards, and their parser."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_safedenoise.banks import errors, fileformat, presets
from lib_safedenoise.banks.builder import build_bank
from lib_safedenoise.banks.encoders import TestEncoder
from lib_safedenoise.banks.presets import PresetError
from tests.images import write_digits

SETTINGS = {"paper": {"strength": 1.0, "bandwidth": 3.15, "window_end": 0.25},
            "reference": {"scale": 0.4, "margin": 1.6}}
CARD = {"description": "hand-written zeros", "license": "CC-BY-4.0", "usage_hint": "keep zeros out"}


@pytest.fixture()
def bank(tmp_path):
    write_digits(tmp_path / "digits", count=6)
    build_bank(tmp_path / "digits", TestEncoder(16), tmp_path / "zeros.safetensors", author="tests")
    return tmp_path / "zeros.safetensors"


def test_bank_preset_is_one_file_carrying_card_and_settings(bank, tmp_path):
    original = fileformat.read_metadata(bank)
    dest = presets.export_preset(bank, tmp_path / "share" / "zeros-preset.safetensors", settings=SETTINGS,
                                 card=CARD)
    preset = presets.read_preset(dest)
    assert preset.kind == "bank" and preset.settings == SETTINGS
    assert preset.card == {**CARD, "author": "tests"}
    assert preset.bank_hash == original.hash_sha256 and preset.settings_for("paper")["bandwidth"] == 3.15
    assert torch.equal(fileformat.load_bank(dest).latents, fileformat.load_bank(bank).latents)
    assert "CC-BY-4.0" in presets.card_text(preset) and "keep zeros out" in presets.card_text(preset)
    assert fileformat.read_metadata(bank).settings == {}  # exporting never edits the source


def test_settings_only_preset_names_the_bank_by_hash(bank, tmp_path):
    dest = presets.export_preset(bank, tmp_path / "zeros", settings_only=True, settings=SETTINGS, card=CARD)
    assert dest.name == "zeros" + presets.PRESET_SUFFIX and dest.stat().st_size < 2000
    document = json.loads(dest.read_text())
    assert document["bank"]["hash_sha256"] == fileformat.read_metadata(bank).hash_sha256
    assert "latents" not in dest.read_text()
    preset = presets.read_preset(dest)
    assert preset.kind == "settings" and preset.settings == SETTINGS and preset.card["license"] == "CC-BY-4.0"
    assert preset.bank_count == 6 and preset.latent_space == "test"


def test_tampered_bank_preset_is_refused(bank, tmp_path):
    dest = presets.export_preset(bank, tmp_path / "p.safetensors", settings=SETTINGS)
    raw = bytearray(dest.read_bytes())
    raw[-3] ^= 0x40
    dest.write_bytes(bytes(raw))
    with pytest.raises(errors.BankIntegrityError):
        presets.read_preset(dest)


@pytest.mark.parametrize("bad, reason", [
    ("not json", "not valid JSON"),
    ('{"title": "x"}', "not a Safe Denoiser preset"),
    ('{"safe_denoiser_preset": 1, "bank": {"hash_sha256": "abc"}}', "hash_sha256"),
    ('{"safe_denoiser_preset": 1, "bank": {"hash_sha256": "0x' + "a" * 64 + '"}, "settings": {"paper": 3}}',
     "mode names to objects"),
    ('{"safe_denoiser_preset": 1, "bank": {"hash_sha256": "0x' + "a" * 64 + '"}, "card": {"evil": "x"}}',
     "card"),
])
def test_malformed_settings_presets_fail_with_reasons(bad, reason):
    with pytest.raises(PresetError, match=reason):
        presets.parse_settings_preset(bad)


def test_invalid_settings_are_refused_on_export(bank, tmp_path):
    with pytest.raises(errors.BankFormatError, match="mode names"):
        presets.export_preset(bank, tmp_path / "p.safetensors", settings={"paper": [1, 2]})
    assert not (tmp_path / "p.safetensors").exists()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), json_values.map(json.dumps),
                 st.dictionaries(st.sampled_from(["safe_denoiser_preset", "bank", "settings", "card", "title"]),
                                 json_values).map(lambda d: json.dumps({"safe_denoiser_preset": 1} | d))))
def test_preset_parser_never_crashes(text):
    try:
        preset = presets.parse_settings_preset(text)
    except PresetError:
        return
    assert preset.bank_hash.startswith("0x") and isinstance(preset.settings, dict)
