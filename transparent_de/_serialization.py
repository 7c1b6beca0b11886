"""Values in the journal: codec choice, framing, signing and argument fingerprints.

* **Codec.** ``pickle`` when it works (0.2 µs for an int), ``dill`` otherwise (lambdas,
  closures, classes defined in ``__main__``): dill costs 20-40x more and its import 30-40 ms,
  so it is imported only when pickle fails or a dill blob must be read. The codec is recorded
  in every blob's frame because ``pickle.loads`` cannot read dill output.
* **Code objects** inside dill values are stored by us, not by dill: ``marshal`` of the code
  plus the bytecode magic number of the interpreter that compiled it. dill 0.4.1 reads
  ``co_lnotab``, which CPython 3.15 removed, so it cannot pickle any function there; and code
  compiled by one CPython minor version crashes another (a segfault, or ``SystemError: unknown
  opcode``), so a journal resumed on another version refuses such a value with
  :class:`~transparent_de.errors.UnsupportedPythonError` instead of loading it.
* **Frame.** ``b"TD" | version | codec | flags | crc32 | [hmac-sha256] | payload``. A truncated
  or garbled blob is detected *before* any unpickler runs and raises
  :class:`~transparent_de.errors.CorruptJournalError`; it is never taken as "not done".
* **Signing.** With ``TRANSPARENT_DE_HMAC_KEY`` set, every blob carries an HMAC over its row
  identity and payload; a tampered, moved or unsigned blob is refused, never unpickled. The
  row identities are built by :func:`step_context`, :func:`flow_context` and
  :func:`signal_context` only, and values are made and read through a :class:`Codec`.
* **Fingerprint.** A hash of a canonical walk of the arguments, independent of hash seeds,
  set iteration order, dict insertion order and memory addresses, so a replay with equal
  arguments never trips the non-determinism check.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import io
import marshal
import math
import os
import pickle
import socket
import struct
import sys
import threading
import types
import zlib
from collections.abc import Callable
from importlib.util import MAGIC_NUMBER
from types import CodeType
from typing import Any

from .errors import CorruptJournalError, JournalKeyError, UnsupportedPythonError

MAGIC = b"TD"
FRAME_VERSION = 2
CODEC_PICKLE = ord("P")
CODEC_DILL = ord("D")
CODECS = {CODEC_PICKLE: "pickle", CODEC_DILL: "dill"}
#: Version 1 frames (still read): magic, version, codec, crc32; signed or not was not recorded.
_HEADER_V1 = struct.Struct(">2sBBI")
#: Version 2: magic, version, codec, flags, crc32 of the payload. The flags say whether an
#: HMAC follows, so a signed journal read without its key gets a clear error (not a CRC one).
_HEADER = struct.Struct(">2sBBBI")
FLAG_SIGNED = 0x01
_MAC_LEN = 32
_PROTOCOL = 5


class EncodeError(Exception):
    """Raised by :func:`encode` with the underlying reason; the engine adds flow context."""


def _dill() -> Any:
    import dill

    return dill


#: Process-local resources dill would happily "pickle" into a fresh, unrelated object.
_RESOURCES: tuple[type, ...] = (
    type(threading.Lock()),
    type(threading.RLock()),
    io.IOBase,
    socket.socket,
)


#: Which bytecode a code object in a dill value was compiled for: ("3.11", its magic number).
_CODE_VERSION = (f"{sys.version_info[0]}.{sys.version_info[1]}", MAGIC_NUMBER)


class _ForeignCode(Exception):
    """A dill value holds code compiled by another CPython version (see :func:`decode`)."""


def _load_code(version: tuple[str, bytes], data: bytes) -> CodeType:
    """Rebuild a code object written by :func:`_dill_dumps`; journals name it: keep its name."""
    if version[1] != MAGIC_NUMBER:
        raise _ForeignCode(version[0])
    code = marshal.loads(data)
    assert isinstance(code, CodeType)
    return code


def _dill_dumps(value: Any) -> bytes:
    dill = _dill()

    class _Strict(dill.Pickler):  # type: ignore[misc, name-defined]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, _RESOURCES):
                raise TypeError(f"cannot pickle {type(obj).__qualname__!r} object (a process-local resource)")
            if type(obj) is CodeType:
                return _load_code, (_CODE_VERSION, marshal.dumps(obj))
            return NotImplemented

    buf = io.BytesIO()
    _Strict(buf, protocol=_PROTOCOL).dump(value)
    return buf.getvalue()


def hmac_key() -> bytes | None:
    """The signing key from ``TRANSPARENT_DE_HMAC_KEY`` (None when unset or empty)."""
    key = os.environ.get("TRANSPARENT_DE_HMAC_KEY")
    return key.encode() if key else None


# --------------------------------------------------------------------------- row identities
#
# A signed blob is bound to the row it belongs to: the MAC covers this context, so a blob
# copied to another row, flow or step does not verify. Fields never contain NUL (flow ids
# refuse control characters, names are identifiers), so the encodings cannot collide.


def step_context(flow_id: str, step: int, kind: bytes) -> bytes:
    """A value of row ``step`` of the flow: ``kind`` is ``p`` (arguments), ``r`` (result), ``e`` (error)."""
    return f"{flow_id}\x00{step}\x00".encode() + kind


def flow_context(flow_id: str, module: str, qualname: str, method: str, declaring: str) -> bytes:
    """The flow instance blob, bound to the columns that choose what code ``recover()`` runs."""
    return "\x00".join((flow_id, "0", "flow", module, qualname, method, declaring)).encode()


def signal_context(flow_id: str, step_name: str, seq: int) -> bytes:
    """A signal's payload, bound to its row in ``signals``."""
    return f"{flow_id}\x00signal\x00{step_name}\x00{seq}".encode()


# --------------------------------------------------------------------------- frames


def encode(value: Any, context: bytes = b"", key: bytes | None = None) -> bytes:
    """Serialize ``value`` into a framed blob; ``context`` binds the blob to its row when signing."""
    try:
        payload = pickle.dumps(value, _PROTOCOL)
        codec = CODEC_PICKLE
    except Exception:
        try:
            payload = _dill_dumps(value)
        except Exception as exc:
            raise EncodeError(f"{type(exc).__name__}: {exc}") from exc
        codec = CODEC_DILL
    if key is None:
        return _HEADER.pack(MAGIC, FRAME_VERSION, codec, 0, zlib.crc32(payload)) + payload
    header = _HEADER.pack(MAGIC, FRAME_VERSION, codec, FLAG_SIGNED, zlib.crc32(payload))
    return header + _mac(key, context, header, payload) + payload


def _mac(key: bytes, context: bytes, header: bytes, payload: bytes) -> bytes:
    return hmac.new(key, context + header + payload, hashlib.sha256).digest()


def check(
    blob: bytes,
    context: bytes = b"",
    key: bytes | None = None,
    where: Callable[[], dict[str, Any]] | None = None,
) -> tuple[int, bytes]:
    """Verify a blob's frame, signature and CRC without unpickling it; returns (codec, payload).

    With ``key`` set, an unsigned blob is refused like a tampered one: whoever can write the
    file could otherwise drop the signature and have any pickle run.
    """
    # The common case first (unsigned journal, current frame, intact): one header unpack and
    # the CRC, nothing allocated; every other case, and every error, takes the full path.
    if key is None and len(blob) >= _HEADER.size and blob[:2] == MAGIC and blob[2] == FRAME_VERSION:
        _, _, codec, flags, crc = _HEADER.unpack_from(blob)
        if not flags & FLAG_SIGNED and codec in CODECS:
            payload = blob[_HEADER.size :]
            if zlib.crc32(payload) == crc:
                return codec, payload
    return _check(blob, context, key, where)


def _check(
    blob: bytes, context: bytes, key: bytes | None, where: Callable[[], dict[str, Any]] | None
) -> tuple[int, bytes]:
    def fields() -> dict[str, Any]:
        return where() if where else {}

    def corrupt(detail: str) -> CorruptJournalError:
        return CorruptJournalError(detail=detail, **fields())

    if len(blob) < _HEADER_V1.size or blob[:2] != MAGIC:
        raise corrupt(f"value blob of {len(blob)} bytes has no valid transparent_de frame")
    version = blob[2]
    if version == 1:
        _, _, codec, crc = _HEADER_V1.unpack_from(blob)
        header_len, signed = _HEADER_V1.size, key is not None
    elif version == FRAME_VERSION and len(blob) >= _HEADER.size:
        _, _, codec, flags, crc = _HEADER.unpack_from(blob)
        header_len, signed = _HEADER.size, bool(flags & FLAG_SIGNED)
        if signed and key is None:
            raise JournalKeyError(**fields())
        if key is not None and not signed:
            raise corrupt(
                "value is not signed although signing is on (TRANSPARENT_DE_HMAC_KEY is set): it was "
                "tampered with or written without the key; refused, never unpickled"
            )
    else:
        raise corrupt(f"value blob has an unknown frame version {version}")
    if codec not in CODECS:
        raise corrupt(f"value blob names an unknown codec {codec}")
    offset = header_len
    if signed:
        assert key is not None
        mac = blob[offset : offset + _MAC_LEN]
        offset += _MAC_LEN
        if not hmac.compare_digest(mac, _mac(key, context, blob[:header_len], blob[offset:])):
            raise corrupt(
                "HMAC signature mismatch: the value was tampered with, moved, or signed with another key"
            )
    payload = blob[offset:]
    if zlib.crc32(payload) != crc:
        raise corrupt("value blob failed its CRC check (truncated or garbled)")
    return codec, payload


def decode(
    blob: bytes,
    context: bytes = b"",
    key: bytes | None = None,
    where: Callable[[], dict[str, Any]] | None = None,
) -> Any:
    """Check a blob's frame (and signature) and unpickle it; any damage raises CorruptJournalError."""
    codec, payload = check(blob, context, key, where)
    try:
        if codec == CODEC_PICKLE:
            return pickle.loads(payload)
        return _dill().loads(payload)
    except _ForeignCode as exc:
        fields = where() if where else {}
        at = f"flow {fields['flow_id']}, step {fields['step']}: " if fields.get("flow_id") else ""
        here = _CODE_VERSION[0]
        raise UnsupportedPythonError(
            f"{at}the journaled value holds Python code (a lambda, nested function or local class, "
            f"stored with dill) compiled by CPython {exc}; this is CPython {here}, whose bytecode "
            f"differs, so it cannot be loaded. Resume this flow on CPython {exc}, or pass data rather "
            "than functions between steps.",
            **fields,
        ) from None
    except Exception as exc:
        raise CorruptJournalError(
            detail=f"cannot unpickle value ({CODECS[codec]}): {type(exc).__name__}: {exc}",
            **(where() if where else {}),
        ) from exc


def reseal(
    blob: bytes,
    old: bytes,
    new: bytes,
    key: bytes | None,
    where: Callable[[], dict[str, Any]] | None = None,
) -> bytes:
    """Verify ``blob`` under context ``old`` and return it signed for context ``new`` (same payload).

    A signal's payload moves from its ``signals`` row to the step that consumes it; re-signing
    keeps the bytes the sender wrote, so nothing is unpickled and pickled again.
    """
    codec, payload = check(blob, old, key, where)
    if key is None:
        return blob
    header = _HEADER.pack(MAGIC, FRAME_VERSION, codec, FLAG_SIGNED, zlib.crc32(payload))
    return header + _mac(key, new, header, payload) + payload


def codec_of(blob: bytes | None) -> str | None:
    if not blob or len(blob) < _HEADER_V1.size or blob[:2] != MAGIC:
        return None
    return CODECS.get(blob[3])


def is_signed(blob: bytes | None) -> bool | None:
    """Whether a blob says it carries an HMAC (None for version-1 frames, which do not say)."""
    if not blob or len(blob) < _HEADER.size or blob[:2] != MAGIC or blob[2] != FRAME_VERSION:
        return None
    return bool(blob[4] & FLAG_SIGNED)


def payload_of(blob: bytes) -> bytes | None:
    """The pickle bytes inside a frame, unverified (for the safe preview, which never unpickles)."""
    if len(blob) < _HEADER_V1.size or blob[:2] != MAGIC:
        return None
    if blob[2] == 1:
        return blob[_HEADER_V1.size :]  # a v1 signed blob starts with its MAC: the preview says so
    if blob[2] == FRAME_VERSION and len(blob) >= _HEADER.size:
        return blob[_HEADER.size + (_MAC_LEN if blob[4] & FLAG_SIGNED else 0) :]
    return None


class Codec:
    """Makes and reads every journal value under one signing policy (the key, or none).

    The engine and the tools hold one of these instead of passing keys around: with a key,
    every blob it reads is verified against its row identity before anything is unpickled,
    and every blob it writes is signed. There is no way around it in engine code.
    """

    __slots__ = ("key",)

    def __init__(self, key: bytes | None) -> None:
        self.key = key

    @property
    def signing(self) -> bool:
        return self.key is not None

    def seal(self, value: Any, context: bytes) -> bytes:
        return encode(value, context, self.key)

    def open(self, blob: bytes, context: bytes, where: Callable[[], dict[str, Any]] | None = None) -> Any:
        return decode(blob, context, self.key, where)

    def check(self, blob: bytes, context: bytes, where: Callable[[], dict[str, Any]] | None = None) -> None:
        check(blob, context, self.key, where)

    def reseal(
        self, blob: bytes, old: bytes, new: bytes, where: Callable[[], dict[str, Any]] | None = None
    ) -> bytes:
        return reseal(blob, old, new, self.key, where)


# --------------------------------------------------------------------------- fingerprints


def fingerprint(value: Any) -> str:
    """A 16-hex-digit digest of ``value``'s canonical form, stable across processes."""
    h = hashlib.blake2b(digest_size=8)
    fast = _fast_call_args(value)
    if fast is not None:
        h.update(fast)
    else:
        _walk(value, h.update, set(), 0)
    return h.hexdigest()


_FLAT = frozenset({type(None), bool, int, float, str, bytes})


def is_flat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Only immutable scalars (nothing a step could change in place)?"""
    flat = _FLAT
    return all(type(a) in flat for a in args) and all(type(v) in flat for v in kwargs.values())


def _fast_call_args(value: Any) -> bytes | None:
    """Canonical bytes of ``(args, kwargs)`` made only of flat values, or None.

    The common case on the step path (ids, numbers, strings) costs one ``pickle.dumps``
    (about 10x cheaper than the general walk). Pickle is canonical for these types (no
    hash-seed or identity dependence) once keyword arguments are sorted. Whether a value
    takes this path depends only on its types, so a value always gets the same digest.
    """
    if type(value) is not tuple or len(value) != 2:
        return None
    args, kwargs = value
    if type(args) is not tuple or type(kwargs) is not dict:
        return None
    flat = _FLAT
    for a in args:
        if type(a) not in flat:
            return None
    for k, v in kwargs.items():
        if type(k) is not str or type(v) not in flat:
            return None
    return b"P" + pickle.dumps((args, sorted(kwargs.items())), _PROTOCOL)


def _walk(v: Any, out: Callable[[bytes], Any], seen: set[int], depth: int) -> None:
    t = type(v)
    if v is None or t is bool:
        out(b"N" if v is None else (b"T" if v else b"F"))
    elif t is int:
        out(b"i" + str(v).encode() + b";")
    elif t is float:
        out(b"f" + (b"nan" if math.isnan(v) else float.hex(v).encode()) + b";")
    elif t is str:
        b = v.encode("utf-8", "surrogatepass")
        out(b"s" + str(len(b)).encode() + b":" + b)
    elif t is bytes or t is bytearray:
        out(b"b" + str(len(v)).encode() + b":" + bytes(v))
    elif depth > 40 or id(v) in seen:
        out(b"R" + _type_name(t))
    elif t in (list, tuple) or (isinstance(v, tuple) and not hasattr(v, "_fields")):
        seen.add(id(v))
        out(b"L" if t is list else b"U")
        for item in v:
            _walk(item, out, seen, depth + 1)
        out(b")")
        seen.discard(id(v))
    elif isinstance(v, dict):
        seen.add(id(v))
        items = sorted((_sub(k, seen, depth), _sub(x, seen, depth)) for k, x in v.items())
        out(b"D" + _type_name(t) + b"".join(k + b"=" + x + b"," for k, x in items) + b")")
        seen.discard(id(v))
    elif isinstance(v, (set, frozenset)):
        seen.add(id(v))
        out(b"S" + b",".join(sorted(_sub(x, seen, depth) for x in v)) + b")")
        seen.discard(id(v))
    elif (stable := _stable_form(v)) is not None:
        out(stable)
    elif isinstance(v, BaseException):
        # Type, args and notes: what a replayed exception reproduces exactly (an attribute that
        # does not pickle comes back as its repr, so attributes would not match).
        seen.add(id(v))
        out(b"X" + _type_name(t))
        _walk((v.args, getattr(v, "__notes__", None)), out, seen, depth + 1)
        seen.discard(id(v))
    elif callable(v) and hasattr(v, "__qualname__"):
        out(b"C" + getattr(v, "__module__", "?").encode() + b"." + v.__qualname__.encode())
    else:
        _walk_object(v, out, seen, depth)


def _stable_form(v: Any) -> bytes | None:
    """Canonical bytes for values whose state differs between CPython versions although the value
    does not (an enum member's ``vars`` gained ``_sort_order_`` in 3.11, ``timezone``'s reduce
    tuple grew, paths live in ``pathlib._local`` on 3.13, a module's namespace is the
    interpreter's): so a journal resumed by another supported version matches its calls."""
    if isinstance(v, enum.Enum):
        return b"E" + _type_name(type(v)) + str(v.name).encode() + b";"
    if isinstance(v, (datetime.date, datetime.time)):  # datetime is a date
        return b"T" + _type_name(type(v)) + v.isoformat().encode() + b";"
    if isinstance(v, datetime.timedelta):
        return b"t" + float.hex(v.total_seconds()).encode() + b";"
    if isinstance(v, datetime.tzinfo):
        return b"z" + _type_name(type(v)) + repr(v.utcoffset(None)).encode() + str(v).encode() + b";"
    if isinstance(v, types.ModuleType):
        return b"M" + v.__name__.encode() + b";"
    pathlib = sys.modules.get("pathlib")  # no path can exist before pathlib is imported
    if pathlib is not None and isinstance(v, pathlib.PurePath):
        return b"p" + type(v).__name__.encode() + b":" + str(v).encode("utf-8", "surrogateescape") + b";"
    return None


def _walk_object(v: Any, out: Callable[[bytes], Any], seen: set[int], depth: int) -> None:
    """Other objects: their type plus their state, never their repr (it may hold an address)."""
    t = type(v)
    out(b"O" + _type_name(t))
    seen.add(id(v))
    try:
        if hasattr(v, "_fields"):  # namedtuple
            state: Any = tuple(v)
        elif getattr(t, "__getstate__", None) not in (None, getattr(object, "__getstate__", None)):
            state = v.__getstate__()
        elif hasattr(v, "__dict__"):
            state = vars(v)
        elif hasattr(t, "__slots__"):
            state = {s: getattr(v, s, None) for s in t.__slots__ if isinstance(s, str)}
        else:
            try:
                state = v.__reduce_ex__(2)[1:3]
            except Exception:
                state = None
        _walk(state, out, seen, depth + 1)
    finally:
        seen.discard(id(v))


def _sub(v: Any, seen: set[int], depth: int) -> bytes:
    parts: list[bytes] = []
    _walk(v, parts.append, seen, depth + 1)
    return b"".join(parts)


def _type_name(t: type) -> bytes:
    return f"{t.__module__}.{t.__qualname__};".encode()
