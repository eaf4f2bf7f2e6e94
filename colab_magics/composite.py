"""Parallel composite uploads: one zip archive sent as many streams and composed into one object.

Why: one upload stream is capped by its connection (TCP window and round trip), whatever the link
carries; Cloud Storage documents parallel composite uploads for this, and `gcloud storage cp` uses
them. A checkpoint of 12 GB and a 30 s preemption notice do not fit one stream.

How: `ziplayout` plans the archive as jobs of about total/streams bytes (at least PART_MIN); `streams`
workers write them at once, each as a temporary part object through its own resumable upload
(crc32c checked at its last chunk). The data descriptors of cut members and the central directory
follow as small parts, and `Blob.compose` (at most 32 sources a call, nested for more) makes
`RUN.STEP.zip` of them, with `if_generation_match=0` unless forced. The object's crc32c must equal the
one combined from the parts' (else it is deleted) before the save is reported; then the parts are
deleted. Archives under PARALLEL_MIN go as one stream (`runs`), where a part's fixed costs (a request
to start it, one to compose, one to delete) would outweigh what it saves.

Parts live in a folder of their own per save, `PREFIX/.colab_magics-parts/<UTC time>-<random>/<n>`. A
failed save deletes its parts; a killed one's are removed by the next save to that prefix once older
than PARTS_MAX_AGE, or at once by `remove_debris` (`colab-magics cleanup`). Archive listings (and so
`--keep` and "latest") never show them: the folder is skipped and no part is named like an archive.

Consistency, per job: each file is read once at its planned size and must be the file it was when
planned; strict files (all but event logs and TF's state file) must keep their signature until their
job ends and, all of them, for SETTLE_SECONDS after the round started. A file that changes makes only
the jobs holding it be written again, once it settled — the other parts are kept; after READ_TRIES
rounds the save fails with CheckpointChanging. The archive exists only after the compose, which runs
only once no file changed: it is never torn.

Memory: each stream holds one resumable-upload buffer of `part_buffer_mb(streams)` MiB (twice while a
chunk is sent) and a 1 MiB read block; peak RSS ≈ streams × (2 × buffer + 1 MiB) + the process's own.
The buffers share PART_MEMORY_MB: 12 MiB each at 16 streams.
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from colab_magics import packing, storage, transfer, ziplayout
from colab_magics.errors import CheckpointChanging, ColabMagicsError, UploadFailed
from colab_magics.settings import MiB, Settings

log = logging.getLogger(__name__)

PARALLEL_MIN = 64 * MiB  # smaller archives go as one stream
PART_MIN = 16 * MiB  # no job is planned smaller than this (the last piece of a cut file may be)
PART_MEMORY_MB = 192  # the upload buffers of all streams together (each at most `chunk_size_mb`)
MAX_COMPOSE = 32  # sources of one compose request (Cloud Storage's limit)
PARTS_FOLDER = ".colab_magics-parts"  # beside the archive: PREFIX/.colab_magics-parts/<save>/<n>
PARTS_MAX_AGE = timedelta(hours=6)  # parts older than this are a killed save's: the next save removes them
CONTENT_TYPE = "application/zip"
_PART_TYPE = "application/octet-stream"


# --- when and how -----------------------------------------------------------------------------------
def part_size(total: int, streams: int) -> int:
    """The size jobs are planned at: the archive shared by the streams, at least PART_MIN."""
    return max(PART_MIN, math.ceil(total / max(streams, 1)))


def parallel(total: int, streams: int, location: storage.GcsPath) -> bool:
    """Whether an archive of `total` bytes to `location` goes as parts: at least PARALLEL_MIN, two
    jobs or more, and part names Cloud Storage takes (else one stream, which needs neither)."""
    if streams < 2 or total < PARALLEL_MIN or math.ceil(total / part_size(total, streams)) < 2:
        return False
    longest = parts_folder(location) + "/20991231T235959-" + "f" * 12 + "/c99999"
    return len(longest.encode()) <= storage.MAX_OBJECT_NAME


def part_buffer_mb(streams: int, settings: Settings) -> int:
    """MiB of resumable-upload buffer per stream: PART_MEMORY_MB shared, at least 1, at most the chunk size."""
    return max(1, min(settings.chunk_size_mb, PART_MEMORY_MB // max(streams, 1)))


def parts_folder(location: storage.GcsPath) -> str:
    """The hidden folder of parts beside the archives of `location` (an object-name prefix)."""
    return f"{location.path}/{PARTS_FOLDER}" if location.path else PARTS_FOLDER


def is_part(name: str) -> bool:
    """Whether an object name lies in a parts folder (never an archive)."""
    return name.startswith(PARTS_FOLDER + "/") or f"/{PARTS_FOLDER}/" in name


# --- the upload -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Uploaded:
    size: int
    members: tuple[ziplayout.Member, ...]  # as they went in (signatures of the read that counted)
    reread: tuple[str, ...]  # member names whose change made their jobs be written again
    parts: int  # part objects composed


@dataclass(frozen=True)
class _Part:
    name: str
    length: int
    crc32c: int
    written: ziplayout.Written | None = None


def upload_zip(bucket, name: str, location: storage.GcsPath, members: Iterable[ziplayout.Member], comment: bytes,
               *, force: bool, settings: Settings, metadata: Callable[[tuple[ziplayout.Member, ...]], dict],
               on_bytes: Callable[[int], None] | None = None) -> Uploaded:
    """Upload the zip of `members` as `name` in `bucket` through `settings.streams` parallel parts.

    `metadata(members)` gives the archive's custom metadata from the members as archived. Raises
    CheckpointChanging when files keep changing, packing/ziplayout errors for unreadable files,
    google.api_core errors (PreconditionFailed: the name was taken meanwhile) for the caller to
    translate; whatever happens, no part is left behind and no archive appears unless complete.
    """
    members = list(members)
    job_size = part_size(sum(m.size for m in members), settings.streams)
    with _Save(bucket, name, location, settings, on_bytes) as save:
        parts, layout, reread = save.write_jobs(members, job_size)
        assembly = ziplayout.assemble(layout, {i: parts[i].written for i, _ in layout.jobs}, comment)
        parts.update(save.write_tails(assembly))
        ordered = [parts[i] for i in range(len(layout.segments))] + [parts["directory"]]
        save.compose(ordered, CONTENT_TYPE, metadata(layout.members), force)
        return Uploaded(assembly.size, layout.members, reread, len(ordered))


class _Save:
    """One parallel save: its workers, its parts folder, every object it made (deleted at the end)."""

    def __init__(self, bucket, name: str, location: storage.GcsPath, settings: Settings,
                 on_bytes: Callable[[int], None] | None):
        self.bucket, self.name, self.location, self.settings = bucket, name, location, settings
        self.folder = f"{parts_folder(location)}/{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"
        self.part_settings = settings.replace(chunk_size_mb=part_buffer_mb(settings.streams, settings))
        self.options = storage.request_options(settings.retry_deadline)
        self.cancel = threading.Event()
        self.made: list[str] = []  # every object of ours that exists (parts, intermediate composites)
        self._count = 0
        self._lock = threading.Lock()
        self._on_bytes = on_bytes
        self.pool = ThreadPoolExecutor(max_workers=settings.streams, thread_name_prefix="colab-magics-part")
        _widen_pool(bucket.client, settings.streams + 4)

    def __enter__(self) -> "_Save":
        return self

    def __exit__(self, failed, *exc) -> None:
        self.cancel.set()  # on a failure, every job still writing stops at its next block
        try:
            self._remove(self.made)
            if failed is None:  # a killed save's parts, if old enough (not after a failure: the endpoint may be down)
                remove_debris(self.bucket.client, self.location, older_than=PARTS_MAX_AGE,
                              deadline=self.settings.retry_deadline, pool=self.pool, quiet=True)
        finally:
            self.pool.shutdown(wait=True)

    def _next_name(self, kind: str = "") -> str:
        with self._lock:
            self._count += 1
            return f"{self.folder}/{kind}{self._count:05d}"

    def _made(self, name: str) -> None:
        with self._lock:
            self.made.append(name)

    def _progress(self, n: int) -> None:
        with self._lock:
            self._on_bytes(n)

    # jobs ---------------------------------------------------------------------------------------
    def write_jobs(self, members: list[ziplayout.Member], job_size: int):
        """Write every job as a part, again for those whose files changed; return (parts by segment, layout, reread)."""
        kept: dict[tuple, _Part] = {}  # by job key: parts still valid for a later plan
        reread: list[str] = []
        changed: set[Path] = set()
        for attempt in range(packing.READ_TRIES):
            if attempt:
                packing.wait_until_quiet(changed)
                members = [ziplayout.member(m.path, m.name, m.strict, m.origin) if m.path in changed else m
                           for m in members]
            layout = ziplayout.plan(members, job_size, compresses=_compresses)
            started = time.monotonic()
            todo = {i: job for i, job in layout.jobs if job.key(layout.members) not in kept}
            futures = {i: self.pool.submit(self._write_job, layout, job) for i, job in todo.items()}
            changed = self._gather(futures, kept, layout)
            strict = {m.path: m.signature for m in layout.members if m.strict}
            changed.update(packing.changed_since(strict, started))
            if not changed:
                parts = {i: kept[job.key(layout.members)] for i, job in layout.jobs}
                return parts, layout, tuple(reread)
            known = {m.path: m for m in layout.members}
            for path in sorted(changed):
                log.info("%s changed while it was read: its part of the archive is written again once it settles",
                         known[path].shown)
                reread.append(known[path].name)
            # the changed files get new signatures below, hence new job keys: their old parts are never
            # reused, and are deleted with every other object of this save at the end
        first = known[sorted(changed)[0]].shown
        raise CheckpointChanging(
            f"{first} kept changing while it was read ({packing.READ_TRIES} tries): nothing was uploaded; "
            "save again once training has written it", path=first)

    def _gather(self, futures: dict[int, Future], kept: dict, layout: ziplayout.Layout) -> set[Path]:
        """Wait for every job; keep their parts; return the files that changed. Any other failure
        cancels the jobs still running and is raised once they stopped."""
        changed: set[Path] = set()
        failure: BaseException | None = None
        for index, future in futures.items():
            try:
                part = future.result()
            except packing.FileChanged as exc:
                changed.add(exc.path)
            except ziplayout.Cancelled:
                pass
            except BaseException as exc:  # noqa: BLE001  raised below, once every job has stopped
                self.cancel.set()
                failure = failure or exc
            else:
                kept[layout.segments[index].key(layout.members)] = part
        if failure is not None:
            raise failure
        return changed

    def _write_job(self, layout: ziplayout.Layout, job: ziplayout.Job) -> _Part:
        if self.cancel.is_set():
            raise ziplayout.Cancelled()
        blob = self.bucket.blob(self._next_name())
        blob.metadata = {"colab-magics-archive": self.name}
        tee = _Crc32cCount()

        def write(out):
            tee.out = out
            return ziplayout.write_job(tee, layout, job, cancelled=self.cancel.is_set,
                                       on_bytes=self._progress if self._on_bytes else None)

        written = transfer.upload_stream(blob, write, content_type=_PART_TYPE, if_generation_match=0,
                                         settings=self.part_settings)
        self._made(blob.name)
        return _Part(blob.name, tee.length, tee.crc32c, written)

    # descriptors, directory, compose ----------------------------------------------------------------
    def write_tails(self, assembly: ziplayout.Assembly) -> dict:
        """Upload the descriptors of cut members and the central directory, as small parts, at once."""
        pieces = dict(assembly.descriptors)
        pieces["directory"] = assembly.directory
        futures = {key: self.pool.submit(self._write_small, data) for key, data in pieces.items()}
        return {key: future.result() for key, future in futures.items()}

    def _write_small(self, data: bytes) -> _Part:
        import google_crc32c

        blob = self.bucket.blob(self._next_name())
        blob.metadata = {"colab-magics-archive": self.name}
        blob.upload_from_string(data, content_type=_PART_TYPE, if_generation_match=0, checksum="crc32c",
                                **self.options)
        self._made(blob.name)
        return _Part(blob.name, len(data), google_crc32c.value(data))

    def compose(self, parts: list[_Part], content_type: str, metadata: dict, force: bool):
        """Compose `parts`, in order, into the archive (through intermediate composites past 32); check
        its crc32c against the parts' combined; return the archive's blob."""
        expected = 0
        for part in parts:
            expected = packing.crc32c_combine(expected, part.crc32c, part.length)
        level = [self.bucket.blob(part.name) for part in parts]
        while len(level) > MAX_COMPOSE:
            groups = [level[i:i + MAX_COMPOSE] for i in range(0, len(level), MAX_COMPOSE)]
            futures = [self.pool.submit(self._compose_group, group) if len(group) > 1 else None for group in groups]
            level = [future.result() if future is not None else group[0] for future, group in zip(futures, groups)]
        final = self.bucket.blob(self.name)
        final.content_type, final.metadata = content_type, metadata
        # fake-gcs-server ignores if_generation_match on compose (real Cloud Storage refuses with 412)
        final.compose(level, if_generation_match=None if force else 0, **self.options)
        if final.crc32c != _b64(expected):
            final.delete(if_generation_match=final.generation, **self.options)
            raise UploadFailed(f"gs://{self.bucket.name}/{self.name} failed its crc32c check after composing "
                               "its parts and was deleted: run the save again")
        return final

    def _compose_group(self, group: list):
        blob = self.bucket.blob(self._next_name("c"))
        blob.content_type = _PART_TYPE
        blob.compose(group, if_generation_match=0, **self.options)
        self._made(blob.name)
        return blob

    def _remove(self, names: list[str]) -> None:
        """Delete our objects, at once; a failure is logged (the next save or `remove_debris` finds them)."""
        from google.api_core.exceptions import GoogleAPICallError

        futures = [self.pool.submit(_delete, self.bucket, name, self.options) for name in names]
        failed = 0
        for future in futures:
            try:
                future.result()
            except (GoogleAPICallError, OSError) as exc:
                failed += 1
                error = exc
        if failed:
            log.warning("%d part(s) of gs://%s/%s could not be deleted (%s): the next save to that prefix, or "
                        "cleaning it up, removes them", failed, self.bucket.name, self.name, error)


class _Crc32cCount:
    """Passes writes on to `out` while counting them and computing their crc32c."""

    def __init__(self):
        self.out = None
        self.length = 0
        self.crc32c = 0

    def write(self, data: bytes) -> int:
        import google_crc32c

        self.crc32c = google_crc32c.extend(self.crc32c, data)
        self.length += len(data)
        return self.out.write(data)


def _widen_pool(client, size: int) -> None:
    """Let the client's HTTP session keep `size` connections per host (requests keeps 10): beyond that,
    every request of a stream would open a new connection (a TLS handshake each, on Cloud Storage)."""
    from requests.adapters import HTTPAdapter

    session = getattr(client, "_http", None)
    for prefix, adapter in list(getattr(session, "adapters", {}).items()):
        if isinstance(adapter, HTTPAdapter) and getattr(adapter, "_pool_maxsize", size) < size:
            session.mount(prefix, HTTPAdapter(pool_connections=adapter._pool_connections, pool_maxsize=size,
                                              max_retries=adapter.max_retries, pool_block=adapter._pool_block))


def _delete(bucket, name: str, options: dict) -> None:
    """Delete one object of ours; one already gone is fine (a cleanup running beside us)."""
    from google.api_core.exceptions import NotFound

    try:
        bucket.blob(name).delete(**options)
    except NotFound:
        pass


def _compresses(m: ziplayout.Member) -> bool:
    return packing.choose_compression(m.path, m.size) == ziplayout.DEFLATED


def _b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


# --- debris -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cleaned:
    url: str
    removed: tuple[str, ...]  # object names deleted
    kept: int = 0  # parts younger than `older_than` (a save may be running)


def remove_debris(client, location: storage.GcsPath | str, *, older_than: timedelta = timedelta(0),
                  deadline: float = storage.RETRY_DEADLINE, pool: ThreadPoolExecutor | None = None,
                  quiet: bool = False) -> Cleaned:
    """Delete the parts that saves left under `location` and every prefix below it, if older than
    `older_than` (0: all of them, those of a save running now included: it then fails, leaving nothing).

    `quiet`: a failure is logged instead of raised (the end of a save must not fail because of it).
    """
    loc = storage.parse_url(location) if isinstance(location, str) else location
    prefix = f"{loc.path}/" if loc.path else ""
    cutoff = datetime.now(timezone.utc) - older_than
    options = storage.request_options(deadline)
    removed, kept = [], 0
    try:
        with storage.translated_errors(loc, "clean up"):
            bucket = client.bucket(loc.bucket)
            if quiet:  # a save's own check: only the folder beside its archives
                found = client.list_blobs(loc.bucket, prefix=parts_folder(loc) + "/", **options)
            else:
                found = client.list_blobs(loc.bucket, prefix=prefix or None, **options)
            doomed = []
            for blob in found:
                if not is_part(blob.name):
                    continue
                if blob.time_created is not None and blob.time_created > cutoff:
                    kept += 1
                    continue
                doomed.append(blob.name)
            if pool is None:
                with ThreadPoolExecutor(max_workers=16) as own:
                    list(own.map(lambda name: _delete(bucket, name, options), doomed))
            else:
                for future in [pool.submit(_delete, bucket, name, options) for name in doomed]:
                    future.result()
            removed = doomed
    except ColabMagicsError as exc:  # translated above
        if not quiet:
            raise
        log.info("could not look for parts left under %s: %s", loc, exc)
    if removed and quiet:
        log.info("removed %d part(s) that an earlier, interrupted save left under %s", len(removed), loc)
    return Cleaned(loc.url, tuple(removed), kept)
