"""Avro schema resolution compiled into a plan the native kernel runs on a value's bytes.

The kernel (``native/src/avro.rs``) does not resolve schemas: for each (writer, reader) pair
:func:`compile_plan` walks both schemas as fastavro's ``schemaless_reader`` resolves them (its
``read_data``, ``match_schemas``, ``match_types``, ``read_record`` and ``read_union``, ported
here rule for rule) and writes what to do with the writer's bytes: read or skip each value by
its writer type, and put what the reader sees at a mapped field path or the time field
(promoted int/long to float, an enum symbol, a reader default for a field the writer lacks,
through a renamed field's alias) into that path's slot. Only the mapped paths need values; the
rest is read just far enough to be checked and skipped.

Where fastavro's answer is not a plain value the kernel can hold - a record, map, array,
bytes or fixed at a mapped path, a path through a map, a union branch or enum symbol that does
not resolve, a field without a default - the plan says ``unsure`` there, and a record reaching
it goes to :meth:`Classifier.locate`, which stays the definition. A schema the plan does not
express at all (logical types, which fastavro converts and may refuse; a reader field matched
twice) has no plan (``None``): all its records go to Python.

A plan is a list of ``(kind, slot or -1, arg)`` tuples (see ``plan_at`` in
``native/src/lib.rs``).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["Unsupported", "compile_plan", "slot_paths"]

_PRIMITIVES: Final = frozenset(
    ("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_NAMED: Final = frozenset(("record", "error", "enum", "fixed"))
# fastavro's AVRO_TYPES
_AVRO_TYPES: Final = _PRIMITIVES | _NAMED | frozenset(
    ("array", "map", "union", "request", "error_union"))
_PROMOTIONS: Final = {"int": ("long", "float", "double"), "long": ("float", "double"),
                      "float": ("double",), "string": ("bytes",), "bytes": ("string",)}
_INT64: Final = 2**63
#: The most operations one plan may hold: named types are written out where they are used, so a
#: schema that nests references can make a plan far larger than its text (its records go to
#: Python instead).
MAX_OPS: Final = 20_000
UNSURE: Final = ("unsure", -1, None)

Op = tuple[str, int, Any]


class Unsupported(Exception):  # noqa: N818 - a schema the plan does not express
    """The schema pair needs something a plan cannot say; its records go to Python."""


class _Node:
    """The mapped paths below one point of the decoded value."""

    __slots__ = ("slot", "children")

    def __init__(self) -> None:
        self.slot = -1
        self.children: dict[str, _Node] = {}


def slot_paths(columns: list[str], time_field: str) -> list[str]:
    """The kernel's slots: each distinct path of the columns, then the time field's (as
    ``Kernel.__new__`` numbers them)."""
    return list(dict.fromkeys([*columns, time_field]))


def _tree(paths: list[str]) -> _Node:
    root = _Node()
    for slot, path in enumerate(paths):
        node = root
        for part in path.split("."):
            node = node.children.setdefault(part, _Node())
        node.slot = slot
    return root


def compile_plan(writer: dict[str, Any], reader: dict[str, Any] | None,
                 paths: list[str]) -> list[Op] | None:
    """The plan for values written with ``writer`` and read as ``reader`` (None: the writer
    alone, no resolution), capturing ``paths`` (slot order); None when no plan expresses it."""
    if reader == writer:
        reader = None  # as fastavro's schemaless_reader: no resolution
    try:
        return _Compiler(writer, reader).read(writer, reader, _tree(paths))
    except (Unsupported, KeyError, TypeError, ValueError, RecursionError):
        return None


def _kind(schema: Any) -> str:
    """fastavro's extract_record_type."""
    if isinstance(schema, dict):
        return str(schema["type"])
    if isinstance(schema, list):
        return "union"
    return str(schema)


class _Compiler:
    def __init__(self, writer: dict[str, Any], reader: dict[str, Any] | None) -> None:
        self.writers: dict[str, Any] = writer.get("__named_schemas", {})
        self.readers: dict[str, Any] = ({} if reader is None
                                        else reader.get("__named_schemas", {}))
        self.ops = 0

    def grow(self) -> None:
        self.ops += 1
        if self.ops > MAX_OPS:
            raise Unsupported(f"a plan of more than {MAX_OPS} operations")

    # --- fastavro's match_types and match_schemas (raise_on_error=False: None) -------------

    def match_types(self, w: Any, r: Any) -> bool:
        if isinstance(w, list) or isinstance(r, list):
            return True
        if isinstance(w, dict) or isinstance(r, dict):
            return self.match_schemas(w, r) is not None
        if w == r or r in _PROMOTIONS.get(w, ()):
            return True
        ws, rs = self.writers.get(w), self.readers.get(r)
        if ws is not None and rs is not None:
            return self.match_types(ws, rs)
        return False

    def match_schemas(self, w: Any, r: Any) -> Any:
        if isinstance(w, list):
            return r
        if isinstance(r, list):
            return next((each for each in r if self.match_types(w, each)), None)
        w_type = w["type"] if isinstance(w, dict) else w
        r_type = r["type"] if isinstance(r, dict) else r
        if w_type == r_type == "map":
            return r if self.match_types(w["values"], r["values"]) else None
        if w_type == r_type == "array":
            return r if self.match_types(w["items"], r["items"]) else None
        if w_type in _NAMED and r_type in _NAMED:
            if w_type == r_type == "fixed" and w["size"] != r["size"]:
                return None
            w_name, r_name = w["name"].split(".")[-1], r["name"].split(".")[-1]
            aliases = r.get("aliases", [])
            if w_name == r_name or w["name"] in aliases or w_name in aliases:
                return r
            return None
        if w_type not in _AVRO_TYPES and r_type in _NAMED:
            return r["name"] if self.match_types(w_type, r["name"]) else None
        if w_type in _NAMED and r_type not in _AVRO_TYPES:
            found = self.readers.get(r_type)
            return found if found is not None and self.match_types(w, found) else None
        return r if self.match_types(w_type, r_type) else None

    # --- reading (fastavro's read_data) ------------------------------------------------------

    def read(self, w: Any, r: Any, node: _Node | None) -> list[Op]:
        """Ops reading a value of writer type ``w`` as reader type ``r`` (None: no
        resolution), its paths in ``node``."""
        self.grow()
        kind = _kind(w)
        if r is not None:
            r = self.match_schemas(w, r)
            if r is None:
                return [UNSURE]  # fastavro's SchemaResolutionError on every such value
        if isinstance(w, dict) and "logicalType" in w:
            raise Unsupported(f"logical type {w['logicalType']!r}")
        slot = -1 if node is None else node.slot
        deeper = node is not None and bool(node.children)
        r_kind = None if r is None else _kind(r)
        if kind not in _AVRO_TYPES:  # a named type's name
            if r is not None and not isinstance(r, str):
                raise Unsupported("a named writer type against an inline reader type")
            return self.read(self.writers[kind], None if r is None else self.readers.get(r),
                             node)
        if kind in ("union", "error_union"):
            return [("union", -1, [self.branch(each, r, node) for each in w])]
        if kind in ("record", "error", "request"):
            if slot >= 0:
                return [UNSURE]  # a record as a mapped value: Python says bad_field
            return self.record(w, r, node)
        if kind in ("array", "map"):
            if slot >= 0 or (deeper and kind == "map"):
                return [UNSURE]  # a list or dict as a value, or a path through a map
            inner = "items" if kind == "array" else "values"
            ops = self.read(w[inner], None if r is None else r[inner], None)
            if kind == "array" and _min_size(ops) == 0:
                raise Unsupported("array items of no bytes")
            return [(kind, -1, ops)]
        if kind == "enum":
            return [("enum", slot, self.symbols(w, r))]
        if kind == "fixed":
            return [UNSURE] if slot >= 0 else [("fixed", -1, int(w["size"]))]
        if kind == "null":
            return [("null", -1, None)]
        if kind == "boolean":
            return [("bool", slot, None)]
        if kind in ("int", "long"):
            return [("long", slot, r_kind in ("float", "double"))]
        if kind in ("float", "double"):
            return [(kind, slot, None)]
        if kind == "string":
            return [UNSURE] if slot >= 0 and r_kind == "bytes" else [("string", slot, None)]
        if kind == "bytes":
            if r_kind == "string":
                return [("string", slot, None)]  # decoded: UTF-8 checked
            return [UNSURE] if slot >= 0 else [("bytes", -1, None)]
        raise Unsupported(f"type {kind!r}")

    def branch(self, w: Any, r: Any, node: _Node | None) -> list[Op]:
        """A writer union's branch, as fastavro's read_union resolves it."""
        if r is None:
            return self.read(w, None, node)
        if isinstance(r, list):
            found = next((each for each in r if self.match_types(w, each)), None)
            return [UNSURE] if found is None else self.read(w, found, node)
        return self.read(w, r, node) if self.match_types(w, r) else [UNSURE]

    def symbols(self, w: dict[str, Any], r: Any) -> list[str | None]:
        """Each writer index's symbol as the reader reads it (fastavro's read_enum)."""
        if r is None:
            return list(w["symbols"])
        if not isinstance(r, dict):
            raise Unsupported("an enum against a reader name")
        known, default = r["symbols"], r.get("default")
        return [symbol if symbol in known else
                (default if default and isinstance(default, str) else None)
                for symbol in w["symbols"]]

    def record(self, w: dict[str, Any], r: Any, node: _Node | None) -> list[Op]:
        """fastavro's read_record: writer fields in order, read when the reader has them (by
        name or alias), else skipped; then the reader's defaults."""
        children = {} if node is None else node.children
        ops: list[Op] = []
        if r is None:
            for field in w["fields"]:
                ops += self.read(field["type"], None, children.get(field["name"]))
            return ops
        if not isinstance(r, dict):
            raise Unsupported("a record against a reader name")
        by_name = {f["name"]: f for f in r["fields"]}
        by_alias = {alias: f for f in r["fields"] for alias in f.get("aliases", [])}
        left = dict(by_name)
        for field in w["fields"]:
            found = by_name.get(field["name"], by_alias.get(field["name"]))
            if found is None:
                ops += self.skip(field["type"])
                continue
            if found["name"] not in left:
                raise Unsupported(f"reader field {found['name']!r} matched twice")
            del left[found["name"]]
            ops += self.read(field["type"], found["type"], children.get(found["name"]))
        for name, field in left.items():
            if "default" not in field:
                return [*ops, UNSURE]  # SchemaResolutionError on every value
            ops += _constants(children.get(name), field["default"])
        return ops

    # --- skipping (fastavro's skip_data) -----------------------------------------------------

    def skip(self, w: Any) -> list[Op]:
        self.grow()
        kind = _kind(w)
        if kind not in _AVRO_TYPES:
            return self.skip(self.writers[kind])
        if kind in ("union", "error_union"):
            return [("union", -1, [self.skip(each) for each in w])]
        if kind in ("record", "error", "request"):
            return [op for field in w["fields"] for op in self.skip(field["type"])]
        if kind == "array":
            ops = self.skip(w["items"])
            if _min_size(ops) == 0:
                raise Unsupported("array items of no bytes")
            return [("array", -1, ops)]
        if kind == "map":
            return [("map", -1, self.skip(w["values"]))]
        if kind == "enum":
            return [("long", -1, False)]  # skip_enum reads the index only
        if kind == "fixed":
            return [("fixed", -1, int(w["size"]))]
        if kind == "bytes":
            return [("bytes", -1, None)]
        return self.read(kind, None, None)  # a primitive: read, keep nothing


def _constants(node: _Node | None, value: Any) -> list[Op]:
    """A reader default, as fastavro puts it in the record (the schema's JSON as is), at the
    paths of ``node``."""
    if node is None:
        return []
    ops: list[Op] = []
    if node.slot >= 0:
        constant = _constant(value)
        if constant is None:
            return [UNSURE]
        ops.append(("const", node.slot, constant))
    if node.children and isinstance(value, dict):
        for name, child in node.children.items():
            if name in value:
                ops += _constants(child, value[name])
    return ops


def _constant(value: Any) -> tuple[str, Any] | None:
    if value is None:
        return ("null", None)
    if type(value) is bool:
        return ("bool", value)
    if type(value) is int:
        return ("int", value) if -_INT64 <= value < _INT64 else None
    if type(value) is float:
        return None if value != value else ("float", value)  # noqa: PLR0124 - NaN
    if type(value) is str:
        return ("str", value)
    return None  # a dict or list: Python's to judge


def _min_size(ops: list[Op]) -> int:
    """The fewest bytes ``ops`` read (an ``unsure`` counts as one: it reads none, but stops)."""
    sizes = {"null": 0, "const": 0, "float": 4, "double": 8}
    total = 0
    for kind, _, arg in ops:
        if kind == "fixed":
            total += int(arg)
        else:
            total += sizes.get(kind, 1)
    return total
