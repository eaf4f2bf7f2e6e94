"""Streaming plumbing of uploads and downloads: the settings, the upload pipe, the checksumming
tee and progress bars.

Uploads go through the library's resumable upload (its retry policy, crc32c sent with the final
chunk and checked), fed by `ChunkPipe` so an archive written by another thread is uploaded as it is
made: no temporary file, and at most two chunks in memory.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import deque
from dataclasses import dataclass

from colab_magics.storage import DEFAULT_CHUNK_SIZE, RETRY_DEADLINE, MiB

PROGRESS_MIN_BYTES = 64 * MiB


@dataclass(frozen=True)
class TransferSettings:
    """Knobs of uploads and downloads (filled from `%config ColabMagics.*` by the magics)."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    retry_deadline: float = RETRY_DEADLINE
    progress: bool = True
    restore_max_ratio: float = 200.0  # a restore writing more than this × the archive is refused (0: no cap)
    restore_free_margin: int = 256 * MiB  # a restore leaves at least this much disk free



class ChunkPipe(io.RawIOBase):
    """Bytes written by one thread, read in whole chunks by `Blob.upload_from_file` in another.

    The writer cuts its bytes into `chunk_size` pieces; at most `slots` pieces exist in the pipe at
    once, so memory is bounded whatever the archive size. One slot by default: the library keeps the
    chunk it sent last alive (its last response holds the request body) while it reads and sends the
    next, so a second slot filled ahead would be a third chunk in memory (1.4x the RSS of a raw
    upload, benchmarks/bench_storage.py) for a speed-up lost in the upload's own time. The reader may
    seek back within the last chunk it read, which is what the library's resumable-upload recovery
    needs.
    """

    def __init__(self, chunk_size: int, slots: int = 1):
        self._chunk_size = chunk_size
        self._slots = threading.Semaphore(slots)
        self._ready: deque = deque()
        self._cond = threading.Condition()
        self._fill: io.BytesIO | None = None
        self._closed_by_writer = False
        self._writer_error: BaseException | None = None
        self._cancelled = False
        self._pos = 0  # reader position
        self._current = b""  # last chunk handed to the reader
        self._current_start = 0
        self.bytes_written = 0
        self.writer = _PipeWriter(self)

    # writer side ---------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view:
            if self._cancelled:
                raise Cancelled()
            if self._fill is None:
                self._acquire_slot()
                self._fill = io.BytesIO()
            room = self._chunk_size - self._fill.tell()
            self._fill.write(view[:room])
            view = view[room:]
            if self._fill.tell() == self._chunk_size:
                self._hand_over()
        self.bytes_written += size
        return size

    def finish_writing(self, error: BaseException | None = None) -> None:
        """Called by the writer when done (or failed): the reader sees EOF (or the error)."""
        if self._fill is not None and error is None:
            self._hand_over()
        with self._cond:
            self._closed_by_writer = True
            self._writer_error = error
            self._cond.notify_all()

    def cancel(self) -> None:
        """Called by the reader when the upload failed: the writer stops at its next write."""
        self._cancelled = True
        self._slots.release()
        with self._cond:
            self._ready.clear()
            self._cond.notify_all()

    def _acquire_slot(self) -> None:
        while not self._slots.acquire(timeout=0.5):
            if self._cancelled:
                raise Cancelled()
        if self._cancelled:
            raise Cancelled()

    def _hand_over(self) -> None:
        chunk = self._fill.getvalue()  # shares the buffer: no copy
        self._fill = None
        with self._cond:
            self._ready.append(chunk)
            self._cond.notify_all()

    # reader side ---------------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or not (self._current_start <= offset <= self._current_start + len(self._current)):
            raise io.UnsupportedOperation("ChunkPipe can only seek within the last chunk read")
        self._pos = offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes; short only at the end of the stream (the library takes a short read as EOF).

        Aligned reads of a whole chunk return the chunk itself (no copy); a read that starts inside a
        chunk, after a recovery seek, is completed from the next one.
        """
        pieces = []
        wanted = size
        while wanted != 0:
            end_of_current = self._current_start + len(self._current)
            if self._pos >= end_of_current:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._current_start, self._current = self._pos, chunk
                continue
            start = self._pos - self._current_start
            piece = self._current[start : start + wanted] if wanted >= 0 else self._current[start:]
            self._pos += len(piece)
            pieces.append(piece)
            if wanted >= 0:
                wanted -= len(piece)
            else:
                break
        if len(pieces) == 1:
            return pieces[0]  # a whole-chunk slice is the chunk itself: no copy
        return b"".join(pieces)

    def _next_chunk(self) -> bytes | None:
        with self._cond:
            if self._current:  # the reader has moved past it: free its slot before waiting,
                self._current = b""  # or a writer holding the only slot could never hand over
                self._slots.release()
            while not self._ready and not self._closed_by_writer:
                self._cond.wait()
            if self._ready:
                return self._ready.popleft()
            if self._writer_error is not None:
                raise self._writer_error
            return None


class _PipeWriter(io.RawIOBase):
    """The writing end of a ChunkPipe: `tell()` counts bytes written, as zipfile expects."""

    def __init__(self, pipe: ChunkPipe):
        self._pipe = pipe

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._pipe.write(data)

    def tell(self) -> int:
        return self._pipe.bytes_written


class Cancelled(Exception):
    """The upload side gave up; the writer thread unwinds quietly."""


class Crc32cTee:
    """Passes bytes through (writes to a sink, or reads from a source) while computing crc32c.

    Writes are gathered into blocks of `block` bytes before they reach the sink and the progress
    bar: the library hands a download over in 8 KiB pieces, and running the zip extractor
    (member CRC, one write syscall) and the bar per piece cost a load ~0.5 s of CPU per GiB in the
    downloading thread. Call `flush()` when the download is done.
    """

    def __init__(self, inner, bar=None, block: int = MiB):
        import google_crc32c

        self._inner, self._bar = inner, bar
        self._crc = google_crc32c.Checksum()
        self._block = block
        self._buffer = memoryview(bytearray(block))  # reused: the sink consumes it before returning
        self._filled = 0

    def write(self, data) -> int:
        self._crc.update(data)  # here, on the library's bytes: google_crc32c refuses memoryviews
        size = len(data)
        if self._filled + size > self._block:
            self.flush()
        if size >= self._block:
            self._pass_on(data)
        else:
            self._buffer[self._filled : self._filled + size] = data
            self._filled += size
        return size

    def flush(self) -> None:
        if self._filled:
            filled, self._filled = self._filled, 0
            self._pass_on(self._buffer[:filled])

    def _pass_on(self, data) -> None:
        self._inner.write(data)
        if self._bar is not None:
            self._bar.update(len(data))

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._crc.update(data)
        if self._bar is not None:
            self._bar.update(len(data))
        return data

    def drain(self) -> None:
        while self.read(4 * MiB):
            pass

    def crc32c(self) -> str:
        return base64.b64encode(self._crc.digest()).decode()


def progress_bar(total: int, desc: str, settings: TransferSettings):
    if not settings.progress or total < PROGRESS_MIN_BYTES:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
