"""Showing journal values without running them: a symbolic reading of the pickle opcodes.

``pickle.loads`` on a journal blob can run any code the blob names (``os.system`` through
``REDUCE``), so read-only tools (``list``, ``show``, ``doctor``, and a UI later) never call
it. They render a value from its opcode stream instead (:func:`pickletools.genops` only
parses): ints, strings, containers and ``None`` come out as themselves, anything built by
calling something (``REDUCE``, ``NEWOBJ``, ``BUILD``, ``INST`` ...) as text naming what
*would* be called, e.g. ``shop.Order(id=3)`` or ``datetime.datetime(b'...')``. Nothing is
imported and nothing is called. Input is untrusted: the reading is bounded in opcodes, depth
and output length, and any malformed stream becomes a short ``<...>`` note.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator
from typing import Any

from ._serialization import codec_of, payload_of

MAX_OPS = 20_000
MAX_DEPTH = 12


class _Sym:
    """Something the pickle would construct by calling code: rendered, never built."""

    __slots__ = ("args", "func", "state")

    def __init__(self, func: Any, args: Any = (), state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state


class _Global:
    __slots__ = ("name",)

    def __init__(self, module: str, name: str) -> None:
        self.name = f"{module}.{name}" if module not in ("builtins", "__builtin__") else name


class _Mark:
    pass


class _List(list[Any]):
    pass


class _Dict(dict[Any, Any]):
    pass


class _Set:
    __slots__ = ("frozen", "items")

    def __init__(self, items: list[Any], frozen: bool = False) -> None:
        self.items, self.frozen = items, frozen


class _Unhashable:
    """A dict key that the real unpickler would build by a call: kept as a key by identity."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_MARK = _Mark()


class PreviewError(Exception):
    pass


def _key(v: Any) -> Any:
    try:
        hash(v)
    except TypeError:
        return _Unhashable(v)
    return v


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise PreviewError("no MARK")


def _ops(payload: bytes) -> Iterator[tuple[str, Any]]:
    for n, (op, arg, _pos) in enumerate(pickletools.genops(payload)):
        if n >= MAX_OPS:
            raise PreviewError(f"more than {MAX_OPS} opcodes")
        yield op.name, arg


def read(payload: bytes) -> Any:
    """The symbolic value of a pickle stream (containers of plain values and :class:`_Sym`)."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for name, arg in _ops(payload):
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise PreviewError("unbalanced stream")
            return stack[0]
        if name in (
            "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
            "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
            "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        ):  # fmt: skip
            stack.append(arg)
        elif name == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            stack.append(_Sym(_Global("pickle", "PickleBuffer")))
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            _pop_mark(stack)
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "EMPTY_LIST":
            stack.append(_List())
        elif name == "LIST":
            stack.append(_List(_pop_mark(stack)))
        elif name == "APPEND":
            v = stack.pop()
            _append(stack[-1], [v])
        elif name == "APPENDS":
            items = _pop_mark(stack)
            _append(stack[-1], items)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "EMPTY_DICT":
            stack.append(_Dict())
        elif name == "DICT":
            items = _pop_mark(stack)
            stack.append(_Dict((_key(items[i]), items[i + 1]) for i in range(0, len(items) - 1, 2)))
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            _setitems(stack[-1], [k, v])
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            _setitems(stack[-1], items)
        elif name == "EMPTY_SET":
            stack.append(_Set([]))
        elif name == "ADDITEMS":
            items = _pop_mark(stack)
            target = stack[-1]
            if not isinstance(target, _Set):
                raise PreviewError("ADDITEMS on a non-set")
            target.items.extend(items)
        elif name == "FROZENSET":
            stack.append(_Set(_pop_mark(stack), frozen=True))
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise PreviewError("memo miss")
            stack.append(memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name == "GLOBAL":
            module, _, qual = str(arg).partition(" ")
            stack.append(_Global(module, qual))
        elif name == "STACK_GLOBAL":
            qual, module = stack.pop(), stack.pop()
            stack.append(_Global(str(module), str(qual)))
        elif name in ("EXT1", "EXT2", "EXT4"):
            stack.append(_Global("copyreg", f"extension[{arg}]"))
        elif name in ("PERSID", "BINPERSID"):
            if name == "BINPERSID":
                stack.pop()
            stack.append(_Sym(_Global("pickle", "persistent_id")))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            stack.append(_Sym(func, args))
        elif name == "NEWOBJ":
            args, cls = stack.pop(), stack.pop()
            stack.append(_Sym(cls, args))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(_Sym(cls, (*args, kwargs) if kwargs else args))
        elif name == "OBJ":
            items = _pop_mark(stack)
            stack.append(_Sym(items[0], tuple(items[1:])) if items else None)
        elif name == "INST":
            module, _, qual = str(arg).partition(" ")
            stack.append(_Sym(_Global(module, qual), tuple(_pop_mark(stack))))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if isinstance(target, _Sym):
                target.state = state
            else:
                stack[-1] = _Sym(_Global("builtins", "object"), (target,), state)
        else:
            raise PreviewError(f"opcode {name}")
    raise PreviewError("no STOP")


def _append(target: Any, items: list[Any]) -> None:
    if isinstance(target, _List):
        target.extend(items)
    elif isinstance(target, _Sym):  # list subclass: rendered with its items
        target.state = _List([*(target.state if isinstance(target.state, list) else []), *items])
    else:
        raise PreviewError("APPEND on a non-list")


def _setitems(target: Any, items: list[Any]) -> None:
    pairs = [(_key(items[i]), items[i + 1]) for i in range(0, len(items) - 1, 2)]
    if isinstance(target, _Dict):
        target.update(pairs)
    elif isinstance(target, _Sym):
        target.state = _Dict({**(target.state if isinstance(target.state, dict) else {}), **dict(pairs)})
    else:
        raise PreviewError("SETITEM on a non-dict")


# --------------------------------------------------------------------------- rendering


def render(v: Any, limit: int = 200) -> str:
    """Text for a symbolic value, at most about ``limit`` characters."""
    out: list[str] = []
    budget = [limit]

    def emit(s: str) -> None:
        if budget[0] > 0:
            out.append(s[: budget[0]])
        budget[0] -= len(s)

    _render(v, emit, budget, 0, set())
    text = "".join(out)
    return text if budget[0] >= 0 else text[: max(0, limit - 3)] + "..."


def _render(v: Any, emit: Any, budget: list[int], depth: int, seen: set[int]) -> None:
    if budget[0] <= 0:
        return
    if depth > MAX_DEPTH or id(v) in seen:
        emit("...")
        return
    if isinstance(v, _Unhashable):
        v = v.value
    if isinstance(v, _Global):
        emit(v.name)
        return
    if v is None or isinstance(v, (bool, int, float, str, bytes, bytearray)):
        emit(repr(v))
        return
    seen = seen | {id(v)}

    def seq(items: Any, open_: str, close: str, one: bool = False) -> None:
        emit(open_)
        for i, item in enumerate(items):
            if i:
                emit(", ")
            _render(item, emit, budget, depth + 1, seen)
            if budget[0] <= 0:
                return
        emit("," + close if one and len(items) == 1 else close)

    if isinstance(v, _List):
        seq(v, "[", "]")
    elif isinstance(v, tuple):
        seq(v, "(", ")", one=True)
    elif isinstance(v, _Set):
        if not v.items:
            emit("frozenset()" if v.frozen else "set()")
        else:
            seq(v.items, "frozenset({" if v.frozen else "{", "})" if v.frozen else "}")
    elif isinstance(v, _Dict):
        emit("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                emit(", ")
            _render(k, emit, budget, depth + 1, seen)
            emit(": ")
            _render(x, emit, budget, depth + 1, seen)
            if budget[0] <= 0:
                return
        emit("}")
    elif isinstance(v, _Sym):
        _render_call(v, emit, budget, depth, seen)
    else:
        emit(f"<{type(v).__name__}>")


def _render_call(v: _Sym, emit: Any, budget: list[int], depth: int, seen: set[int]) -> None:
    func = v.func
    name = func.name if isinstance(func, _Global) else None
    args = v.args if isinstance(v.args, tuple) else (v.args,)
    if name in ("copyreg._reconstructor", "copy_reg._reconstructor") and args:
        func, name, args = args[0], getattr(args[0], "name", None), ()
    elif name == "copyreg.__newobj__" and args:
        func, name, args = args[0], getattr(args[0], "name", None), args[1:]
    when = _datetime(name, args)
    if when is not None:
        emit(when)
        return
    if name in ("set", "frozenset") and len(args) == 1 and isinstance(args[0], _List):
        _render(_Set(list(args[0]), frozen=name == "frozenset"), emit, budget, depth, seen)
        return
    if name is None:
        _render(func, emit, budget, depth + 1, seen)
    else:
        emit(name)
    emit("(")
    first = True
    for a in args:
        if not first:
            emit(", ")
        first = False
        _render(a, emit, budget, depth + 1, seen)
    state = v.state
    if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
        state = state[1]  # (None, slots) from objects with __slots__
    if isinstance(state, _Dict):
        for k, x in state.items():
            if not first:
                emit(", ")
            first = False
            emit(f"{k}=" if isinstance(k, str) else "")
            _render(x, emit, budget, depth + 1, seen)
    elif state is not None:
        if not first:
            emit(", ")
        emit("state=")
        _render(state, emit, budget, depth + 1, seen)
    emit(")")


def _datetime(name: str | None, args: tuple[Any, ...]) -> str | None:
    """``datetime.datetime(2024, 1, 2, 3, 4, 5)`` from the packed bytes its pickle carries."""
    if name not in ("datetime.datetime", "datetime.date", "datetime.time") or not args:
        return None
    raw = args[0]
    if isinstance(raw, str):  # protocols 0-2 carry the bytes as latin-1 text
        raw = raw.encode("latin-1", "replace")
    if not isinstance(raw, bytes):
        return None
    sizes = {"datetime.datetime": 10, "datetime.date": 4, "datetime.time": 6}
    if len(raw) != sizes[name]:
        return None
    if name == "datetime.time":
        parts = [raw[0], raw[1], raw[2], int.from_bytes(raw[3:6], "big")]
    else:
        parts = [raw[0] * 256 + raw[1], raw[2], raw[3]]
        if name == "datetime.datetime":
            parts += [raw[4], raw[5], raw[6], int.from_bytes(raw[7:10], "big")]
    while len(parts) > 3 and parts[-1] == 0:
        parts.pop()
    tz = ", tzinfo=..." if len(args) > 1 else ""
    return f"{name}({', '.join(map(str, parts))}{tz})"


# --------------------------------------------------------------------------- blobs


def preview(blob: bytes | None, limit: int = 200) -> str:
    """A bounded, safe text for a framed journal blob ('' for NULL); never unpickles."""
    if blob is None:
        return ""
    blob = bytes(blob)
    codec = codec_of(blob)
    payload = payload_of(blob)
    if codec is None or payload is None:
        return f"<{len(blob)} bytes, no frame>"
    try:
        return render(read(payload), limit)
    except Exception as exc:  # malformed or hostile stream: say so, briefly
        return f"<{codec}, {len(payload)} bytes: unreadable ({type(exc).__name__})>"


_NOT_PLAIN = object()


def _plain(v: Any, depth: int = 0) -> Any:
    """The JSON-compatible value of plain data (nothing built by a call), else ``_NOT_PLAIN``."""
    if depth > MAX_DEPTH:
        return _NOT_PLAIN
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (_List, tuple)):
        items = [_plain(x, depth + 1) for x in v]
        return _NOT_PLAIN if any(x is _NOT_PLAIN for x in items) else items
    if isinstance(v, _Dict):
        out = {}
        for k, x in v.items():
            px = _plain(x, depth + 1)
            if not isinstance(k, str) or px is _NOT_PLAIN:
                return _NOT_PLAIN
            out[k] = px
        return out
    return _NOT_PLAIN


def plain_value(blob: bytes | None) -> tuple[bool, Any]:
    """``(True, value)`` when a blob holds only JSON-like plain data, read without unpickling."""
    if blob is None:
        return True, None
    payload = payload_of(bytes(blob))
    if payload is None:
        return False, None
    try:
        v = _plain(read(payload))
    except Exception:
        return False, None
    return (False, None) if v is _NOT_PLAIN else (True, v)


def live_call_args(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int = 80) -> str:
    """A bounded rendering of a live call's arguments (the code's own values), for messages."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = 40
    text = ", ".join([short.repr(a) for a in args] + [f"{k}={short.repr(v)}" for k, v in kwargs.items()])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call_args(blob: bytes | None, limit: int = 200) -> str:
    """``(args, kwargs)`` blobs rendered as a call's argument list: ``1, 'a', k=2``."""
    if blob is None:
        return ""
    payload = payload_of(bytes(blob))
    if payload is None:
        return preview(blob, limit)
    try:
        v = read(payload)
    except Exception:
        return preview(blob, limit)
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], tuple) and isinstance(v[1], _Dict):
        parts = [render(a, limit) for a in v[0]]
        parts += [f"{k}={render(x, limit)}" for k, x in v[1].items()]
        text = ", ".join(parts)
        return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."
    return render(v, limit)
