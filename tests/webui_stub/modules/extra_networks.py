"""Extra networks (LoRA, hypernetworks, …) named in prompts as <name:arg1:arg2…>."""
from __future__ import annotations

import re
from collections import defaultdict

extra_network_registry = {}   # name -> network with activate(p, [_Params]) and deactivate(p)
_TAG = re.compile(r"<(\w+):([^>]+)>")


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


class _Params:
    def __init__(self, items=None):
        self.items = items or []

    def __eq__(self, other):
        return self.items == other.items


def _by_network(extra_network_data):
    found = {}
    for name, params in extra_network_data.items():
        if name in extra_network_registry:
            found.setdefault(extra_network_registry[name], []).extend(params)
    return found


def activate(p, extra_network_data):
    """The networks the prompt names, with their tags' arguments; then every other registered one, with none."""
    named = _by_network(extra_network_data)
    for network in [*named, *(n for n in extra_network_registry.values() if n not in named)]:
        network.activate(p, named.get(network, []))


def deactivate(p, extra_network_data):
    for network in extra_network_registry.values():
        network.deactivate(p)


def parse_prompt(prompt):
    """(the prompt without its tags, {network: [_Params of each tag]})."""
    found = defaultdict(list)

    def take(match):
        found[match.group(1)].append(_Params(match.group(2).split(":")))
        return ""

    return _TAG.sub(take, prompt), found


def parse_prompts(prompts):
    """Every prompt without its tags; the tags of the first prompt (as the WebUI uses them for the batch)."""
    parsed = [parse_prompt(prompt) for prompt in prompts]
    return [text for text, _ in parsed], (parsed[0][1] if parsed else None)
