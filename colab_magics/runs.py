"""Runs in a bucket: save the latest checkpoint of a run directory, list archives, restore one.

An archive is `{PREFIX}/{RUN}.{STEP}.zip`, RUN being the run directory's name (the original
colab_utils convention), so `%gcs_list` can group archives by run. A checkpoint whose name carries no
step is named by its mtime, `{RUN}.mtime-{SECONDS}.zip`, so it is never taken for a step. "Latest"
means most recently uploaded (object creation time, then generation), never the highest step: a run
restarted from an earlier step, or one without step numbers, is still retained and restored right.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from colab_magics import (auth, checkpoints, composite, packing, position, restore, sliced, snapshot, storage,
                          transfer, ziplayout)
from colab_magics.settings import Settings, check_streams, effective
from colab_magics.errors import (
    ArchiveConflict,
    ArchiveNotFound,
    CheckpointChanging,
    CorruptArchive,
    DownloadFailed,
    NoCheckpointFound,
    InvalidValue,
    UploadFailed,
    Words,
    Param,
    check_keep,
    do,
)

log = logging.getLogger(__name__)

ARCHIVE_NAME = re.compile(r"^(?P<run>.+)\.(?P<mtime>mtime-)?(?P<step>\d+)\.(?P<ext>zip|tar\.gz|tgz)$")
FORMATS = {"zip": "application/zip", "tar.gz": "application/gzip"}  # archive format → content type
CONTENT_KEY = "colab-magics-content"  # object metadata: ziplayout.content_hash of the checkpoint's files


@dataclass(frozen=True)
class Saved:
    """What `save_run` did with RUN.STEP.zip: `outcome` "uploaded", or the bucket left as it was —
    "exists" (this content is there already), "raced" (another saver wrote the name meanwhile),
    "vanished" (the step was deleted while it was read: a library rotating checkpoints) — with
    `note` saying why in that case."""

    url: str
    run: str
    step: int
    outcome: str = "uploaded"
    note: "str | Words | None" = None
    size: int = 0
    files: int = 0
    checkpoint: Path | None = None
    seconds: float = 0.0
    deleted: tuple[str, ...] = ()  # URLs of the older archives `keep` removed
    step_from: str = "name"  # "mtime": `step` is the checkpoint's mtime (no step in its name)
    reread: tuple[str, ...] = ()  # files that changed while read, so the step was read again
    left_out_older: int = 0  # files of older steps not archived
    kept: tuple[str, ...] = ()  # checkpoints archived beside the newest as the library keeps them (its best)
    parts: int = 0  # objects composed into the archive (0: it went as one stream)

    @property
    def uploaded(self) -> bool:
        return self.outcome == "uploaded"


@dataclass(frozen=True)
class Planned:
    """What `save_run` would archive (`plan_save`'s answer); nothing was uploaded."""

    url: str
    run: str
    step: int
    step_from: str
    checkpoint: Path
    layout: str
    files: tuple[tuple[Path, int], ...]  # (path relative to RUN_DIR, size in bytes), sorted
    left_out: tuple[checkpoints.LeftOut, ...]
    root: Path  # RUN_DIR, absolute
    kept: tuple[checkpoints.Kept, ...] = ()  # checkpoints beside the newest that the library keeps (its best)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


class Restored(str):
    """What `load_run` and `%gcs_load` return: the checkpoint path itself (a `str`, as the magic
    always returned, so `ckpt.endswith(...)`, `open(ckpt)`, `Path(ckpt)`, `tf.train.load_checkpoint(ckpt)`
    keep working), carrying where training stopped: `.step` and `.epoch` as the layout records them
    (None where it records nothing), `.path`, `.files` (every restored file), `.url`, `.target`.
    """

    url: str
    target: Path
    checkpoint: Path | None  # None: the archive holds no checkpoint of a known layout
    step: int | None
    files: tuple[Path, ...]
    seconds: float
    epoch: int | float | None

    def __new__(cls, url: str, target: Path, checkpoint: Path | None, step: int | None,
                files: tuple[Path, ...], seconds: float, epoch: int | float | None = None):
        self = super().__new__(cls, str(checkpoint if checkpoint is not None else target))
        self.url, self.target, self.checkpoint, self.step = url, target, checkpoint, step
        self.files, self.seconds, self.epoch = files, seconds, epoch
        return self

    @property
    def path(self) -> Path:
        """The checkpoint a framework loads: a file, a TF prefix or a directory (else the target)."""
        return Path(str(self))

    def __fspath__(self) -> str:
        return str.__str__(self)

    def __reduce__(self):
        return Restored, (self.url, self.target, self.checkpoint, self.step, self.files, self.seconds, self.epoch)

    def __repr__(self) -> str:
        return f"Restored({str.__str__(self)!r}, step={self.step}, epoch={self.epoch})"


@dataclass(frozen=True)
class ArchiveInfo:
    url: str
    run: str
    step: int
    size: int
    updated: datetime | None
    name: str = field(repr=False, default="")
    prefix: str = ""  # the folder holding it in its bucket ("" at the top), e.g. "experiments/bert"
    step_from: str = "name"  # "mtime": `step` is the checkpoint's mtime, not a step
    created: datetime | None = field(repr=False, default=None)
    generation: int | None = field(repr=False, default=None)

    @property
    def recency(self) -> tuple:
        """Sort key: upload order (creation time, then generation), oldest first."""
        when = self.created or self.updated or datetime.min.replace(tzinfo=timezone.utc)
        return when, self.generation or 0, self.name


def archive_name(run: str, step: int, ext: str = "zip", *, step_from: str = "name") -> str:
    """The one place archive names are made: `run1.1000.zip`, or `run1.mtime-1795611178.zip` when
    the step is the checkpoint's mtime (its name has no number), so it never passes for a step."""
    return f"{run}.{'mtime-' if step_from == 'mtime' else ''}{step}.{ext}"


def latest(archives: list[ArchiveInfo]) -> ArchiveInfo:
    """The most recently uploaded archive (not the highest step)."""
    return max(archives, key=lambda a: a.recency)


# --- save ---------------------------------------------------------------------------------------
def save_run(
    run_dir,
    destination: str,
    *,
    step: int | None = None,
    events: bool = False,
    force: bool = False,
    keep: int | None = None,
    settings: Settings | None = None,
    client=None,
    fmt: str = "zip",
    run_name: str | None = None,
    exclude: tuple[str, ...] = (),
    include: tuple[str, ...] = (),
    pinned: tuple[str, ...] = (),
) -> Saved:
    """Archive `run_dir` into `destination` as RUN.STEP.zip (or RUN.STEP.tar.gz with `fmt="tar.gz"`,
    the format of colab_utils' GcsArchiveHook): every file but the other steps of each checkpoint
    series, event files (unless `events`) and what `exclude` globs name (see `checkpoints.plan`;
    `plan_save` says what would go in without uploading). RUN is `run_name` if given (colab_utils'
    `basename`), else `checkpoints.run_name` of the directory. `pinned`: checkpoints the training
    library keeps (its callback's best ones), archived whatever their step. A zip of PARALLEL_MIN
    bytes or more travels as `settings.streams` parallel parts composed into the one object
    (`composite`)."""
    settings = effective(settings)
    check_streams(settings.streams)
    check_keep(keep)
    plan, location, run, target = _planned_target(run_dir, destination, step=step, events=events, fmt=fmt,
                                                  run_name=run_name, exclude=exclude, include=include,
                                                  pinned=pinned)
    ckpt, root, files = plan.checkpoint, plan.root, list(plan.files)
    client = client or auth.storage_client()
    bucket = storage.require_bucket(client, location, settings.retry_deadline)
    identity = {f.relative_to(root).as_posix() for f in ckpt.files}  # what "the same archive" compares
    members: list[ziplayout.Member] = []
    try:
        members = [ziplayout.member(f, f.relative_to(root).as_posix(), _strict(f)) for f in files]
        if not force and _already_there(bucket, target, members, identity, ckpt.step, settings):
            return Saved(target.url, run, ckpt.step, "exists",
                         Words("already in the bucket (use ", Param("force", True), " to replace it)"),
                         step_from=ckpt.step_from)
        known = _archived(location, run, client, settings) if keep else None  # what retention may delete
        started = time.monotonic()
        manifest = {"colab_magics": 1, "run": run, "step": ckpt.step, "step_from": ckpt.step_from,
                    "layout": ckpt.layout, "checkpoint": ckpt.path.relative_to(root).as_posix()}
        with snapshot.Snapshot(root, files) as snap:  # a step the library rotates out meanwhile stays readable
            members = ziplayout.refreshed(replace(m, path=snap.path(m.path), origin=m.path) for m in members)
            size, reread, parts = _upload(bucket, target, location, members, identity,
                                          json.dumps(manifest).encode(), force, settings, fmt)
    except (snapshot.Vanished, FileNotFoundError) as exc:  # the archivers log it, at INFO: not a failure
        path = getattr(exc, "path", None) or _origin(getattr(exc, "filename", None), members) or "a file"
        return Saved(target.url, run, ckpt.step, "vanished", f"{path} was deleted while it was saved (rotated "
                     "out by the training library?): a newer step is archived next", step_from=ckpt.step_from)
    except _PreconditionFailed:
        return Saved(target.url, run, ckpt.step, "raced", "written by another saver meanwhile",
                     step_from=ckpt.step_from)
    deleted = prune(location, run, keep, client=client, protect=target.url, spare_unless=known,
                    settings=settings) if keep else ()
    return Saved(target.url, run, ckpt.step, size=size, files=len(files), checkpoint=ckpt.path,
                 seconds=time.monotonic() - started, deleted=deleted, step_from=ckpt.step_from, reread=reread,
                 left_out_older=plan.left_out_count("older"),
                 kept=tuple(k.path.relative_to(root).as_posix() for k in plan.kept), parts=parts)


def plan_save(run_dir, destination: str, *, step: int | None = None, events: bool = False, fmt: str = "zip",
              run_name: str | None = None, exclude: tuple[str, ...] = (), include: tuple[str, ...] = (),
              pinned: tuple[str, ...] = ()) -> Planned:
    """What `save_run` with these arguments would archive, and under which URL: the step, every file
    with its size, and each group left out with its reason. Nothing is uploaded (no request at all)."""
    plan, _, run, target = _planned_target(run_dir, destination, step=step, events=events, fmt=fmt,
                                           run_name=run_name, exclude=exclude, include=include, pinned=pinned)
    return _planned(plan, target.url, run)


def _planned_target(run_dir, destination: str, *, step, events, fmt, run_name, exclude, include, pinned):
    """The plan of a save and where it goes: (plan, location, run name, archive path)."""
    if fmt not in FORMATS:
        raise InvalidValue(f"archive format {fmt!r} is not known: use one of {', '.join(FORMATS)}", param="fmt")
    plan = checkpoints.plan(run_dir, step=step, events=events, exclude=exclude, include=include, pinned=pinned)
    location = storage.parse_url(destination)
    if run_name is not None and (not run_name.strip() or "/" in run_name):
        raise InvalidValue(f"run name {run_name!r} cannot name an archive: use a non-empty name without '/'",
                           param="run_name")
    run = run_name or checkpoints.run_name(plan.root)
    target = location.child(archive_name(run, plan.checkpoint.step, fmt, step_from=plan.checkpoint.step_from))
    return plan, location, run, target


def remove_debris(destination: str, *, settings: Settings | None = None, client=None) -> "composite.Cleaned":
    """Delete, now, the temporary parts that parallel saves left under gs://BUCKET[/PREFIX] and every
    prefix below it (a killed save's; the next save to a prefix removes those older than
    `composite.PARTS_MAX_AGE` itself). The parts of a save running now go too: that save then fails."""
    settings = effective(settings)
    loc = storage.parse_url(destination)
    client = client or auth.storage_client()
    storage.require_bucket(client, loc, settings.retry_deadline)
    return composite.remove_debris(client, loc, deadline=settings.retry_deadline)


def _origin(path, members) -> Path | None:
    """The user's name of a file we read through a link."""
    return next((m.shown for m in members if str(m.path) == str(path)), path)


def _strict(path: Path) -> bool:
    """Whether a member must not change while read: all but event logs (they only grow, and are taken as
    they were when opened) and TF's state file (rewritten on restore anyway)."""
    return not (fnmatch.fnmatch(path.name, checkpoints.EVENTS_GLOB) or path.name == checkpoints.STATE_FILE)


def _planned(plan: checkpoints.Plan, url: str, run: str) -> Planned:
    files = []
    for path in plan.files:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # removed since the walk (a saver pruning old steps)
        files.append((path.relative_to(plan.root), size))
    return Planned(url, run, plan.step, plan.step_from, plan.path, plan.layout, tuple(files), plan.left_out,
                   plan.root, plan.kept)


class _PreconditionFailed(Exception):
    pass


def _already_there(bucket, target: storage.GcsPath, members, identity: set[str], step: int,
                   settings: Settings) -> bool:
    """Whether the archive's name holds this very archive (skip the save); ArchiveConflict if it holds
    another one (another run's under the same name: never counted as ours)."""
    with storage.translated_errors(target, "check"):
        existing = bucket.get_blob(target.path, **storage.request_options(settings.retry_deadline))
    if existing is None:
        return False
    if _same_content(existing, members, identity, settings):
        return True
    raise ArchiveConflict(
        f"{target.url} already holds an archive of other files (another run saved under this name, or step "
        f"{step} was written again since): nothing was uploaded; rename the run directory or save under another "
        "prefix, or pass ", Param("force", True), " to replace it")


def _content(members, identity: set[str]) -> list[ziplayout.Member]:
    """The members that identify an archive: the checkpoint's own files (all strict ones if none)."""
    chosen = [m for m in members if m.name in identity and m.strict]
    return chosen or [m for m in members if m.strict]


def _same_content(existing, members, identity: set[str], settings: Settings) -> bool:
    """Whether the archive in the bucket holds this step's files: by the content hash saves record in
    its metadata, else (an archive written without it) by its zip index; a tar.gz without it cannot tell."""
    mine = _content(members, identity)
    recorded = (existing.metadata or {}).get(CONTENT_KEY)
    if recorded is not None:
        return recorded == ziplayout.content_hash(mine)
    if not existing.name.endswith(".zip") or not existing.size:
        return False
    options = storage.request_options(settings.retry_deadline)
    with storage.translated_errors(f"gs://{existing.bucket.name}/{existing.name}", "read"):
        try:
            index = packing.read_zip_index(
                existing.size, lambda a, b: existing.download_as_bytes(start=a, end=b, checksum=None, **options))
        except CorruptArchive:
            return False
    return ziplayout.holds_same_content(mine, index)


def _archived(location: storage.GcsPath, run: str, client, settings: Settings) -> frozenset:
    """(name, generation) of the run's archives now: retention after this save deletes only among these."""
    return frozenset((a.name, a.generation) for a in
                     list_archives(location, run, client=client, settings=settings))


def _upload(bucket, target: storage.GcsPath, location: storage.GcsPath, members: list[ziplayout.Member],
            identity: set[str], comment: bytes, force: bool, settings: Settings, fmt: str) -> tuple[int, tuple, int]:
    """Upload the archive of `members` as one stream or, when big enough, as parallel parts; return its
    size, the files that were read again and the parts composed (0: one stream). Failures come out as
    one-line errors."""
    from google.api_core.exceptions import PreconditionFailed

    total = sum(m.size for m in members)
    bar = transfer.progress_bar(total, f"upload {target.path}", settings)

    def metadata(archived) -> dict:
        return {CONTENT_KEY: ziplayout.content_hash(_content(archived, identity))}

    try:
        with storage.translated_errors(target, "upload to"):
            try:
                if fmt == "zip" and composite.parallel(total, settings.streams, location):
                    done = composite.upload_zip(bucket, target.path, location, members, comment, force=force,
                                                settings=settings, metadata=metadata,
                                                on_bytes=bar.update if bar else None)
                    return done.size, done.reread, done.parts
                blob = bucket.blob(target.path, chunk_size=settings.chunk_size)
                return _upload_consistent(blob, members, comment, force, settings, fmt, metadata, bar) + (0,)
            except PreconditionFailed:
                raise _PreconditionFailed() from None
    except FileNotFoundError:
        raise
    except OSError as exc:  # reading a member failed (network errors were translated above)
        raise UploadFailed(f"could not read {_origin(exc.filename, members) or 'a file'} while archiving: "
                           f"{exc.strerror or exc}; nothing was uploaded") from None
    finally:
        if bar is not None:
            bar.close()


def _upload_consistent(blob, members: list[ziplayout.Member], comment: bytes, force: bool, settings: Settings,
                       fmt: str, metadata, bar) -> tuple[int, tuple[str, ...]]:
    """Upload the archive as one stream; read it again (once its files settle) while one changes under us.

    Returns the size and the files that forced a re-read; an archive that keeps changing is a
    CheckpointChanging naming the file, and no object is left under the name.
    """
    reread: list[str] = []
    for attempt in range(packing.READ_TRIES):
        if attempt:
            packing.wait_until_quiet(m.path for m in members if m.strict)
            members = ziplayout.refreshed(members)
        started = time.monotonic()
        try:
            blob.metadata = metadata(members)
            size = _upload_archive(blob, members, started, comment, force, settings, fmt,
                                   bar.update if bar else None)
            return size, tuple(reread)
        except packing.FileChanged as exc:
            changed = next(m for m in members if m.path == exc.path)
            log.info("%s %s: reading the archive again once it settles", changed.shown, exc.what)
            reread.append(changed.name)
            changing = changed.shown
    raise CheckpointChanging(
        f"{changing} kept changing while it was read ({packing.READ_TRIES} tries): nothing was uploaded; "
        "save again once training has written it", path=changing)


def _upload_archive(blob, members: list[ziplayout.Member], started: float, comment: bytes, force: bool,
                    settings: Settings, fmt: str, on_bytes=None) -> int:
    """Stream a zip (or tar.gz) of `members` into `blob`; only a complete, crc32c-checked object ever exists.

    packing.FileChanged (a strict file changed while read, or within SETTLE_SECONDS of `started`) is
    raised before the upload's last chunk is sent, so nothing appears under the name.
    """
    strict = {m.path: m.signature for m in members if m.strict}

    def write(out) -> int:
        if fmt == "zip":
            layout = ziplayout.plan(members)
            written = ziplayout.write_job(out, layout, layout.segments[0], on_bytes=on_bytes)
            end = ziplayout.assemble(layout, {0: written}, comment).directory
        else:
            packing.write_targz(out, None, [m.path for m in members], names={m.path: m.name for m in members},
                                strict=strict, on_bytes=on_bytes)
            end = b""
        changed = packing.changed_since(strict, started)
        if changed:
            raise packing.FileChanged(changed[0], "changed while the archive was written")
        out.write(end)  # the zip's index last: only a complete, settled archive gets one
        return out.tell()  # BlobWriter.tell(): every byte written, the archive's size

    return transfer.upload_stream(blob, write, content_type=FORMATS[fmt],
                                  if_generation_match=None if force else 0, settings=settings)


# --- list and prune -----------------------------------------------------------------------------
def list_archives(destination: str | storage.GcsPath, run: str | None = None, *, recursive: bool = False,
                  settings: Settings | None = None, client=None) -> list[ArchiveInfo]:
    """Archives directly under `destination` (with `recursive`, under its sub-prefixes too), by prefix,
    run, then oldest upload first."""
    deadline = effective(settings).retry_deadline
    loc = storage.parse_url(destination) if isinstance(destination, str) else destination
    client = client or auth.storage_client()
    prefix = f"{loc.path}/" if loc.path else ""
    if run and not recursive:
        prefix += f"{run}."
    found = []
    with storage.translated_errors(loc, "list"):
        for blob in client.list_blobs(loc.bucket, prefix=prefix or None, delimiter=None if recursive else "/",
                                      **storage.request_options(deadline)):
            folder, _, base = blob.name.rpartition("/")
            if composite.is_part(blob.name):
                continue  # a parallel save's temporary part, never an archive
            match = ARCHIVE_NAME.match(base)
            if not match or (run and match.group("run") != run):
                continue
            found.append(ArchiveInfo(f"gs://{loc.bucket}/{blob.name}", match.group("run"),
                                     int(match.group("step")), blob.size or 0, blob.updated, blob.name,
                                     folder, "mtime" if match.group("mtime") else "name", blob.time_created,
                                     blob.generation))
    return sorted(found, key=lambda a: (a.prefix, a.run, a.recency))


def prune(destination: storage.GcsPath, run: str, keep: int, *, client=None,
          protect: str | None = None, spare_unless: frozenset | None = None,
          settings: Settings | None = None) -> tuple[str, ...]:
    """Delete all but the `keep` most recently uploaded archives of `run`, never `protect` (the URL
    a save just wrote); return the deleted URLs. An archive replaced or deleted meanwhile is left alone.

    `spare_unless`: the (name, generation) of the archives there were when the save started; any other
    one finished during the save (a concurrent saver's) and is never deleted by it.
    """
    from google.api_core.exceptions import NotFound, PreconditionFailed

    deadline = effective(settings).retry_deadline
    client = client or auth.storage_client()
    archives = list_archives(destination, run, client=client, settings=settings)
    doomed = [a for a in archives[: max(len(archives) - keep, 0)] if a.url != protect
              and (spare_unless is None or (a.name, a.generation) in spare_unless)]
    bucket = client.bucket(destination.bucket)
    deleted = []
    with storage.translated_errors(destination, "delete old archives in"):
        for info in doomed:
            try:
                bucket.blob(info.name).delete(if_generation_match=info.generation, **storage.request_options(deadline))
            except (NotFound, PreconditionFailed):
                continue
            deleted.append(info.url)
    return tuple(deleted)


# --- load ---------------------------------------------------------------------------------------
def resolve_archive(source: str, *, step: int | None = None, settings: Settings | None = None,
                    client=None) -> ArchiveInfo:
    """An archive URL as is, or a run URL (`gs://b/prefix/run1`) → its most recently uploaded
    archive, or with `step` its (most recent) archive of that step.

    The bucket is checked first (one request, at most `storage.EXISTS_CHECK_DEADLINE`), so a missing
    bucket is named as such.
    """
    deadline = effective(settings).retry_deadline
    loc = storage.parse_url(source)
    client = client or auth.storage_client()
    name = loc.path.rsplit("/", 1)[-1]
    if not name:
        raise ArchiveNotFound(f"{source} names no run: write gs://BUCKET[/PREFIX]/RUN or an archive URL")
    match = ARCHIVE_NAME.match(name)
    if match and step is not None:
        raise InvalidValue(Param("step"), " picks an archive of a run: give the run's URL "
                           f"(gs://{loc.bucket}/{loc.path[: -len(name)]}{match.group('run')}), not an archive's",
                           param="step")
    storage.require_bucket(client, loc, deadline)
    if match:
        return ArchiveInfo(loc.url, match.group("run"), int(match.group("step")), 0, None, loc.path,
                           loc.parent.path, "mtime" if match.group("mtime") else "name")
    parent = loc.parent
    archives = list_archives(parent, name, client=client, settings=settings)
    if not archives:
        raise ArchiveNotFound(f"no archives of run {name!r} under {parent}: ", do("list", parent.url),
                              " shows what is there")
    if step is None:
        return latest(archives)
    of_step = [a for a in archives if a.step == step and a.step_from == "name"]
    if not of_step:
        steps = sorted({a.step for a in archives if a.step_from == "name"})
        raise ArchiveNotFound(f"no archive of step {step} of run {name!r} under {parent}: "
                              f"steps archived: {', '.join(map(str, steps)) or 'none'}")
    return latest(of_step)


def load_run(source: str, target_dir, *, step: int | None = None, settings: Settings | None = None,
             client=None) -> Restored:
    """Restore an archive (or a run's latest, or its `step`) into `target_dir`; a bad archive leaves
    it untouched. Returns a Restored record whose str() is the checkpoint path. A zip is fetched by
    `settings.streams` parallel ranged reads (`Settings(streams=1)`: one stream)."""
    settings = effective(settings)
    check_streams(settings.streams)
    client = client or auth.storage_client()
    info = resolve_archive(source, step=step, client=client, settings=settings)
    return _restore(info, Path(target_dir).expanduser(), settings, client)


def _restore(info: ArchiveInfo, target: Path, settings: Settings, client) -> Restored:
    """Download and extract `info` (its bucket checked already) into `target`, all or nothing."""
    loc = storage.parse_url(info.url)
    bucket = client.bucket(loc.bucket)
    with storage.translated_errors(loc, "read"):
        blob = bucket.get_blob(info.name, **storage.request_options(settings.retry_deadline))
    if blob is None:
        raise ArchiveNotFound(f"{info.url} does not exist: ", do("list", loc.parent.url), " shows what is there")
    started = time.monotonic()
    with restore.Restore(target, info.url) as job:  # checks the target and recovers debris first
        with storage.translated_errors(loc, "download", bucket=bucket):
            files = _extract(blob, job.staging, settings, job.budget(blob.size or 0, settings))
        checkpoint = _prepare_checkpoint(job.staging, info.step if info.step_from == "name" else None)
        job.commit()  # the kept files linked in, then one swap: TARGET_DIR is old or new, never between
    return _restored(info, target, checkpoint, files, time.monotonic() - started)


def _restored(info: ArchiveInfo, target: Path, checkpoint: Path | None, files: tuple[Path, ...],
              seconds: float) -> Restored:
    """The record of a restore: paths below `target`, step and epoch as the layout records them."""
    path = target / checkpoint if checkpoint is not None else None
    found = position.read_position(path if path is not None else target, target)
    step = found.step if found.step is not None else (info.step if info.step_from == "name" else None)
    return Restored(info.url, target, path, step, tuple(target / f for f in files), seconds, found.epoch)


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


def resume(run_dir, destination: str, *, settings: Settings | None = None, client=None):
    """Restore the latest archive of RUN_DIR's run (RUN = its name) from gs://BUCKET[/PREFIX] into it.

    Returns `load_run`'s record, or a falsy `FreshStart` when the bucket holds no archive of the run,
    so the first cell of a notebook (or a job's first line) is the same on the first run and after a
    reset. A missing bucket is still an error: only "no archives yet" is a fresh start.
    """
    settings = effective(settings)
    check_streams(settings.streams)
    target = Path(run_dir).expanduser()
    location = storage.parse_url(destination)
    run = checkpoints.run_name(target)
    client = client or auth.storage_client()
    storage.require_bucket(client, location, settings.retry_deadline)
    archives = list_archives(location, run, client=client, settings=settings)
    if not archives:
        return FreshStart(run, location.url, target)
    return _restore(latest(archives), target, settings, client)


def _extract(blob, staging: Path, settings: Settings, budget: packing.Budget) -> tuple[Path, ...]:
    """Download `blob` into `staging`, checked (member CRCs, the object's crc32c); return its files,
    relative. A zip by `settings.streams` parallel ranged reads (`sliced`), a tar.gz as one stream."""
    bar = transfer.progress_bar(blob.size or 0, f"download {blob.name}", settings)
    try:
        if blob.name.endswith(".zip"):
            return sliced.restore_zip(blob, staging, budget, settings, on_bytes=bar.update if bar else None)
        options = storage.request_options(settings.retry_deadline)
        with blob.open("rb", chunk_size=settings.chunk_size, **options) as reader:
            tee = transfer.Crc32cTee(reader, bar)
            files = packing.extract_tar_stream(tee, staging, budget)
            tee.drain()
    finally:
        if bar is not None:
            bar.close()
    if blob.crc32c and tee.crc32c() != blob.crc32c:
        raise DownloadFailed(f"gs://{blob.bucket.name}/{blob.name} failed its crc32c check while downloading: "
                             "try again")
    return files


def _prepare_checkpoint(staging: Path, step: int | None) -> Path | None:
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
