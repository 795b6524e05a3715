"""Stands in for modules/styles.py: ``PromptStyle`` and ``StyleDatabase.apply_styles_to_prompt`` /
``apply_negative_styles_to_prompt``. Behaviour reproduced: each chosen style in order puts the prompt where
its text says ``{prompt}``, else appends its text after ``", "`` (empty parts dropped); an unknown style
name applies nothing. The database is a dict here; the real one reads styles.csv."""

from __future__ import annotations

import typing


class PromptStyle(typing.NamedTuple):
    name: str
    prompt: str | None
    negative_prompt: str | None
    path: str | None = None


def _with_style(prompt: str, style_text: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleDatabase:
    def __init__(self):
        self.styles: dict[str, PromptStyle] = {}

    def _apply(self, prompt: str, names, field: str) -> str:
        for name in names:
            style = self.styles.get(name)
            prompt = _with_style(prompt, (getattr(style, field) if style else "") or "")
        return prompt

    def apply_styles_to_prompt(self, prompt, styles):
        return self._apply(prompt, styles, "prompt")

    def apply_negative_styles_to_prompt(self, prompt, styles):
        return self._apply(prompt, styles, "negative_prompt")
