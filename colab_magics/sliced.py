"""Restore a zip from many ranged reads of one object at once ("sliced downloads").

Why a module of its own: one HTTP stream carries what one connection's window and round trip allow,
and Cloud Storage caps a stream well below what a VM's network takes, so Google's own tools
(`gcloud storage cp`) download big objects as parallel byte ranges. The zip format lends itself to
it: the index at the tail says where every member's bytes are, so the object is cut into slices
(`packing.ZipPlan.slices`: at members' local headers, and inside large stored members) and
`settings.streams` workers each GET one slice at a time, pinned to the object's generation, feeding a
`packing.SliceExtractor` that writes the members it carries into the staging directory. A tar.gz
has no index and stays one stream (`runs._extract`).

Verification, sound whatever a response carries: every byte of the object goes through exactly one
slice or the index read, so the slices' crc32c values, combined in order with the index's
(`packing.crc32c_combine`, no byte read twice), are the object's crc32c, compared with its metadata;
then every member's CRC-32 (its pieces' combined) is compared with the index. One failure fails the
restore as a whole: the other workers stop at their next block and `restore.Restore` drops the
staging directory, so TARGET_DIR is untouched.

Memory: a worker holds one BLOCK of response and at most `packing.INFLATE_BLOCK` of inflated output,
so a restore needs about streams × 2 MiB plus the index (at most `packing.MAX_INDEX`).
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from colab_magics import packing, storage
from colab_magics.errors import DownloadFailed
from colab_magics.settings import MiB, Settings, check_streams

BLOCK = MiB  # bytes read from a response at a time (the library's own reads are 8 KiB: 2.5x the CPU)
MIN_PART = 8 * MiB  # slices smaller than this cost more in requests than they gain in parallel
MAX_PART = 64 * MiB


def part_size(total: int, streams: int) -> int | None:
    """Bytes per slice for `total` bytes over `streams` workers: two slices each, so a slow one
    is made up by the others; None (one slice) for a single stream."""
    if streams <= 1:
        return None
    return min(max(-(-total // (2 * streams)), MIN_PART), MAX_PART)


def restore_zip(blob, dest: Path, budget: packing.Budget, settings: Settings, *,
                on_bytes: Callable[[int], None] | None = None, part: int | None = None) -> tuple[Path, ...]:
    """Extract the zip `blob` (a Blob with its metadata loaded) into `dest` by `settings.streams`
    parallel ranged reads; return the files written, relative to `dest`. `part`: bytes per slice
    (default `part_size`). Checked: names and caps before any write, the object's crc32c, each member's CRC-32.
    """
    streams = check_streams(settings.streams)
    with RangeReader(blob, settings, streams) as reader:
        index = packing.read_zip_index(blob.size, reader.read_bytes, budget=budget)
        plan = packing.ZipPlan(index, budget)
        tail: packing.TailFile = index.fp
        slices = plan.slices(part if part is not None else part_size(plan.start_dir, streams))
        plan.prepare(dest)
        crcs = _extract(plan, slices, tail, reader, dest, streams, settings.retry_deadline, on_bytes)
    crc = 0
    for piece, piece_crc in zip(slices, crcs):
        crc = packing.crc32c_combine(crc, piece_crc, piece.end - piece.start)
    index_bytes = tail.bytes(plan.start_dir, blob.size)
    crc = packing.crc32c_combine(crc, _crc32c(0, index_bytes), len(index_bytes))
    if blob.crc32c and crc != int.from_bytes(base64.b64decode(blob.crc32c), "big"):
        raise DownloadFailed(f"{reader.name} failed its crc32c check while downloading: try again")
    return plan.finish(dest)


def _extract(plan: packing.ZipPlan, slices: list[packing.Slice], tail: packing.TailFile, reader: "RangeReader",
             dest: Path, streams: int, wait: float, on_bytes) -> list[int]:
    """Run every slice on `streams` workers; return each slice's crc32c. The first failure stops the
    others (at their next block) and is raised here once they have all stopped."""
    abort = threading.Event()
    crcs = [0] * len(slices)
    progress_lock = threading.Lock()

    def work(k: int) -> None:
        piece = slices[k]
        if abort.is_set():
            raise packing.Aborted()
        sink = packing.SliceExtractor(plan, piece, dest, abort, wait)
        crc = 0

        def consume(data: bytes) -> None:
            nonlocal crc
            crc = _crc32c(crc, data)
            sink.write(data)
            if on_bytes is not None:
                with progress_lock:
                    on_bytes(len(data))

        try:
            held = min(max(tail.start, piece.start), piece.end)  # from here on, the index read has the bytes
            if held > piece.start:
                reader.read(piece.start, held, consume)
            for start in range(held, piece.end, BLOCK):
                consume(tail.bytes(start, min(start + BLOCK, piece.end)))
            sink.close()
        finally:
            sink.abort()
        crcs[k] = crc

    pool = ThreadPoolExecutor(max_workers=max(1, min(streams, len(slices))), thread_name_prefix="colab-magics-slice")
    try:
        futures = [pool.submit(work, k) for k in range(len(slices))]  # in order: a member's header comes first
        for future in as_completed(futures):
            error = future.exception()
            if error is not None and not isinstance(error, packing.Aborted):
                raise error
    finally:
        abort.set()  # all done, or one failed: either way nothing more is to be written
        pool.shutdown(wait=True, cancel_futures=True)
    return crcs


def _crc32c(crc: int, data: bytes) -> int:
    import google_crc32c

    return google_crc32c.extend(crc, data)


class RangeReader:
    """Byte ranges of one generation of one object, through an HTTP session of its own with a
    connection per stream; each read retried by `storage.request_options`' policy and resumed where
    a broken response stopped. A response that is not the range asked for is a DownloadFailed."""

    def __init__(self, blob, settings: Settings, connections: int):
        from google.auth.transport.requests import AuthorizedSession
        from requests.adapters import HTTPAdapter

        shared = blob.client._http  # noqa: SLF001  the client's own transport: its credentials and proxies
        if isinstance(shared, AuthorizedSession):
            self.session = AuthorizedSession(shared.credentials)
        else:
            self.session = type(shared)()
        for setting in ("proxies", "verify", "trust_env"):
            setattr(self.session, setting, getattr(shared, setting))
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, HTTPAdapter(pool_connections=1, pool_maxsize=connections))
        self.name = f"gs://{blob.bucket.name}/{blob.name}"
        self.size, self.generation = blob.size, blob.generation
        # the media link (requester-pays project included), as the library's own downloads use it
        self.url = _pinned(blob._get_download_url(blob.client), blob.generation)  # noqa: SLF001
        options = storage.request_options(settings.retry_deadline)
        self._retry, self._timeout = options["retry"], options["timeout"]

    def __enter__(self) -> "RangeReader":
        return self

    def __exit__(self, *exc) -> None:
        self.session.close()

    def read_bytes(self, first: int, last: int) -> bytes:
        """Bytes [first, last] (inclusive, as `packing.read_zip_index` asks)."""
        parts: list[bytes] = []
        self.read(first, last + 1, parts.append)
        return b"".join(parts)

    def read(self, start: int, end: int, consume: Callable[[bytes], None]) -> None:
        """Hand bytes [start, end) to `consume`, in order, BLOCK at a time; each byte exactly once."""
        import http.client

        import requests
        import urllib3

        got = 0

        def attempt() -> None:
            nonlocal got
            first = start + got
            if first >= end:
                return
            response = self.session.request("GET", self.url, stream=True, timeout=self._timeout,
                                            headers={"Range": f"bytes={first}-{end - 1}", "Accept-Encoding": "gzip"})
            try:
                self._check(response, first, end)
                while got < end - start:
                    data = response.raw.read(min(BLOCK, end - start - got), decode_content=False)
                    if not data:
                        raise requests.ConnectionError(f"the response ended {end - start - got} bytes early")
                    consume(data)
                    got += len(data)
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
                    http.client.IncompleteRead) as exc:  # raw reads are not wrapped by requests: do it here
                raise requests.ConnectionError(str(exc)) from exc
            finally:
                response.close()

        self._retry(attempt)()

    def _check(self, response, first: int, end: int) -> None:
        from google.api_core.exceptions import from_http_response

        if response.status_code >= 400:
            raise from_http_response(response)
        generation = response.headers.get("x-goog-generation")
        if generation is not None and self.generation is not None and generation != str(self.generation):
            raise DownloadFailed(f"{self.name} was replaced while it was restored: load it again")
        if response.status_code == 206:
            answered = response.headers.get("Content-Range", "")
            if answered.split("/")[0] != f"bytes {first}-{end - 1}":
                raise DownloadFailed(f"{self.name}: asked for bytes {first}-{end - 1}, the server sent "
                                     f"{answered or 'no range'}: try again")
        elif not (response.status_code == 200 and first == 0 and end == self.size):
            raise DownloadFailed(f"{self.name}: the server ignored the byte range asked for "
                                 f"(HTTP {response.status_code}): try again")


def _pinned(url: str, generation: int | None) -> str:
    """`url` with the object's generation in its query: every range comes from the same bytes."""
    if generation is None:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "generation"]
    query.append(("generation", str(generation)))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
