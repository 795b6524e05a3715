"""The fixed positional argument list shared by the accordion, the API's alwayson_scripts and the script."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st

from lib_safedenoise.core.modes import MAX_STRENGTH
from lib_safedenoise.webui import enforcement, xyz
from lib_safedenoise.webui.args import ARG_NAMES, ARGS_VERSION, GenerationArgs, parse_bank_list


def test_positions_are_the_documented_ones():
    assert ARGS_VERSION == 1
    assert ARG_NAMES == ("enabled", "banks", "strengths", "mode", "bandwidth", "window_start", "window_end",
                         "threshold")


def test_missing_tail_takes_defaults_and_an_empty_list_is_off():
    assert GenerationArgs.from_script_args([]) == GenerationArgs()
    assert not GenerationArgs.from_script_args([]).enabled
    args = GenerationArgs.from_script_args([True, ["nsfw"]])
    assert args.enabled and args.banks == ("nsfw",) and args.window_end == GenerationArgs().window_end


def test_api_friendly_forms_are_accepted():
    args = GenerationArgs.from_script_args(["true", "cats", "0.5", "paper", "0", "0.1", "0.3", -1])
    assert args.enabled and args.banks == ("cats",) and args.strengths == (0.5,)
    assert (args.window_start, args.window_end) == (0.1, 0.3)
    args = GenerationArgs.from_script_args([True, ["a", "b"], [1, 0.25]])
    assert args.strength_of(0) == 1 and args.strength_of(1) == 0.25


def test_strength_rules():
    assert GenerationArgs(banks=("a", "b"), strengths=(0.5,)).strength_of(1) == 0.5  # one number applies to all
    assert GenerationArgs(banks=("a", "b", "c"), strengths=(0.5, 2)).strength_of(2) == 1.0  # missing -> 1


@pytest.mark.parametrize("args, word", [
    ([True, None, None, "m", 0, 0, 1, -1, "extra"], "at most"),
    (["yes"], "enabled"),
    ([True, [1]], "banks"),
    ([True, [], "x"], "strengths"),
    ([True, [], "", ""], "mode"),
    ([True, [], "", "m", "wide"], "bandwidth"),
    ([True, [], "", "m", 0, 0.5, 0.2], "window_start <= window_end"),
    ([True, [], "", "m", 0, 0, 1.5], "window_end"),
    ([True, [], "", "m", 0, 0, 1, float("nan")], "threshold"),
])
def test_bad_input_names_the_argument(args, word):
    with pytest.raises(ValueError, match=word):
        GenerationArgs.from_script_args(args)


@given(enabled=st.booleans(), banks=st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), max_size=3),
       strengths=st.lists(st.floats(0, MAX_STRENGTH, allow_nan=False).map(lambda v: round(v, 3)), max_size=3),
       window=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
       bandwidth=st.floats(0, 10).map(lambda v: round(v, 3)), threshold=st.floats(-1, 10).map(lambda v: round(v, 3)))
def test_round_trip_through_the_positional_list(enabled, banks, strengths, window, bandwidth, threshold):
    args = GenerationArgs(enabled, tuple(banks), tuple(strengths), "paper", bandwidth, window[0], window[1], threshold)
    again = GenerationArgs.from_script_args(args.to_script_args())
    assert again.banks == args.banks and again.enabled == enabled
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(again.strengths, args.strengths))
    assert (again.window_start, again.window_end, again.bandwidth) == (window[0], window[1], bandwidth)


def test_every_value_is_validated_however_it_is_built():
    """Direct construction and ``replace`` run the same parsers and bounds as the positional list."""
    assert GenerationArgs(True, "a, b", "0.5", "paper", "2", 0.1, 0.5, "-1") == GenerationArgs(
        True, ("a", "b"), (0.5,), "paper", 2.0, 0.1, 0.5, -1.0)
    args = GenerationArgs(True, ("a",), (1.0,))
    for change, word in (({"strengths": (MAX_STRENGTH + 0.5,)}, "strengths"), ({"window_end": 1.5}, "window_end"),
                         ({"bandwidth": -1.0}, "bandwidth"), ({"window_start": 0.9, "window_end": 0.1},
                                                               "window_start <= window_end")):
        with pytest.raises(ValueError, match=word):
            replace(args, **change)


def test_one_bank_list_parser_for_every_source():
    """Positional args, XYZ cells, the launch flag and the settings split names the same way: a comma always
    separates names (builder.sanitize_name never leaves one in a bank name)."""
    assert GenerationArgs.from_script_args([True, " cats, dogs ,"]).banks == ("cats", "dogs")
    assert GenerationArgs.from_script_args([True, ["cats, dogs", " birds", ""]]).banks == ("cats", "dogs", "birds")
    assert parse_bank_list("cats, dogs") == parse_bank_list(["cats", "dogs"]) == ("cats", "dogs")
    cell = SimpleNamespace(safe_denoiser_bank="cats, dogs")
    assert xyz.apply_xyz_overrides(GenerationArgs(True, ("a",)), cell).banks == ("cats", "dogs")
    assert enforcement.merge_enforced_names("cats, dogs", ["dogs", "birds"]) == ("cats", "dogs", "birds")
    # a request may name a bank twice: each entry keeps its own strength
    assert GenerationArgs.from_script_args([True, ["a", "a"], "1, 0.5"]).strength_of(1) == 0.5


def test_xyz_cells_reach_the_args_exactly():
    """A cell's value replaces the field as it is: no trip through the positional list's strings (whose
    ``%g`` strengths keep six digits), and the accordion's other values stay exact too."""
    args = GenerationArgs(True, ("a", "b"), (0.3333333, 1.0), "paper", 0.1234567)
    cell = SimpleNamespace(safe_denoiser_strength=0.1234567, safe_denoiser_bandwidth=2.7182818)
    changed = xyz.apply_xyz_overrides(args, cell)
    assert changed.strengths == (0.1234567,) and changed.bandwidth == 2.7182818
    kept = xyz.apply_xyz_overrides(args, SimpleNamespace(safe_denoiser_mode="contrastive"))
    assert kept == replace(args, mode="contrastive") and kept.strengths == (0.3333333, 1.0)
    with pytest.raises(ValueError, match="strengths"):
        xyz.apply_xyz_overrides(args, SimpleNamespace(safe_denoiser_strength=MAX_STRENGTH * 2))

