"""What a PyTorch checkpoint file records, read without torch, without running its code, bounded.

Lightning's `last.ckpt` is a `torch.save` zip whose first member, `*/data.pkl`, holds `{"epoch": E,
"global_step": S, "state_dict": ..., "callbacks": {"ModelCheckpoint{...}": {"best_model_path": ...,
"best_k_models": {...}, "last_model_path": ...}}}`: its name carries no step, yet it is the newest
checkpoint of a run that keeps only its best numbered files, and it says which files those are.

A checkpoint may come from a bucket, so the file is data, never code, and reading it is bounded:
the pickle is interpreted by a small pure-Python unpickler in which every class is an inert stub,
tensors are never loaded, the memo and the number of opcodes are capped, dictionaries keep only
string keys (so no crafted hash collisions), sets are never built, and the whole read stops after
`TIME_LIMIT` seconds. Any failure means "no record" (the file itself is still archived or restored).
Only the first member is read, found through its local header (offset 0): a zip whose central
directory lists a million entries costs nothing more.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import struct
import time
from dataclasses import dataclass

MAX_PICKLE = 16 * 1024 * 1024  # bytes of data.pkl read at most (a 10 000-tensor model's is < 2 MiB)
MAX_OPS = 1_000_000  # opcodes interpreted at most
MAX_MEMO = 500_000  # memo entries at most
MAX_STEP = 10**15  # a step or epoch above this is no step (a hostile or corrupt record)
TIME_LIMIT = 2.0  # seconds one file may take
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50


@dataclass(frozen=True)
class TorchRecord:
    """What a torch-saved checkpoint dict records: its progress, and the files its ModelCheckpoint keeps."""

    step: int | None = None
    epoch: int | None = None
    kept: tuple[str, ...] = ()  # paths as recorded: best_model_path, best_k_models, last_model_path


NO_RECORD = TorchRecord()


def sane_step(value) -> int | None:
    """`value` if it is a step: a non-negative int of sane size (never a bool), else None."""
    return value if type(value) is int and 0 <= value <= MAX_STEP else None


def read_record(path: str | os.PathLike) -> TorchRecord:
    """The record of a torch-saved checkpoint file, or NO_RECORD; cached per file version."""
    try:
        stat = os.stat(path)
    except OSError:
        return NO_RECORD
    return _cached(os.fspath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


def recorded_progress(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(global_step, epoch) a torch-saved checkpoint dict records, or (None, None)."""
    record = read_record(path)
    return record.step, record.epoch


@functools.lru_cache(maxsize=256)  # an archiver asks again every poll: read a file once per version
def _cached(path: str, mtime_ns: int, size: int, ino: int) -> TorchRecord:  # noqa: ARG001  (the cache key)
    try:
        with open(path, "rb") as fh:
            data = _first_pickle(fh)
            if data is None:
                return NO_RECORD
            loaded = _BoundedUnpickler(data, time.monotonic() + TIME_LIMIT).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RecursionError, MemoryError, OverflowError, struct.error, _Refused):
        return NO_RECORD
    return _record(loaded)


def _first_pickle(fh) -> _Capped | None:
    """The stream of the zip's first member when it is a stored `data.pkl` (torch.save's layout)."""
    header = fh.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        return None
    signature, _, _, method, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE or method != 0:
        return None
    name = fh.read(name_length)
    if not (name == b"data.pkl" or name.endswith(b"/data.pkl")):
        return None
    fh.seek(extra_length, io.SEEK_CUR)
    return _Capped(fh, MAX_PICKLE)  # the pickle ends itself (STOP): its size is in a descriptor after it


def _record(loaded) -> TorchRecord:
    if not isinstance(loaded, dict):
        return NO_RECORD
    kept: list[str] = []
    callbacks = loaded.get("callbacks")
    for state in (callbacks.values() if isinstance(callbacks, dict) else ()):
        if not isinstance(state, dict) or "best_model_path" not in state:
            continue  # not a ModelCheckpoint's state
        for key in ("best_model_path", "last_model_path"):
            if isinstance(state.get(key), str) and state[key]:
                kept.append(state[key])
        best_k = state.get("best_k_models")
        if isinstance(best_k, dict):
            kept += [p for p in best_k if isinstance(p, str) and p]
    return TorchRecord(sane_step(loaded.get("global_step")), sane_step(loaded.get("epoch")),
                       tuple(dict.fromkeys(kept)))


class _Refused(Exception):
    """A cap of the bounded unpickler was reached."""


class _Capped(io.RawIOBase):
    """Reads of `raw` that fail past `limit` bytes."""

    def __init__(self, raw, limit: int):
        self._raw, self._left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise _Refused("pickle larger than the cap")
        view = memoryview(buffer)[: self._left]
        n = self._raw.readinto(view)
        self._left -= n or 0
        return n or 0


class _Stub:
    """Stands for any class or function the pickle names; accepts whatever is done to it."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


def _stub_class(*args):
    return _Stub


class _BoundedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be bounded
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream, deadline: float):
        super().__init__(io.BufferedReader(stream, 64 * 1024))
        self._deadline = deadline

    find_class = _stub_class  # never imports anything

    def persistent_load(self, pid):  # tensor storages: not read
        return None

    def load(self):
        ops = 0
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read, self.readinto, self.readline = self._unframer.read, self._unframer.readinto, self._unframer.readline
        self.metastack, self.stack, self.proto = [], [], 0
        self.append = self.stack.append
        read = self.read
        dispatch = self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
                ops += 1
                if not ops & 0x3FF:
                    if ops > MAX_OPS or time.monotonic() > self._deadline:
                        raise _Refused("pickle too long to read")
                    if len(self.memo) > MAX_MEMO:
                        raise _Refused("memo too large")
        except pickle._Stop as stop:
            return stop.value

    # dictionaries keep string keys only: the records are all under string keys, and no crafted
    # collision of int or tuple hashes can make an insert quadratic
    def load_dict(self):
        items = self.pop_mark()
        self.append({k: v for k, v in zip(items[::2], items[1::2]) if type(k) is str})

    def load_setitem(self):
        stack = self.stack
        value, key = stack.pop(), stack.pop()
        _set(stack[-1], key, value)

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items) - 1, 2):
            _set(target, items[i], items[i + 1])

    # sets are never built (their items would be hashed): a list stands for them
    def load_empty_set(self):
        self.append([])

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, list):
            target.extend(items)

    def load_frozenset(self):
        self.append(list(self.pop_mark()))

    def load_long(self):  # protocol 0's decimal longs: int() of a huge text is refused below
        text = self.readline()[:-1]
        if len(text) > 32:
            raise _Refused("integer too long")
        self.append(int(text.rstrip(b"L"), 0))

    def load_long4(self):
        n, = struct.unpack("<i", self.read(4))
        if n < 0 or n > 64:
            raise _Refused("integer too long")
        self.append(pickle.decode_long(self.read(n)))

    def load_int(self):
        text = self.readline()
        if len(text) > 32:
            raise _Refused("integer too long")
        self.append(False if text == b"00\n" else True if text == b"01\n" else int(text, 0))

    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.EMPTY_SET[0]] = load_empty_set
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    dispatch[pickle.LONG[0]] = load_long
    dispatch[pickle.INT[0]] = load_int
    dispatch[pickle.LONG4[0]] = load_long4


def _set(target, key, value) -> None:
    if type(target) is dict:
        if type(key) is str:
            target[key] = value
    elif isinstance(target, _Stub):
        return
    else:
        raise _Refused("item set on something not a dict")
