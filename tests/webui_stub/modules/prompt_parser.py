"""Stand-in for the WebUI's `modules.prompt_parser` (1.10.1): the functions HandRefiner calls, with their
signatures and return types, over an own implementation of the documented prompt syntax (the WebUI wiki's
"Prompt editing" [from:to:when], "Alternating words" [a|b], "Composable diffusion" AND with :weight, and
"Attention/emphasis" (word:1.3), (word), [word], \\( escapes, BREAK)."""
from __future__ import annotations

import re
from collections import namedtuple
from typing import List

import torch

_ScheduledCond = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts for the conditioner, with the flags SDXL needs."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        source = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(source, "is_negative_prompt", False)
        self.width = width or getattr(source, "width", None)
        self.height = height or getattr(source, "height", None)


# ---- prompt editing and alternation -------------------------------------------------------------------------

class _Scheduled:
    def __init__(self, before, after, when):
        self.before, self.after, self.when, self.step = before, after, when, None


class _Alternate:
    def __init__(self, options):
        self.options = options


_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*")


def _parse(text, i=0, stops=""):
    """Nodes (text, lists of nodes, _Scheduled, _Alternate) from text[i:] up to one of `stops`."""
    nodes, plain = [], []

    def flush():
        if plain:
            nodes.append("".join(plain))
            plain.clear()

    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            plain.append(text[i:i + 2])
            i += 2
            continue
        if c in stops:
            break
        if c == "[":
            node, end = _bracket(text, i + 1)
            if node is not None:
                flush()
                nodes.append(node)
                i = end
                continue
        elif c == "(":
            inner, end = _parse(text, i + 1, ")")
            if end < len(text):
                flush()
                nodes.append(["(", *inner, ")"])
                i = end + 1
                continue
        plain.append(c)
        i += 1
    flush()
    return nodes, i


def _bracket(text, i):
    """What follows a "[": a schedule, an alternation or (any other bracket) the text as written; None if the
    bracket is not closed."""
    parts, separators = [], []
    while True:
        part, i = _parse(text, i, ":|]")
        parts.append(part)
        if i >= len(text):
            return None, i
        c = text[i]
        i += 1
        if c == "]":
            break
        separators.append(c)
    if separators and set(separators) == {"|"}:
        return _Alternate(parts), i
    last = parts[-1]
    if separators and set(separators) == {":"} and len(parts) in (2, 3) and len(last) == 1 \
            and isinstance(last[0], str) and _NUMBER.fullmatch(last[0]):
        return _Scheduled(parts[0] if len(parts) == 3 else [], parts[-2], last[0].strip()), i
    written = ["["]
    for k, part in enumerate(parts):
        if k:
            written.append(separators[k - 1])
        written.extend(part)
    return written + ["]"], i


def _collect_steps(nodes, steps, int_offset, flt_offset, use_old_scheduling, found):
    for node in nodes:
        if isinstance(node, list):
            _collect_steps(node, steps, int_offset, flt_offset, use_old_scheduling, found)
        elif isinstance(node, _Scheduled):
            v = float(node.when)
            if use_old_scheduling:
                v = v * steps if v < 1 else v
            elif "." in node.when:
                v = (v - flt_offset) * steps
            else:
                v = v - int_offset
            node.step = min(steps, int(v))
            if node.step >= 1:
                found.add(node.step)
            _collect_steps(node.before, steps, int_offset, flt_offset, use_old_scheduling, found)
            _collect_steps(node.after, steps, int_offset, flt_offset, use_old_scheduling, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, int_offset, flt_offset, use_old_scheduling, found)


def _render(nodes, step):
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_render(node, step))
        elif isinstance(node, _Scheduled):
            out.append(_render(node.before if step <= node.step else node.after, step))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt, [[last step, text], …]: the text in effect up to that step."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps
    out = []
    for prompt in prompts:
        nodes, _ = _parse(prompt)
        found = {steps}
        _collect_steps(nodes, steps, int_offset, flt_offset, use_old_scheduling, found)
        out.append([[step, _render(nodes, step)] for step in sorted(found)])
    return out


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt, its schedule as [ScheduledPromptConditioning(end_at_step, cond)]; all texts of one
    prompt's schedule are encoded in one batch."""
    res, cache = [], {}
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    for prompt, schedule in zip(prompts, schedules):
        if prompt not in cache:
            texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
            conds = model.get_learned_conditioning(texts)
            cache[prompt] = [_ScheduledCond(end, conds[i]) for i, (end, _) in enumerate(schedule)]
        res.append(cache[prompt])
    return res


# ---- AND --------------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def get_multicond_prompt_list(prompts):
    indexes, flat, index_of = [], SdConditioning(prompts), {}
    flat.clear()
    for prompt in prompts:
        parts = []
        for subprompt in _AND.split(prompt):
            text, weight = _WEIGHT.match(subprompt).groups()
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            parts.append((index_of[text], float(weight) if weight is not None else 1.0))
        indexes.append(parts)
    return indexes, flat, index_of


class _Composable:
    def __init__(self, schedules, weight=1.0):
        self.schedules: List[_ScheduledCond] = schedules
        self.weight: float = weight


class _Multicond:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: List[List[_Composable]] = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None,
                                       use_old_scheduling=False) -> _Multicond:
    indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[_Composable(learned[i], weight) for i, weight in parts] for parts in indexes]
    return _Multicond(shape=(len(prompts),), batch=batch)


def _at_step(schedules, current_step):
    return next((entry.cond for entry in schedules if current_step <= entry.end_at_step), schedules[0].cond)


def reconstruct_cond_batch(c, current_step):
    return torch.stack([_at_step(schedules, current_step) for schedules in c])


def _stack_conds(tensors):
    """Stacks conds of different token lengths by repeating each one's last vector."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack([t if t.shape[0] == longest else torch.cat([t, t[-1:].repeat(longest - t.shape[0], 1)])
                        for t in tensors])


def reconstruct_multicond_batch(c: _Multicond, current_step):
    tensors, conds_list = [], []
    for parts in c.batch:
        conds = []
        for part in parts:
            conds.append((len(tensors), part.weight))
            tensors.append(_at_step(part.schedules, current_step))
        conds_list.append(conds)
    return conds_list, _stack_conds(tensors)


# ---- emphasis -----------------------------------------------------------------------------------------------

_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """[[text, weight], …]: (x) ×1.1, (x:w) ×w, [x] ÷1.1, unclosed brackets to the end; BREAK as ["BREAK", -1]."""
    res, round_open, square_open = [], [], []

    def scale(start, factor):
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for k, part in enumerate(_BREAK.split(piece)):
                if k:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    if not res:
        return [["", 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return merged
