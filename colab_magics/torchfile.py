"""The progress a PyTorch checkpoint file records, read without torch and without running its code.

Lightning's `last.ckpt` is a `torch.save` zip whose `*/data.pkl` holds `{"epoch": E, "global_step": S,
"state_dict": ...}`: its name carries no step, yet it is the newest checkpoint of a run that keeps
only its best numbered file (`ModelCheckpoint(monitor=..., save_top_k=1, save_last=True)`). The pickle
is read with an unpickler whose every class is an inert stub and whose tensors are never loaded, so
nothing in the file can execute and the cost is that of the (small) pickle, whatever the model size.
"""

from __future__ import annotations

import functools
import os
import pickle
import zipfile

_MAX_PICKLE = 64 * 1024 * 1024  # a data.pkl larger than this is not a checkpoint we read for a number


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


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: ARG002  never imports anything
        return _Stub

    def persistent_load(self, pid):  # tensor storages: not read
        return None


def recorded_progress(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(global_step, epoch) a torch-saved checkpoint dict records, or (None, None)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return _cached(os.fspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)  # an archiver asks again every poll: read a file once per version
def _cached(path: str, mtime_ns: int, size: int) -> tuple[int | None, int | None]:
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None or archive.getinfo(name).file_size > _MAX_PICKLE:
                return None, None
            with archive.open(name) as fh:
                data = _InertUnpickler(fh).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    step, epoch = data.get("global_step"), data.get("epoch")
    return (step if isinstance(step, int) else None), (epoch if isinstance(epoch, int) else None)
