"""A YAML loader for suites: plain data only, with the line of every key and list item.

A suite is data, never code (house style rule 5). ``yaml.SafeLoader`` already refuses the
``python/*`` tags, but only when it constructs them. ``PlainLoader`` rejects every tag outside
the core schema while composing, before any constructor runs, and adds the guards that a file
from a stranger needs: a size cap, UTF-8 text only, one document, no duplicate keys, a depth cap
and a cap on the size of the document once aliases are expanded (billion-laughs).

Plain scalars follow the YAML 1.2 core schema instead of PyYAML's YAML 1.1 defaults. Under 1.1,
``2:4`` is the base-60 integer 124, ``on``/``no`` are booleans and ``2024-01-01`` is a date;
here they are strings, and ``1e-3`` is a float as a user expects.

Every mapping is loaded as a ``LineDict`` and every sequence as a ``LineList``. Both know the
1-based line where they start and the line of each key or item, so that the suite checker can
point at the line a problem is on. An item or value that is an alias reports the line of its
anchor, because an alias and its anchor are the same node.
"""
from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a suite is a page of text; anything bigger is the wrong file
MAX_DEPTH = 32  # nested lists and mappings, aliases expanded
MAX_NODES = 100_000  # values in the document once aliases are expanded

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP, MERGE = _CORE + "seq", _CORE + "map", _CORE + "merge"
_ALLOWED = {ScalarNode: {STR, INT, FLOAT, BOOL, NULL, MERGE}, SequenceNode: {SEQ}, MappingNode: {MAP}}
_KIND = {ScalarNode: "a scalar", SequenceNode: "a list", MappingNode: "a mapping"}

YamlProblem = tuple[Optional[int], str]  # (1-based line or None for the whole file, message)


class YamlError(Exception):
    """The text is not a single plain-data YAML document.

    Attributes:
        problems: (line, message) pairs; line is 1-based, or None for whole-file problems
            (unreadable, too large, binary, empty).
    """

    def __init__(self, problems: list[YamlProblem]):
        self.problems = sorted(problems, key=lambda p: p[0] or 0)
        super().__init__("; ".join(f"line {ln}: {m}" if ln else m for ln, m in self.problems))


class LineDict(dict):
    """A mapping that knows its own line (``line``) and the line of each key (``key_lines``)."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class LineList(list):
    """A list that knows its own line (``line``) and the line of each item (``item_lines``)."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


@dataclass(frozen=True)
class Document:
    """A loaded file: its text, the data, and the line where the data starts."""

    text: str
    data: Any
    line: int


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class PlainLoader(yaml.SafeLoader):
    """A ``SafeLoader`` that composes only core-schema nodes and builds ``LineDict``/``LineList``.

    Problems that do not stop parsing (bad tags, duplicate keys) are collected in
    ``self.problems`` so that one run reports them all; ``loads`` raises them together.
    """

    # Own table, filled below: PyYAML's YAML 1.1 resolvers are not inherited.
    yaml_implicit_resolvers: dict = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[YamlProblem] = []
        self._depth = 0

    # -- composing: tags and depth are checked here, before anything is constructed --

    def compose_scalar_node(self, anchor: str | None) -> Node:
        node = super().compose_scalar_node(anchor)
        self._check_tag(node)
        return node

    def compose_sequence_node(self, anchor: str | None) -> Node:
        return self._nested(super().compose_sequence_node, anchor)

    def compose_mapping_node(self, anchor: str | None) -> Node:
        return self._nested(super().compose_mapping_node, anchor)

    def _nested(self, compose: Any, anchor: str | None) -> Node:
        # The composer recurses once per level; stopping here also keeps a file of ten
        # thousand '[' from exhausting Python's stack.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlError([(line, f"nested deeper than {MAX_DEPTH} levels")])
            node = compose(anchor)
        finally:
            self._depth -= 1
        self._check_tag(node)
        return node

    def _check_tag(self, node: Node) -> None:
        tag, kind = node.tag, type(node)
        if not any(tag in tags for tags in _ALLOWED.values()):
            self.problems.append((_line(node), (
                f"tag '{_show_tag(tag)}' is not allowed: a suite is plain data (strings, numbers, "
                "booleans, lists, mappings); refer to methods and models by their registered names")))
        elif tag not in _ALLOWED[kind]:
            self.problems.append((_line(node), f"tag '{_show_tag(tag)}' cannot be applied to {_KIND[kind]}"))
        elif kind is ScalarNode and tag not in (STR, MERGE):
            # An explicit '!!int abc' would make the constructor raise; say it here instead.
            if self.resolve(ScalarNode, node.value, (True, False)) != tag:
                self.problems.append((_line(node), f"'{node.value}' is not a valid {_show_tag(tag)}"))

    # -- constructing: plain dicts and lists that carry their lines --

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a scalar the regexes let through; keep the line
            raise yaml.constructor.ConstructorError(None, None, str(exc), node.start_mark) from exc

    def _construct_map(self, node: MappingNode) -> Iterator[LineDict]:
        data = LineDict(_line(node))
        yield data  # filled afterwards, so an alias to a parent cannot recurse forever
        # Merged keys ('<<: *base') may be overridden; only keys written here can be duplicates.
        own = {id(k) for k, _ in node.value if k.tag != MERGE}
        self.flatten_mapping(node)
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = _line(key_node)
            if not isinstance(key_node, ScalarNode):
                self.problems.append((line, "a mapping key must be a plain value, not a list or mapping"))
                continue
            key = self.construct_object(key_node)
            if id(key_node) in own:
                if key in first:
                    self.problems.append((line, f"duplicate key '{key}' (first at line {first[key]})"))
                    continue
                first[key] = line
            data[key] = self.construct_object(value_node)
            data.key_lines[key] = line

    def _construct_seq(self, node: SequenceNode) -> Iterator[LineList]:
        data = LineList(_line(node))
        yield data
        for child in node.value:
            data.append(self.construct_object(child))
            data.item_lines.append(_line(child))


# YAML 1.2 core schema scalars. Integers are capped at 64 digits because Python refuses to
# convert longer digit strings; a longer one stays a string and fails the suite's type check.
PlainLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
PlainLoader.add_implicit_resolver(
    INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]{0,63})|0o[0-7]{1,64}|0x[0-9a-fA-F]{1,64})$"),
    list("-+0123456789"))
PlainLoader.add_implicit_resolver(FLOAT, re.compile(
    r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
PlainLoader.add_implicit_resolver(NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
PlainLoader.add_implicit_resolver(MERGE, re.compile(r"^(?:<<)$"), ["<"])
PlainLoader.add_constructor(MERGE, PlainLoader.construct_scalar)  # '<<' anywhere but a key is text
PlainLoader.add_constructor(MAP, PlainLoader._construct_map)
PlainLoader.add_constructor(SEQ, PlainLoader._construct_seq)


def _check_expansion(root: Node) -> None:
    """Raise if the document, aliases expanded, is deeper than MAX_DEPTH or bigger than MAX_NODES.

    The constructor shares aliased objects, so a billion-laughs file loads in microseconds;
    the danger is every later walk over it. Sizes are memoized per node, so this check costs
    one visit per distinct node.
    """
    too_deep = f"nested deeper than {MAX_DEPTH} levels once aliases are expanded"
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (values when expanded, collection height)
    active: set[int] = set()

    def visit(node: Node, level: int) -> tuple[int, int]:  # level: collections above node
        key = id(node)
        if key in memo:
            size, height = memo[key]
        elif isinstance(node, ScalarNode):
            size, height = 1, 0
        else:
            if key in active:
                raise YamlError([(_line(node), "an alias refers to a list or mapping that contains it")])
            if level >= MAX_DEPTH:
                raise YamlError([(_line(node), too_deep)])
            active.add(key)
            pairs = node.value if isinstance(node, SequenceNode) else [n for kv in node.value for n in kv]
            size, height = 1, 0
            for child in pairs:
                s, h = visit(child, level + 1)
                size, height = size + s, max(height, h)
                if size > MAX_NODES:
                    raise YamlError([(_line(node), (
                        f"more than {MAX_NODES} values once aliases are expanded "
                        "(an alias bomb?); write the suite out without nested aliases"))])
            height += 1
            active.discard(key)
        memo[key] = (size, height)
        if level + height > MAX_DEPTH:
            raise YamlError([(_line(node), too_deep)])
        return size, height

    visit(root, 0)


def _syntax_problem(exc: yaml.YAMLError, text: str) -> YamlProblem:
    """One line for a PyYAML error: its line, then the problem and where the context began."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return line, f"character #x{exc.character:04x} is not allowed in YAML text"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return None, f"YAML error: {exc}"
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    if exc.context == "expected a single document in the stream":
        return line, "a suite is one YAML document, but another one starts here ('---')"
    problem = exc.problem or exc.context or "invalid YAML"
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces; replace the tab)"
    kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    message = f"{kind}: {problem}"
    if exc.problem and exc.context and exc.context_mark and exc.context_mark is not mark:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return line, message


def loads(text: str) -> Document:
    """Parse one YAML document of plain data; raise YamlError listing every problem found."""
    loader = None
    try:
        loader = PlainLoader(text)  # the reader checks for unprintable characters right here
        node = loader.get_single_node()
        if loader.problems:
            raise YamlError(loader.problems)
        if node is None:
            raise YamlError([(None, "empty file: a suite needs at least 'name', 'models' and 'methods'")])
        _check_expansion(node)
        data = loader.construct_document(node)
        if loader.problems:
            raise YamlError(loader.problems)
        return Document(text, data, _line(node))
    except yaml.YAMLError as exc:
        raise YamlError([_syntax_problem(exc, text)]) from exc
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a suite file as UTF-8 text, refusing big, binary or non-UTF-8 files before parsing."""
    too_big = f"file is larger than {MAX_BYTES // (1 << 20)} MiB; a suite is a short text file"
    try:
        if os.stat(path).st_size > MAX_BYTES:
            raise YamlError([(None, too_big)])
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # stat says 0 for /dev/zero and pipes; cap the read too
    except OSError as exc:
        raise YamlError([(None, f"cannot read file: {exc.strerror or exc}")]) from exc
    if len(raw) > MAX_BYTES:
        raise YamlError([(None, too_big)])
    if b"\0" in raw:
        raise YamlError([(None, "binary file (it contains NUL bytes); a suite is UTF-8 text")])
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise YamlError([(line, message)]) from exc


def load_file(path: str | os.PathLike[str]) -> Document:
    """``read_text`` then ``loads``: the checked text and its data with line numbers."""
    return loads(read_text(path))
