"""YAML as this project's files mean it: a key given twice in one mapping is an error, not the last one winning
(PyYAML's default), so a workflow with two ``min_score:`` lines says so instead of silently running one."""

from __future__ import annotations

from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_without_repeats(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: its keys may be overridden here
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in first_line
        except TypeError:  # an unhashable key: construct_mapping below says what is wrong with it
            continue
        line = key_node.start_mark.line + 1
        if repeated:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found key {key!r} twice (lines {first_line[key]} and {line})", key_node.start_mark)
        first_line[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a repeated key in a mapping (``yaml.YAMLError``, naming both lines)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
