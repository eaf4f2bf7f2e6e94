"""Runs in a bucket: save the latest checkpoint of a run directory, list archives, restore one.

An archive is `{PREFIX}/{RUN}.{STEP}.zip`, RUN being the run directory's name (the original
colab_utils convention), so `%gcs_list` can group archives by run and `%gcs_load` can find the latest.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from colab_magics import checkpoints, packing, restore, storage, transfer
from colab_magics.transfer import TransferSettings
from colab_magics.errors import (
    ArchiveNotFound,
    ColabMagicsError,
    DownloadFailed,
    NoCheckpointFound,
    UploadFailed,
    hint,
)

log = logging.getLogger(__name__)

ARCHIVE_NAME = re.compile(r"^(?P<run>.+)\.(?P<step>\d+)\.(?P<ext>zip|tar\.gz|tgz)$")
FORMATS = {"zip": "application/zip", "tar.gz": "application/gzip"}  # archive format → content type


@dataclass(frozen=True)
class Saved:
    url: str
    run: str
    step: int
    size: int
    files: int
    checkpoint: Path
    seconds: float
    deleted: tuple[str, ...] = ()
    left_out_older: int = 0  # files of older steps not archived


@dataclass(frozen=True)
class Planned:
    """What `save_run(..., dry_run=True)` would archive; nothing was uploaded."""

    url: str
    run: str
    step: int
    step_from: str
    checkpoint: Path
    layout: str
    files: tuple[tuple[Path, int], ...]  # (path relative to RUN_DIR, size in bytes), sorted
    left_out: tuple[checkpoints.LeftOut, ...]
    root: Path  # RUN_DIR, absolute

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class Skipped:
    url: str
    run: str
    step: int
    reason: str


@dataclass(frozen=True)
class Restored:
    url: str
    target: Path
    checkpoint: Path | None
    step: int
    files: int
    seconds: float


@dataclass(frozen=True)
class ArchiveInfo:
    url: str
    run: str
    step: int
    size: int
    updated: datetime | None
    name: str = field(repr=False, default="")
    prefix: str = ""  # the folder holding it in its bucket ("" at the top), e.g. "experiments/bert"


def archive_name(run: str, step: int, ext: str = "zip") -> str:
    """The one place archive names are made: `run1.1000.zip`."""
    return f"{run}.{step}.{ext}"


# --- save ---------------------------------------------------------------------------------------
def save_run(
    run_dir,
    destination: str,
    *,
    step: int | None = None,
    events: bool = False,
    force: bool = False,
    keep: int | None = None,
    settings: TransferSettings | None = None,
    client=None,
    fmt: str = "zip",
    run_name: str | None = None,
    exclude: tuple[str, ...] = (),
    include: tuple[str, ...] = (),
    dry_run: bool = False,
) -> Saved | Skipped | Planned:
    """Archive `run_dir` into `destination` as RUN.STEP.zip (or RUN.STEP.tar.gz with `fmt="tar.gz"`,
    the format of colab_utils' GcsArchiveHook): every file but the other steps of each checkpoint
    series, event files (unless `events`) and what `exclude` globs name (see `checkpoints.plan`).
    With `dry_run`, return what would be archived and upload nothing. RUN is `run_name` if given
    (colab_utils' `basename`), else the run directory's name."""
    settings = settings or TransferSettings()
    if fmt not in FORMATS:
        raise ColabMagicsError(f"archive format {fmt!r} is not known: use one of {', '.join(FORMATS)}")
    if keep is not None and keep < 1:
        raise ColabMagicsError("--keep must be at least 1: it counts the archives to keep, the new one included")
    plan = checkpoints.plan(run_dir, step=step, events=events, exclude=exclude, include=include)
    ckpt, root, members = plan.checkpoint, plan.root, list(plan.files)
    location = storage.parse_url(destination)
    if run_name is not None and (not run_name.strip() or "/" in run_name):
        raise ColabMagicsError(f"run name {run_name!r} cannot name an archive: use a non-empty name without '/'")
    run = run_name or root.resolve().name
    target = location.child(archive_name(run, ckpt.step, fmt))
    if dry_run:
        return _planned(plan, target.url, run)
    client = client or _client()
    bucket = storage.require_bucket(client, location, settings.retry_deadline)
    blob = bucket.blob(target.path, chunk_size=settings.chunk_size)
    if not force:
        with storage.translated_errors(target, "check"):
            if blob.exists(**storage.request_options(settings.retry_deadline)):
                return Skipped(target.url, run, ckpt.step, "already in the bucket (use --force to replace it)")
    started = time.monotonic()
    manifest = {"colab_magics": 1, "run": run, "step": ckpt.step, "layout": ckpt.layout,
                "checkpoint": ckpt.path.relative_to(root).as_posix()}
    try:
        size = _upload_archive(blob, root, members, json.dumps(manifest).encode(), force, settings, fmt)
    except _PreconditionFailed:
        return Skipped(target.url, run, ckpt.step, "written by another saver meanwhile")
    deleted = prune(location, run, keep, client=client, deadline=settings.retry_deadline) if keep else ()
    return Saved(target.url, run, ckpt.step, size, len(members), ckpt.path, time.monotonic() - started, deleted,
                 plan.left_out_count("older"))


def _planned(plan: checkpoints.Plan, url: str, run: str) -> Planned:
    files = []
    for path in plan.files:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # removed since the walk (a saver pruning old steps)
        files.append((path.relative_to(plan.root), size))
    return Planned(url, run, plan.step, plan.step_from, plan.path, plan.layout, tuple(files), plan.left_out,
                   plan.root)


class _PreconditionFailed(Exception):
    pass


def _upload_archive(blob, root: Path, members: list[Path], comment: bytes, force: bool, settings, fmt: str) -> int:
    """Stream a zip (or tar.gz) of `members` into `blob`; only a complete, crc32c-checked object ever exists."""
    from google.api_core.exceptions import PreconditionFailed

    total = sum(p.stat().st_size for p in members)
    pipe = transfer.ChunkPipe(settings.chunk_size)
    bar = transfer.progress_bar(total, f"upload {blob.name}", settings)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            on_bytes = bar.update if bar else None
            if fmt == "zip":
                packing.write_zip(pipe.writer, root, members, comment=comment, on_bytes=on_bytes)
            else:
                packing.write_targz(pipe.writer, root, members, on_bytes=on_bytes)
        except transfer.Cancelled:
            return
        except BaseException as exc:  # handed to the uploading thread, which re-raises it
            failure.append(exc)
            pipe.finish_writing(exc)
            return
        pipe.finish_writing()

    writer = threading.Thread(target=produce, name="colab-magics-zip", daemon=True)
    writer.start()
    try:
        with storage.translated_errors(blob.bucket.name + "/" + blob.name, "upload to"):
            try:
                blob.upload_from_file(
                    pipe,
                    size=None,
                    content_type=FORMATS[fmt],
                    checksum="crc32c",
                    if_generation_match=None if force else 0,
                    **storage.request_options(settings.retry_deadline),
                )
            except PreconditionFailed:
                raise _PreconditionFailed() from None
    except BaseException as exc:
        pipe.cancel()
        writer.join(timeout=30)
        if failure and exc is failure[0]:
            if isinstance(exc, OSError):
                raise UploadFailed(f"could not read {getattr(exc, 'filename', '') or 'a file'} while archiving: "
                                   f"{exc.strerror or exc}; nothing was uploaded") from None
            raise
        if isinstance(exc, (ColabMagicsError, _PreconditionFailed, KeyboardInterrupt)):
            raise
        corrupt, invalid = storage.media_errors()
        if isinstance(exc, corrupt):  # the library deletes what it could not verify (Blob._do_resumable_upload)
            raise UploadFailed(f"upload of gs://{blob.bucket.name}/{blob.name} failed its checksum "
                               "and was deleted: run the save again") from None
        if isinstance(exc, invalid):
            raise UploadFailed(f"upload of gs://{blob.bucket.name}/{blob.name} got an unexpected answer "
                               f"({storage.response_status(exc)}): run the save again") from None
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.join(timeout=30)
    if blob.size is not None and blob.size != pipe.bytes_written:
        blob.delete(if_generation_match=blob.generation, **storage.request_options(settings.retry_deadline))
        raise UploadFailed(f"gs://{blob.bucket.name}/{blob.name} arrived incomplete and was deleted: run the save again")
    return pipe.bytes_written


# --- list and prune -----------------------------------------------------------------------------
def list_archives(location: str | storage.GcsPath, run: str | None = None, *, recursive: bool = False,
                  client=None, deadline: float = storage.RETRY_DEADLINE) -> list[ArchiveInfo]:
    """Archives directly under `location` (with `recursive`, under its sub-prefixes too), sorted by
    prefix, run, then step."""
    loc = storage.parse_url(location) if isinstance(location, str) else location
    client = client or _client()
    prefix = f"{loc.path}/" if loc.path else ""
    if run and not recursive:
        prefix += f"{run}."
    found = []
    with storage.translated_errors(loc, "list"):
        for blob in client.list_blobs(loc.bucket, prefix=prefix or None, delimiter=None if recursive else "/",
                                      **storage.request_options(deadline)):
            folder, _, base = blob.name.rpartition("/")
            match = ARCHIVE_NAME.match(base)
            if not match or (run and match.group("run") != run):
                continue
            found.append(ArchiveInfo(f"gs://{loc.bucket}/{blob.name}", match.group("run"),
                                     int(match.group("step")), blob.size or 0, blob.updated, blob.name, folder))
    return sorted(found, key=lambda a: (a.prefix, a.run, a.step, a.name))


def prune(location: storage.GcsPath, run: str, keep: int, *, client=None,
          deadline: float = storage.RETRY_DEADLINE) -> tuple[str, ...]:
    """Delete all but the newest `keep` archives of `run`; return the deleted URLs."""
    client = client or _client()
    archives = list_archives(location, run, client=client, deadline=deadline)
    doomed = archives[:-keep] if keep < len(archives) else []
    bucket = client.bucket(location.bucket)
    with storage.translated_errors(location, "delete old archives in"):
        for info in doomed:
            bucket.blob(info.name).delete(**storage.request_options(deadline))
    return tuple(info.url for info in doomed)


# --- load ---------------------------------------------------------------------------------------
def resolve_archive(source: str, *, client=None, deadline: float = storage.EXISTS_CHECK_DEADLINE) -> ArchiveInfo:
    """An archive URL as is, or a run URL (`gs://b/prefix/run1`) → its latest archive.

    The bucket is checked first (one request), so a missing bucket is named as such.
    """
    loc = storage.parse_url(source)
    client = client or _client()
    name = loc.path.rsplit("/", 1)[-1]
    if not name:
        raise ArchiveNotFound(f"{source} names no run: write gs://BUCKET[/PREFIX]/RUN or an archive URL")
    storage.require_bucket(client, loc, deadline)
    match = ARCHIVE_NAME.match(name)
    if match:
        return ArchiveInfo(loc.url, match.group("run"), int(match.group("step")), 0, None, loc.path)
    parent = storage.GcsPath(loc.bucket, loc.path.rpartition("/")[0])
    archives = list_archives(parent, name, client=client, deadline=deadline)
    if not archives:
        raise ArchiveNotFound(f"no archives of run {name!r} under {parent}: {hint('gcs_list', parent.url)} shows what is there")
    return max(archives, key=lambda a: a.step)


def load_run(source: str, target_dir, *, settings: TransferSettings | None = None, client=None) -> Restored:
    """Restore an archive (or a run's latest) into `target_dir`; a bad archive leaves it untouched."""
    settings = settings or TransferSettings()
    client = client or _client()
    info = resolve_archive(source, client=client, deadline=settings.retry_deadline)
    loc = storage.parse_url(info.url)
    bucket = client.bucket(loc.bucket)  # resolve_archive checked that it exists
    with storage.translated_errors(loc, "read"):
        # No chunk_size on the blob: download_to_file then streams one GET straight into the
        # extractor (resumed by range on retry) instead of assembling each 100 MiB chunk in memory
        # (b"".join: 2 chunks), which made a load peak at 6x the RSS of a raw download.
        blob = bucket.get_blob(info.name, **storage.request_options(settings.retry_deadline))
    if blob is None:
        parent = storage.GcsPath(loc.bucket, loc.path.rpartition("/")[0])
        raise ArchiveNotFound(f"{info.url} does not exist: {hint('gcs_list', parent.url)} shows what is there")
    target = Path(target_dir).expanduser()
    started = time.monotonic()
    with restore.Restore(target, info.url) as job:  # checks the target and recovers debris first
        with storage.translated_errors(loc, "download", bucket=bucket):
            count = _extract(blob, job.staging, settings, job.budget(blob.size or 0, settings))
        checkpoint = _prepare_checkpoint(job.staging, info.step)
        job.commit()  # the kept files linked in, then one swap: TARGET_DIR is old or new, never between
    path = target / checkpoint if checkpoint is not None else None
    return Restored(info.url, target, path, info.step, count, time.monotonic() - started)


@dataclass(frozen=True)
class FreshStart:
    """`resume` found no archive of the run: falsy, so `if resume(...):` reads as "was anything restored"."""

    run: str
    location: str
    target: Path
    step: None = None
    epoch: None = None

    @property
    def note(self) -> str:
        return f"no archive of {self.run} under {self.location}: starting fresh"

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.note


def resume(run_dir, destination: str, *, settings: TransferSettings | None = None, client=None):
    """Restore the latest archive of RUN_DIR's run (RUN = its name) from gs://BUCKET[/PREFIX] into it.

    Returns `load_run`'s record, or a falsy `FreshStart` when the bucket holds no archive of the run,
    so the first cell of a notebook (or a job's first line) is the same on the first run and after a
    reset. A missing bucket is still an error: only "no archives yet" is a fresh start.
    """
    settings = settings or TransferSettings()
    target = Path(run_dir).expanduser()
    location = storage.parse_url(destination)
    run = target.resolve().name
    client = client or _client()
    storage.require_bucket(client, location, settings.retry_deadline)
    archives = list_archives(location, run, client=client, deadline=settings.retry_deadline)
    if not archives:
        return FreshStart(run, location.url, target)
    newest = max(archives, key=lambda a: a.step)
    return load_run(newest.url, target, settings=settings, client=client)


def _extract(blob, staging: Path, settings: TransferSettings, budget: packing.Budget) -> int:
    options = storage.request_options(settings.retry_deadline)
    bar = transfer.progress_bar(blob.size or 0, f"download {blob.name}", settings)
    try:
        if blob.name.endswith(".zip"):
            index = packing.read_zip_index(
                blob.size, lambda a, b: blob.download_as_bytes(start=a, end=b, checksum=None, **options))
            sink = packing.ZipStreamExtractor(index, staging, budget)
            tee = transfer.Crc32cTee(sink, bar)
            try:
                blob.download_to_file(tee, checksum=None, **options)
                tee.flush()
            finally:
                sink.abort()
            count = sink.finish()
        else:
            with blob.open("rb", chunk_size=settings.chunk_size, **options) as reader:
                tee = transfer.Crc32cTee(reader, bar)
                count = packing.extract_tar_stream(tee, staging, budget)
                tee.drain()
    finally:
        if bar is not None:
            bar.close()
    if blob.crc32c and tee.crc32c() != blob.crc32c:
        raise DownloadFailed(f"gs://{blob.bucket.name}/{blob.name} failed its crc32c check while downloading: try again")
    return count


def _prepare_checkpoint(staging: Path, step: int) -> Path | None:
    """The restored checkpoint's path relative to the target; a TF state file names it, relatively."""
    try:
        ckpt = checkpoints.find_checkpoint(staging, step)
    except NoCheckpointFound:
        try:
            ckpt = checkpoints.find_checkpoint(staging)
        except NoCheckpointFound:
            return None
    if ckpt.layout == "tensorflow":
        checkpoints.write_tf_state(ckpt.path.parent, ckpt.path.name)
    return ckpt.path.relative_to(staging.absolute())  # checkpoints gives absolute paths


def _client():
    from colab_magics import session

    return session.current().storage_client()
