"""The one bounded YAML reader for every YAML file a user gives (accelerator configs, energy tables, DSE
sweep specs).

It keeps ``yaml.safe_load`` semantics (plain data only, no tags executed) and refuses, with a one-line
:class:`ConfigError` naming the file, what could hang, exhaust memory or crash the reader:

* non-regular files (FIFOs, devices such as ``/dev/zero``, directories), checked before opening;
* files over :data:`MAX_BYTES` (at most that many bytes are ever read);
* bytes that are not UTF-8;
* nesting deeper than :data:`MAX_DEPTH` collections (no ``RecursionError``);
* more than :data:`MAX_NODES` nodes once aliases are expanded (alias "billion laughs" bombs), and
  aliases that refer to themselves;
* integer literals longer than :data:`MAX_INT_CHARS` characters;
* duplicate mapping keys (YAML would silently keep the last one).

Values echoed in messages are cut to :data:`ECHO_CHARS` characters so error lines stay short.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

try:  # libyaml parses (a pure-Python parse is ~5x slower)
    from yaml._yaml import CParser

    _PARSER: tuple[type, ...] = (CParser,)
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER = (Reader, Scanner, Parser)

__all__ = [
    "ConfigError",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_INT_CHARS",
    "ECHO_CHARS",
    "load_yaml",
    "parse_yaml",
    "show",
]

MAX_BYTES = 1 << 20  # 1 MiB per file
MAX_DEPTH = 32  # nested mappings/sequences
MAX_NODES = 50_000  # scalars + collections, aliases counted at their expanded size
MAX_INT_CHARS = 100  # characters of one integer literal
ECHO_CHARS = 80  # characters of a value echoed in an error message

_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(ValueError):
    """A config file is malformed; the message is one line naming the file and the field."""


def show(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with an ellipsis), for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<{value.bit_length()}-bit integer>"  # repr of a huge int costs quadratic time
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Refused(Exception):
    """A bound was exceeded while composing; carries the line (1-based, or None) and the reason."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


class _BoundedLoader(Composer, *_PARSER, SafeConstructor, Resolver):
    """``yaml.SafeLoader``'s semantics (its constructor and resolver) with a composer that counts depth and
    expanded nodes, and a constructor that refuses duplicate keys and over-long integers."""

    def __init__(self, stream: str):
        _PARSER[0].__init__(self, stream)
        for base in _PARSER[1:]:
            base.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        Composer.__init__(self)
        self._depth = 0
        self._nodes = 0
        self._size: dict[int, int] = {}  # id(node) -> expanded node count, once composed
        self._closed: set[str] = set()  # anchors whose node is completely composed

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                if event.anchor not in self._closed:
                    raise _Refused(
                        mark.line + 1,
                        f"alias *{_cut(event.anchor, 40)} refers to the collection "
                        "that contains it (recursive alias)",
                    )
                self._count(self._size.get(id(target), 1), mark)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._closed.discard(anchor)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
        before = self._nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, mark)
        self._size[id(node)] = self._nodes - before
        if anchor is not None:
            self._closed.add(anchor)
        return node

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(mark.line + 1, f"more than {MAX_NODES} values once aliases are expanded")

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Refused(line, f"duplicate key {show(key)} (first at line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise _Refused(
                node.start_mark.line + 1, f"integer of {len(node.value)} characters (at most {MAX_INT_CHARS})"
            )
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def parse_yaml(data: bytes, source: str) -> Any:
    """Parse one YAML document from ``data`` under the bounds above; errors name ``source``."""
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES} bytes; is this the right file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        where = f"line {e.line}: " if e.line is not None else ""
        raise ConfigError(f"{source}: {where}{e.reason}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: {where}: not valid YAML ({_cut(problem, 120)})") from None
    except (ValueError, RecursionError, MemoryError) as e:  # int()/float() of a strange scalar, ...
        raise ConfigError(f"{source}: not valid YAML ({type(e).__name__}: {_cut(str(e), 120)})") from None
    finally:
        getattr(loader, "dispose", lambda: None)()


def _read_bounded(path: Path, source: str, what: str) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ConfigError(f"{source}: {kind}; a {what} must be a regular YAML file")
    if st.st_size > MAX_BYTES:
        raise ConfigError(f"{source}: {st.st_size} bytes, larger than {MAX_BYTES}; is this the right file?")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, opening it must not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{source}: not a regular file; a {what} must be a regular YAML file")
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def load_yaml(path: str | os.PathLike, what: str = "config") -> dict:
    """Read a user's YAML file under the bounds above and return its top-level mapping.

    ``what`` names the kind of file in messages ("config", "energy table", "sweep spec"). Every failure is a
    one-line :class:`ConfigError` that starts with the file name.
    """
    path = Path(path)
    source = str(path)
    data = parse_yaml(_read_bounded(path, source, what), source)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{source}: top level: expected a mapping of fields, got {got}")
    return data
