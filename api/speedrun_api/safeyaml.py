"""Bounded YAML/JSON loading for manifests: a hostile file gets one line, never a hang or a crash.

`load_document(data)` takes the file's bytes and returns the one document in it, or raises
`YamlProblem(line, message)`. What it refuses, each with the line it happened on:
- more than `MAX_BYTES` bytes, or bytes that are not UTF-8 (a UTF-8 BOM is fine);
- YAML nested deeper than `MAX_DEPTH`, more than `MAX_ALIASES` aliases, a recursive alias, or
  aliases that expand past `MAX_NODES` nodes (the "billion laughs");
- duplicate keys in a mapping (YAML says keys are unique; PyYAML silently keeps the last one),
  and keys that are not strings (`yes:` is the boolean true in YAML 1.1: quote it);
- a second document (`---`): one SpeedrunJob per file.
Numbers follow YAML 1.2 and kubectl: `1e18` is a float (PyYAML's YAML 1.1 reads it as a string).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # 1 MiB: Kubernetes' own limit for an object in etcd is 1.5 MiB
MAX_DEPTH = 32  # a SpeedrunJob nests 5 deep; metadata annotations are flat strings
MAX_ALIASES = 64
MAX_NODES = 100_000  # after expanding aliases
MAX_INT_CHARS = 1000  # a longer integer literal is refused here, before Python's 4300-digit limit

# YAML 1.2's float (the core schema), which kubectl's parser follows: no dot needed before e.
_FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class YamlProblem(Exception):
    """Why a file is not one acceptable YAML document; `line` is 1-based, 0 if unknown."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _line(node: Node | None) -> int:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else 0


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts depth, aliases and expanded size while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}
        self._open: set[int] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlProblem(self.peek_event().start_mark.line + 1, f"more than {MAX_ALIASES} aliases")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlProblem(self.peek_event().start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if parent is None and self._size(node) > MAX_NODES:
            raise YamlProblem(_line(node), f"aliases expand to more than {MAX_NODES:,} values")
        return node

    def _size(self, node: Node) -> int:
        """Values in the tree after expanding aliases (shared nodes counted each time)."""
        key = id(node)
        if key in self._sizes:
            return self._sizes[key]
        if key in self._open:
            raise YamlProblem(_line(node), "an alias refers to the node that contains it (a recursive structure)")
        self._open.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += self._size(child)
            if total > MAX_NODES:
                break
        self._open.discard(key)
        self._sizes[key] = total
        return total

    def construct_yaml_int(self, node: ScalarNode) -> int:
        # Python refuses to parse integers of more than 4300 digits (ValueError); none fits int64.
        if len(str(node.value)) > MAX_INT_CHARS:
            raise YamlProblem(_line(node), f"an integer of {len(str(node.value)):,} characters; at most int64")
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise YamlProblem(_line(key_node), f"mapping key {key!r} is not a string (quote it)")
            if key in seen:
                raise YamlProblem(_line(key_node), f"duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _char(character: Any) -> str:
    return f"U+{character:04X}" if isinstance(character, int) else repr(character)


def decode(data: bytes) -> str:
    """UTF-8 text of a manifest, or YamlProblem naming the offending byte."""
    if len(data) > MAX_BYTES:
        raise YamlProblem(0, f"larger than {MAX_BYTES:,} bytes")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlProblem(1, "UTF-16 text; save the manifest as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise YamlProblem(line, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def load_document(data: bytes) -> Any:
    """The one YAML (or JSON) document in `data`; None for an empty file."""
    text = decode(data)
    if "\x00" in text:
        raise YamlProblem(text[: text.index("\x00")].count("\n") + 1, "a NUL character: not a text file")
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise YamlProblem(line, f"not valid YAML: character {_char(err.character)} is not allowed") from None
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            if node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
                continue
            if documents:
                raise YamlProblem(_line(node), "a second YAML document: give one SpeedrunJob per file")
            documents.append(loader.construct_document(node))
        return documents[0] if documents else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise YamlProblem(mark.line + 1 if mark else 0, f"not valid YAML: {err.problem or err.context}") from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise YamlProblem(line, f"not valid YAML: character {_char(err.character)} is not allowed") from None
    except yaml.YAMLError as err:
        raise YamlProblem(0, f"not valid YAML: {err}") from None
    except RecursionError:
        raise YamlProblem(0, f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()
