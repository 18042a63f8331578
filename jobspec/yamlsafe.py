"""Safe YAML for job files: bytes in, plain Python data and a line for every node out.

Job files come from any user who can write to the inbox, so the loader trusts nothing:
the size is checked before decoding, anchors/aliases are refused while composing (an
alias bomb never expands), only the plain YAML types are built (no tags, no timestamps,
no YAML 1.1 surprises such as `yes` -> true, `010` -> 8 or `1:30` -> 90), duplicate
keys and deep nesting are refused, and every problem carries the line it is on.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from jobspec.errors import ErrorDetail, JobSpecError

MAX_DEPTH = 32
# A full 32-job batch is under 2000 nodes; the cap bounds the work a hostile file can cause.
MAX_NODES = 5000
DEFAULT_MAX_BYTES = 65536

Path_ = tuple[str | int, ...]
LineMap = dict[Path_, int]

_CORE = "tag:yaml.org,2002:"
STR_TAG, INT_TAG, FLOAT_TAG = _CORE + "str", _CORE + "int", _CORE + "float"
BOOL_TAG, NULL_TAG, SEQ_TAG, MAP_TAG = _CORE + "bool", _CORE + "null", _CORE + "seq", _CORE + "map"
# Explicit tags naming the plain types are harmless; anything else (python/*, binary,
# timestamp, set, custom `!foo`) is refused.
ALLOWED_TAGS = frozenset({STR_TAG, INT_TAG, FLOAT_TAG, BOOL_TAG, NULL_TAG, SEQ_TAG, MAP_TAG})


class CoreResolver(BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans, only decimal/0x/0o are integers."""


CoreResolver.add_implicit_resolver(
    BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
CoreResolver.add_implicit_resolver(NULL_TAG, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
CoreResolver.add_implicit_resolver(
    INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
CoreResolver.add_implicit_resolver(
    FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _Refused(Exception):
    def __init__(self, line: int | None, msg: str, hint: str | None = None, loc: str = "") -> None:
        super().__init__(msg)
        self.detail = ErrorDetail(loc=loc, line=line, msg=msg, hint=hint)


class SafeJobLoader(Reader, Scanner, Parser, Composer, CoreResolver):
    """Composes a node tree, refusing anchors, aliases, tags and deep nesting on the way."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        CoreResolver.__init__(self)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # Checked on the event, before the composer records an anchor or expands an alias.
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            raise _Refused(
                line,
                f"YAML anchors and aliases are not allowed (found alias *{event.anchor})",
                "write the value out in full; anchors and aliases are refused in job files",
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                line,
                f"YAML anchors and aliases are not allowed (found anchor &{anchor})",
                "write the value out in full; for shared settings use a batch file with `defaults:`",
            )
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in ALLOWED_TAGS:
            shown = "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag
            raise _Refused(
                line, f"YAML tag '{shown}' is not allowed", "remove the tag and write a plain value"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(line, f"the file holds more than {MAX_NODES} values", "a job file needs far fewer")
        if not isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    line,
                    f"the file is nested more than {MAX_DEPTH} levels deep",
                    "a job needs at most 4 levels (jobs > item > sampling > key)",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_job_bytes(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Size limit, then binary and UTF-8 checks; returns the text without a BOM."""
    if len(data) > max_bytes:
        raise _Refused(
            None,
            f"the file is {len(data)} bytes; job files are limited to {max_bytes} bytes",
            "split it into several job files (a batch holds up to 32 jobs)",
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _Refused(1, "the file is UTF-16 text; job files must be UTF-8", "save the job as UTF-8 text")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _Refused(
            _line_of_offset(data, nul),
            "the file contains NUL bytes: it looks like binary data, not a YAML text file",
            "save the job as a plain UTF-8 text file",
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise _Refused(
            _line_of_offset(data, exc.start),
            f"the file is not valid UTF-8 (byte 0x{bad})",
            "save the job as UTF-8 text",
        ) from None
    return text


def _tab_indent_line(text: str, upto: int | None) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if upto is not None and number > upto:
            break
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip():
            return number
    return None


def _yaml_error(text: str, exc: yaml.YAMLError) -> _Refused:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    context_mark = getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return _Refused(
            line,
            f"the file contains a control character ({exc.character!r}) that YAML does not allow",
            "save the job as a plain text file",
        )
    tab_line = _tab_indent_line(text, line)
    if tab_line is not None:
        return _Refused(tab_line, "tabs are not allowed for indentation in YAML; use spaces", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    msg = f"YAML syntax error: {problem}"
    if context:
        if context_mark is not None and context_mark.line + 1 != line:
            context = f"{context} started on line {context_mark.line + 1}"
        msg = f"{msg} ({context})"
    return _Refused(line, msg, _syntax_hint(problem))


def _syntax_hint(problem: str) -> str | None:
    if "mapping values are not allowed" in problem:
        return "quote values that contain ': ' (e.g. prompt: \"intro: soft piano\")"
    if "could not find expected ':'" in problem:
        return "each line needs `key: value`; quote text that spans lines"
    if "expected a single document" in problem:
        return "one job per file; use `jobs:` for several"
    return None


def _scalar(node: ScalarNode) -> Any:
    value, tag, line = node.value, node.tag, node.start_mark.line + 1
    if tag == STR_TAG:
        return value
    if tag == NULL_TAG:
        if value not in ("", "~", "null", "Null", "NULL"):
            raise _Refused(line, f"'{value}' is not null")
        return None
    if tag == BOOL_TAG:
        if value.lower() not in ("true", "false"):
            raise _Refused(line, f"'{value}' is not a boolean", "write true or false")
        return value.lower() == "true"
    if tag == INT_TAG:
        try:
            if value.startswith(("0x", "0X")):
                return int(value[2:], 16)
            if value.startswith(("0o", "0O")):
                return int(value[2:], 8)
            return int(value, 10)
        except ValueError:
            raise _Refused(line, f"'{value[:40]}' is not a usable integer", None) from None
    if tag == FLOAT_TAG:
        lowered = value.lower()
        if lowered in (".inf", "+.inf"):
            return float("inf")
        if lowered == "-.inf":
            return float("-inf")
        if lowered == ".nan":
            return float("nan")
        try:
            return float(value)
        except ValueError:
            raise _Refused(line, f"'{value[:40]}' is not a number", None) from None
    raise _Refused(line, f"unsupported YAML value type {tag}")  # unreachable: tags are checked when composing


def _to_python(node: Node, path: Path_, lines: LineMap) -> Any:
    if isinstance(node, ScalarNode):
        return _scalar(node)
    if isinstance(node, SequenceNode):
        items = []
        for index, child in enumerate(node.value):
            lines[(*path, index)] = child.start_mark.line + 1
            items.append(_to_python(child, (*path, index), lines))
        return items
    if isinstance(node, MappingNode):
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                raise _Refused(key_line, "keys must be plain names, not lists or mappings", None)
            # Keys stay the text as written (`true:` is the key "true"), so typos get hints.
            key = key_node.value
            if key in result:
                raise _Refused(
                    key_line,
                    f"duplicate key '{key}' (first set on line {first_line[key]})",
                    "keep one of them",
                    loc=_loc_text((*path, key)),
                )
            first_line[key] = key_line
            lines[(*path, key)] = key_line
            result[key] = _to_python(value_node, (*path, key), lines)
        return result
    raise _Refused(node.start_mark.line + 1, "unsupported YAML node")


def _loc_text(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_yaml_bytes(
    data: bytes, filename: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[dict[str, Any], LineMap]:
    """Parse a job file's bytes into a mapping plus the line of every key and list item.

    Raises JobSpecError for anything that is not a safe, plain YAML mapping.
    """
    try:
        text = decode_job_bytes(data, max_bytes=max_bytes)
        if not text.strip():
            raise _Refused(None, "the file is empty", "write at least `prompt: ...`")
        try:
            # The Reader checks every character when it is built, so construction is inside the try.
            loader = SafeJobLoader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            raise _yaml_error(text, exc) from None
        if root is None:
            raise _Refused(None, "the file holds only comments, no job", "write at least `prompt: ...`")
        root_line = root.start_mark.line + 1
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            raise _Refused(
                root_line,
                f"a job file must be a mapping of `key: value` lines, not {kind}",
                "start with `prompt: ...`, or `jobs:` followed by a list of jobs for a batch",
            )
        lines: LineMap = {(): root_line}
        value = _to_python(root, (), lines)
    except _Refused as refused:
        raise JobSpecError([refused.detail], filename) from None
    except RecursionError:
        raise JobSpecError(
            [ErrorDetail(loc="", line=None, msg=f"the file is nested more than {MAX_DEPTH} levels deep")],
            filename,
        ) from None
    return value, lines


def line_for(lines: LineMap, path: Path_) -> int | None:
    """The line of `path`, or of its nearest ancestor that has one."""
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


loc_text = _loc_text
