"""Enforcement: banks a server operator imposes on every generation, whatever a request asks.

The rule: on a server with enforced banks no request, file or fault yields an image without the enforced
correction; when it cannot run, the generation stops with no image and says why.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from lib_safedenoise.banks.errors import BankCompatibilityError
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.webui.args import GenerationArgs, parse_bank_list
from lib_safedenoise.webui.keys import SETTING_ENFORCED_BANKS, SETTING_HIDE_PREVIEWS


# Options an API client must not change while banks are enforced: our own enforced list, and the two
# options that would disable the extension at the next start.
API_PROTECTED_OPTIONS = (SETTING_ENFORCED_BANKS, SETTING_HIDE_PREVIEWS, "disabled_extensions",
                         "disable_all_extensions")


class EnforcementError(RuntimeError):
    """An enforced bank cannot be applied: the generation must not run without it."""


def merge_enforced_names(cmd_value: Any, setting_value: Any) -> tuple[str, ...]:
    """Banks imposed on every generation: the launch flag's and the (API-restricted) setting's, merged
    (each name once, in first-seen order)."""
    return tuple(dict.fromkeys(parse_bank_list(cmd_value) + parse_bank_list(setting_value)))


def enforced_args(names: Sequence[str]) -> GenerationArgs:
    """Settings an enforced bank runs with: the defaults, whatever the request says.

    Enforced banks run in their own engine, so nothing a request chooses (strength 0, an empty window,
    a huge threshold, another mode) can weaken them.
    """
    return GenerationArgs(enabled=True, banks=tuple(names), strengths=(1.0,))


_enforced_copies: dict[str, LatentBank] = {}


def load_enforced(name: str, load_bank: Callable[[str], LatentBank], problems: list[str]) -> LatentBank:
    """An enforced bank; if its file was removed or damaged since it was last loaded, the copy in memory.

    A bank of the wrong latent space is never replaced by a copy: that error is raised.
    """
    try:
        bank = load_bank(name)
    except BankCompatibilityError:
        raise
    except Exception as error:
        copy = _enforced_copies.get(name)
        if copy is None:
            raise
        problems.append(f"enforced bank {name!r} cannot be read ({error}); applying the copy loaded earlier")
        return copy
    _enforced_copies[name] = bank
    return bank
