"""YAML text -> plain data, safely, with the line and column of every key.

PyYAML's safe loader already refuses tags that build objects, but two things it allows
would hurt a long-running worker that reloads its config on SIGHUP: aliases that expand
exponentially (a few hundred bytes naming a billion values), and duplicate keys, the
later silently replacing the earlier. Both are caught here on the composed node graph,
before anything is built, where an alias is still one shared node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

# Values the document may hold once every alias is expanded. A large real config (1,000
# subscriptions of a dozen keys) is about 50,000; a bomb is billions.
MAX_VALUES = 250_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(Exception):
    """The text is not a usable YAML document; `errors` are lines like `12:5: what`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Document:
    """The parsed data and, for each key path (`subscriptions.ops.url`, `x[0]`), the
    1-based line and column where its value was written."""

    data: Any
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: str) -> str:
        """`:line:column` of a key path, or of its nearest written parent; '' if unknown."""
        while path:
            if path in self.marks:
                line, column = self.marks[path]
                return f":{line}:{column}"
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return ""


def load(text: str) -> Document:
    """Parse one YAML document with the safe loader; raise YamlError."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise YamlError([f"{where}invalid YAML: {problem}"]) from None
        if node is None:
            return Document(None)
        _refuse_bombs(node)
        document = Document(None)
        errors: list[str] = []
        _index(node, "", document.marks, errors)
        if errors:
            raise YamlError(list(dict.fromkeys(errors)))  # a merged mapping is seen twice
        try:
            document.data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
            raise YamlError([f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
        return document
    finally:
        loader.dispose()


def _refuse_bombs(root: yaml.Node) -> None:
    """Count the values the document holds with every alias expanded, each shared node
    counted once per place it is used (memoized: linear in the written nodes)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:  # a recursive alias (&a [*a]): expands forever
            raise YamlError([f"{_at(node)}an alias refers to itself; it would never end"])
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_VALUES:
            raise YamlError(
                [
                    f"{_at(node)}aliases expand this document to more than {MAX_VALUES:,}"
                    " values (an alias bomb?); write the repeated parts out, or use fewer"
                    " nested aliases"
                ]
            )
        sizes[key] = total
        return total

    size(root)


def _at(node: yaml.Node) -> str:
    return f"{node.start_mark.line + 1}:{node.start_mark.column + 1}: "


def _index(
    node: yaml.Node, path: str, marks: dict[str, tuple[int, int]], errors: list[str]
) -> None:
    """Record where each key path was written; report keys written twice in one mapping."""
    if path and path not in marks:
        marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _index(child, f"{path}[{i}]", marks, errors)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        merged: list[yaml.Node] = []
        for key, value in node.value:
            if key.tag == MERGE_TAG:
                merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                continue
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            if name in seen:
                first = seen[name].start_mark
                errors.append(
                    f"{_at(key)}{path + '.' if path else ''}{name}: duplicate key (first"
                    f" written at line {first.line + 1}); the later one would silently"
                    " replace it: remove or rename one"
                )
            seen[name] = key
            _index(value, f"{path}.{name}" if path else name, marks, errors)
        for source in merged:  # keys written here win over merged ones, as in YAML
            if isinstance(source, yaml.MappingNode):
                for key, value in source.value:
                    name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                    if name not in seen:
                        _index(value, f"{path}.{name}" if path else name, marks, errors)
