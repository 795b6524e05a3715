"""Infotext: what the extension writes, and what paste / PNG Info / "Send to" restore (through the host
stub's copy of the WebUI's parser rules, modules/infotext_utils.py)."""

import pytest
import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.webui import infotext, keys, session
from lib_safedenoise.webui.infotext import INFOTEXT_READERS
from lib_safedenoise.webui.keys import INFOTEXT_KEY
from lib_safedenoise.webui.args import ARG_NAMES, GenerationArgs
from lib_safedenoise.core.latent_bank import LatentBank
from tests import host_stub

host_stub.install()
from modules import infotext_utils  # noqa: E402  (the stub)


def bank(name, short_hash="1a2b3c4d5e6f"):
    return LatentBank(name=name, latents=torch.zeros(2, 4, 8, 8), short_hash=short_hash)


class Control:
    """A component as connect_paste sees it: only its current ``value`` (whose type drives the cast)."""

    def __init__(self, value):
        self.value = value


def written_infotext(args, banks, mode_name="paper"):
    """A full infotext line, quoted as modules/processing.py ``create_infotext`` does."""
    value = infotext.format_infotext(args, banks, mode_name)
    return (f"3\nNegative prompt: 7\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 4, Size: 64x64, "
            f"{INFOTEXT_KEY}: {infotext_utils.quote(value)}, Schedule type: Automatic")


def test_written_value_names_concrete_mode_engine_banks_with_hashes():
    args = GenerationArgs(True, ("nsfw (v2)+faces", "cats"), (1.0, 0.5), "default", 0.0, 0.0, 0.3, -1)
    value = infotext.format_infotext(args, [bank("nsfw (v2)+faces"), bank("cats", "0f0e0d0c0b0a")], "paper")
    assert value == ("banks=nsfw (v2)+faces@1a2b3c4d5e6f*1|cats@0f0e0d0c0b0a*0.5; mode=paper; "
                     f"engine={ENGINE_VERSION}; window=0-0.3; bandwidth=auto; threshold=auto")


def test_round_trip_through_the_webui_parser():
    args = GenerationArgs(True, ("nsfw (v2)+faces", "cats"), (1.0, 0.5), "default", 2.5, 0.1, 0.3, 0.75)
    params = infotext_utils.parse_generation_parameters(written_infotext(args, [bank(n) for n in args.banks]))
    assert params["Steps"] == "12" and params["Size-1"] == "64"  # the line around ours still parses
    pasted = infotext.parse_infotext(params[INFOTEXT_KEY])
    assert pasted.args == GenerationArgs(True, args.banks, args.strengths, "paper", 2.5, 0.1, 0.3, 0.75)
    assert pasted.hashes == {"nsfw (v2)+faces": "1a2b3c4d5e6f", "cats": "1a2b3c4d5e6f"}
    assert pasted.engine == ENGINE_VERSION


def pasted_controls(infotext, controls):
    return infotext_utils.paste(list(zip(controls, INFOTEXT_READERS)), infotext)


def accordion(enabled=True):
    return [Control(v) for v in (enabled, ["old"], "2", "paper", 1.0, 0.0, 0.9, 3.0)]


def test_paste_restores_every_control_with_its_type():
    args = GenerationArgs(True, ("cats", "dogs"), (0.5, 2.0), "paper", 1.5, 0.05, 0.4, -1)
    values = pasted_controls(written_infotext(args, [bank("cats"), bank("dogs")]), accordion(enabled=False))
    assert values == [True, ["cats", "dogs"], "0.5, 2", "paper", 1.5, 0.05, 0.4, -1.0]
    assert GenerationArgs.from_script_args(values) == args


def test_paste_without_our_key_switches_the_toggle_off_and_leaves_the_rest():
    values = pasted_controls("3\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 4", accordion(enabled=True))
    assert values[0] is False
    assert values[1:] == [infotext_utils.UNCHANGED] * (len(ARG_NAMES) - 1)


def test_unreadable_value_changes_nothing():
    text = f'3\nSteps: 12, Sampler: Euler, Seed: 4, {INFOTEXT_KEY}: "banks=cats@-*1; window=late"'
    assert pasted_controls(text, accordion()) == [infotext_utils.UNCHANGED] * len(ARG_NAMES)
    with pytest.raises(ValueError, match="window"):
        infotext.parse_infotext("banks=cats@-*1; window=late")
    with pytest.raises(ValueError, match="name=value"):
        infotext.parse_infotext("banks=cats; paper")
    with pytest.raises(ValueError, match="bad bank entry"):  # no bank name holds a comma
        infotext.parse_infotext("banks=cats, dogs@-*1")


def test_one_parse_per_pasted_infotext(monkeypatch, capsys):
    """Paste calls all eight readers with one parsed dict: the value is parsed once and shared; another
    paste (a new dict) parses again; an unreadable value is reported once, not once per reader."""
    parses = []
    parse = infotext.parse_infotext
    monkeypatch.setattr(infotext, "parse_infotext", lambda value: parses.append(value) or parse(value))
    args = GenerationArgs(True, ("cats", "dogs"), (0.5, 2.0), "paper", 1.5, 0.05, 0.4, 0.25)
    text = written_infotext(args, [bank("cats"), bank("dogs")])
    assert pasted_controls(text, accordion()) == [True, ["cats", "dogs"], "0.5, 2", "paper", 1.5, 0.05, 0.4, 0.25]
    assert len(parses) == 1
    pasted_controls(text, accordion())
    assert len(parses) == 2
    bad = f'3\nSteps: 12, Sampler: Euler, Seed: 4, {INFOTEXT_KEY}: "banks=cats@-*1; window=late"'
    capsys.readouterr()
    assert pasted_controls(bad, accordion()) == [infotext_utils.UNCHANGED] * len(ARG_NAMES)
    assert len(parses) == 3 and capsys.readouterr().err.count("cannot restore settings") == 1


def test_fields_are_names_for_send_to_and_readers_for_paste_and_api():
    """modules/infotext_utils.py PasteField: a str target is a label, a callable target a function."""
    for reader, name in zip(INFOTEXT_READERS, ARG_NAMES):
        assert isinstance(reader, str) and callable(reader) and reader == f"Safe Denoiser {name}"
    assert INFOTEXT_READERS[0]({"Steps": "4"}) is False
    assert INFOTEXT_READERS[1]({"Steps": "4"}) is None


def test_keys_are_in_the_parsers_character_set():
    for key in (INFOTEXT_KEY, keys.INFOTEXT_FIRED_KEY, keys.INFOTEXT_ERROR_KEY,
                keys.INFOTEXT_ENFORCED_KEY, *INFOTEXT_READERS):
        assert infotext_utils.re_param.fullmatch(f"{key}: 1")


@pytest.mark.parametrize("steps, text", [([], "none"), ([3], "3"), ([1, 2, 3, 7, 9, 10], "1-3 7 9-10"),
                                         ([5, 4, 4], "4-5")])
def test_fired_steps_text(steps, text):
    assert session.format_steps(steps) == text
    assert session.parse_steps(text) == sorted(set(steps))


def test_report_reaches_the_api_json_but_no_infotext_built_later():
    import json
    from types import SimpleNamespace

    from modules import processing

    report = infotext.ApiOnlyValue({"images": {"0": {"fired": "1-2"}}})
    p = SimpleNamespace(extra_generation_params={keys.REPORT_KEY: report}, all_prompts=["3"], all_seeds=[1],
                        batch_size=1, steps=4, sampler_name="Euler", cfg_scale=2, width=64, height=64,
                        all_negative_prompts=[""], main_prompt="3", main_negative_prompt="", prompts=["3"])
    processed = processing.Processed(p, [], seed=1, info="")
    assert json.loads(processed.js())["extra_generation_params"][keys.REPORT_KEY] == report
    assert keys.REPORT_KEY not in processed.infotext(p, 0)
