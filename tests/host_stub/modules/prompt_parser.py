"""Follows modules/prompt_parser.py for what the CFG denoiser reads: ``AND`` composes sub-prompts (each
``text:weight``, weight 1 by default); ``reconstruct_multicond_batch`` returns ``conds_list`` (per image, its
``(row, weight)`` pairs) and the tensor of all cond rows, image by image. No prompt editing schedules."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts: list[str]) -> list[list[tuple[str, float]]]:
    result = []
    for prompt in prompts:
        parts = []
        for subprompt in re_AND.split(prompt):
            match = re_weight.search(subprompt)
            text, weight = match.groups() if match else (subprompt, 1.0)
            parts.append((text.strip(), float(weight) if weight is not None else 1.0))
        result.append(parts)
    return result


@dataclass
class MulticondLearnedConditioning:
    conds_list: list[list[tuple[int, float]]]
    tensor: torch.Tensor


def get_multicond_learned_conditioning(model, prompts: list[str]) -> MulticondLearnedConditioning:
    parsed = get_multicond_prompt_list(prompts)
    texts = [text for parts in parsed for text, _ in parts]
    conds_list, row = [], 0
    for parts in parsed:
        conds_list.append([(row + i, weight) for i, (_, weight) in enumerate(parts)])
        row += len(parts)
    return MulticondLearnedConditioning(conds_list, model.get_learned_conditioning(texts))


def get_learned_conditioning(model, prompts: list[str]) -> torch.Tensor:
    return model.get_learned_conditioning(prompts)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    return c.conds_list, c.tensor


def reconstruct_cond_batch(c, current_step):
    return c
