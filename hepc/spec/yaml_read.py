"""YAML → plain data plus a map from each path to its `file:line:col` (ruamel, YAML 1.2, bounded)."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from hepc.errors import Problem, SpecError
from hepc.spec.paths import Path_, dotted

if TYPE_CHECKING:
    from hepc.spec.models import Spec


class _Plain:
    """Converts ruamel round-trip nodes into dict/list/scalars, recording each path's location."""

    def __init__(self, filename: str):
        self.filename = filename
        self.locations: dict[Path_, str] = {}
        self.problems: list[Problem] = []

    def at(self, line: int, col: int) -> str:
        return f"{self.filename}:{line + 1}:{col + 1}"

    def _position(self, node: Any, getter: str, arg: Any) -> tuple[int, int] | None:
        try:
            pos = getattr(node.lc, getter)(arg)
        except (AttributeError, KeyError, IndexError, TypeError):
            return None  # e.g. a key that came from a YAML merge (<<)
        return pos if isinstance(pos, tuple) and None not in pos else None

    def _tag_problem(self, node: Any, path: Path_) -> bool:
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag and tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            where = self.locations.get(path, self.filename)
            self.problems.append(Problem(where, dotted(path), f"YAML tag {tag} is not allowed (tags are not allowed)"))
            return True
        return False

    def convert(self, node: Any, path: Path_) -> Any:
        if isinstance(node, (dict, list)) and self._tag_problem(node, path):
            return None
        if isinstance(node, dict):
            out = {}
            for k in node:
                pos = self._position(node, "key", k)
                where = self.at(*pos) if pos else self.locations.get(path, self.filename)
                if not isinstance(k, str):
                    self.problems.append(Problem(where, dotted(path), f"keys must be strings (got {k!r})"))
                    continue
                self.locations[path + (k,)] = where
                out[k] = self.convert(node[k], path + (k,))
            return out
        if isinstance(node, list):
            out_list = []
            for i, item in enumerate(node):
                pos = self._position(node, "item", i)
                self.locations[path + (i,)] = self.at(*pos) if pos else self.locations.get(path, self.filename)
                out_list.append(self.convert(item, path + (i,)))
            return out_list
        if node is None or isinstance(node, (bool, int, float, str)):
            # ruamel returns str/int/float subclasses (ScalarFloat, …); keep plain types for strict models.
            if isinstance(node, bool) or node is None:
                return node
            for t in (int, float, str):
                if isinstance(node, t):
                    return t(node)
        if isinstance(node, (_dt.date, _dt.datetime)):
            return str(node)  # a string field will accept it; anything else reports a type error
        where = self.locations.get(path, self.filename)
        self.problems.append(
            Problem(where, dotted(path), f"unsupported YAML value {type(node).__name__} (tags are not allowed)")
        )
        return None


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


# Bounds on what a spec may expand to: YAML aliases can make a few lines mean billions of nodes
# ("billion laughs"), and deep nesting would exhaust the (recursive) composer. MAX_SPEC_BYTES also
# bounds what load_spec reads of a spec file (at most one byte more, to tell that it is too large).
MAX_SPEC_BYTES = 1 << 20
MAX_NODES = 100_000  # after expanding aliases
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 1000  # Python refuses to convert integers of more than 4300 digits


def _check_bounds(text: str, filename: str) -> None:
    """Walk the YAML event stream (iterative, nothing built) and refuse oversized documents."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([Problem(filename, "", f"spec is too large ({len(text):,} characters; at most {MAX_SPEC_BYTES:,})")])
    from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

    sizes: dict[Any, int] = {}  # anchor → nodes it expands to
    stack: list[list] = [[None, 0]]  # [anchor, nodes so far] per open collection
    total = 0

    def fail(event: Any, message: str) -> None:
        mark = event.start_mark
        raise SpecError([Problem(f"{filename}:{mark.line + 1}:{mark.column + 1}", "", message)])

    for event in _yaml().parse(text):
        if isinstance(event, CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) - 1 > MAX_DEPTH:
                fail(event, f"nesting deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(event, CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            stack[-1][1] += n
            continue
        if isinstance(event, ScalarEvent):
            n = 1
            if event.style is None and len(event.value) > MAX_NUMBER_CHARS and event.value.lstrip("+-")[:1].isdigit():
                fail(event, f"number too long ({len(event.value):,} characters)")
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                fail(event, f"alias *{event.anchor} refers to a collection that contains it (recursive)")
            n = sizes.get(event.anchor, 1)
        else:
            continue
        stack[-1][1] += n
        total = sum(frame[1] for frame in stack)
        if total > MAX_NODES:
            fail(event, f"document expands to more than {MAX_NODES:,} values (too many or too nested aliases)")


def read_yaml(text: str, filename: str) -> tuple[Any, dict[Path_, str]]:
    """Parse YAML text into plain data and a map path → `file:line:col`."""
    try:
        _check_bounds(text, filename)
        node = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        msg = " ".join(str(x) for x in (e.context, e.problem) if x)
        msg = msg.replace("\n", " ").strip() or "invalid YAML"
        raise SpecError([Problem(where, "", f"YAML syntax error: {msg}")]) from None
    except YAMLError as e:
        raise SpecError([Problem(filename, "", f"YAML error: {(str(e).splitlines() or ['invalid'])[0]}")]) from None
    except RecursionError:
        raise SpecError([Problem(filename, "", f"nesting deeper than {MAX_DEPTH} levels")]) from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the YAML library cannot construct
        raise SpecError([Problem(filename, "", f"unreadable YAML value: {str(e)[:200]}")]) from None
    plain = _Plain(filename)
    try:
        data = plain.convert(node, ())
    except RecursionError:
        raise SpecError([Problem(filename, "", "recursive or too deeply nested document")]) from None
    if plain.problems:
        raise SpecError(plain.problems)
    return data, plain.locations


def to_yaml(spec: Spec) -> str:
    """The resolved spec (defaults filled in) as YAML text."""
    import io

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    y.dump(spec.model_dump(mode="json", exclude_none=True), buf)
    return buf.getvalue()
