"""The background worker behind `%%gcs_archive` and the training hooks.

An `Archiver` watches a run directory from a thread of its own and, whenever a new checkpoint step
appears, archives it through `runs.save_run` — at most once per interval, never the same step twice.
All polling, compression and upload happen in that thread (mostly in C code that releases the GIL),
so the training thread never waits on storage: it only shares the CPU the worker uses. Failures
are logged and retried at the next interval: archiving never raises into training. While an
archiver runs, interpreter exit and SIGTERM first flush the newest step (bounded in time), so a VM
reset costs at most one interval of work.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from colab_magics import auth, checkpoints, chief, packing, runs, session, storage
from colab_magics.errors import (
    AlreadyArchiving,
    ColabMagicsError,
    InvalidInterval,
    NoCheckpointFound,
    RunDirError,
    Words,
    check_keep,
    do,
)
from colab_magics.settings import DEFAULTS, check_streams, effective

log = logging.getLogger(__name__)

LAST_CHANCE_TIMEOUT = 20.0  # seconds a SIGTERM/exit flush may take (container runtimes allow ~10-30 s)
FINAL_TIMEOUT = 600.0
_MAX_POLL = 2.0
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|m|min|mins|h|hr|hrs)?\s*$", re.I)
_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600}


def parse_interval(text: str | float | int) -> float:
    """`"90"` / `"30s"` / `"10m"` / `"1h"` → seconds; InvalidInterval otherwise."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _INTERVAL.match(str(text))
        if not match:
            raise InvalidInterval(f"{text!r} is not an interval: write seconds (90) or a number with s, m or h "
                                  "(30s, 10m, 1h)")
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if seconds <= 0:
        raise InvalidInterval(f"interval {text!r} must be more than zero seconds")
    return seconds


DEFAULT_EVERY = parse_interval(DEFAULTS.every)


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveSummary:
    """What an archiver did: shown as one line by the magic, returned by `stop()`."""

    destination: str
    run: str
    archives: int = 0  # archives written (steps already in the bucket are not counted)
    last_step: int | None = None  # newest step known to be in the bucket
    last_url: str | None = None
    failures: int = 0
    last_error: str | Words | None = None  # Words: a failure of ours, for the front end to word
    skipped: str | None = None  # why nothing was archived at all (not the chief)
    pending: bool = False  # the final archive had not finished when we stopped waiting
    newest_step: int | None = None  # newest step on disk after the final archive (None: not looked)
    last_archived_at: float | None = None  # time.time() of the last archive written (or found already there)
    urls: tuple[str, ...] = field(default=(), repr=False)


# --- the worker ---------------------------------------------------------------------------------
class Archiver:
    """Archive RUN_DIR's newest checkpoint to DESTINATION from a background thread.

    `every` is the shortest time between two archives (seconds, or "10m"); `None` archives only on
    `archive_now()`, `notify()` and at `stop(final=True)`. `delay` holds the first archive back that
    long. `pinned`, a callable returning paths, names checkpoints the training library keeps (a
    callback's best ones): each archive holds them too.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        destination: str,
        every: float | str | None = DEFAULT_EVERY,
        *,
        events: bool = False,
        keep: int | None = None,
        settings=None,
        fmt: str = "zip",
        delay: float = 0.0,
        last_chance_timeout: float = LAST_CHANCE_TIMEOUT,
        client=None,
        exclude: tuple[str, ...] = (),
        include: tuple[str, ...] = (),
        pinned=None,
    ):
        self.run_dir = Path(run_dir).expanduser()
        self.location = storage.parse_url(destination)  # fails fast on a bad URL, before training
        self.every = None if every is None else parse_interval(every)
        check_keep(keep)
        # no progress bars from a background thread: they would land in whatever cell is running
        settings = effective(settings).replace(progress=False)
        check_streams(settings.streams)  # a bad stream count fails now, not at the first archive
        self.events, self.keep, self.settings, self.fmt = events, keep, settings, fmt
        self.exclude, self.include = tuple(exclude), tuple(include)  # passed to save_run as they are
        self.pinned = pinned  # () -> paths the training library keeps (its best checkpoints), asked at each save
        self._checked = False  # the first look says so when RUN_DIR holds nothing to archive
        self.last_chance_timeout = last_chance_timeout
        self._client = client
        self._poll = _MAX_POLL if self.every is None else min(max(self.every / 10, 0.05), _MAX_POLL)
        self._delay = delay
        self._lock = threading.RLock()  # RLock: the SIGTERM handler may run while the main thread holds it
        self._looked = threading.Condition(self._lock)
        self._served = 0  # archive_now() requests handled (archive_now(wait=True) waits for its own)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_allowed = 0.0
        self._now_requested = self._fresh = self._stopping = self._final = False
        self._candidate: tuple | None = None
        self._done: set[int] = set()
        self._summary = ArchiveSummary(self.location.url, checkpoints.run_name(self.run_dir))
        self.background = False  # started by start_background: the session finds it by its run dir
        self._session: session.Session | None = None  # the session tracking it while it runs
        self._closing_deadline: float | None = None

    closes_at = session.CLOSES_AT["archiver"]

    @property
    def key(self):
        """How the session knows it: its run directory (background ones), else itself."""
        return self.run_dir.absolute() if self.background else self

    # public API ---------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_destination(self) -> None:
        """On the chief, fail now when the bucket cannot be reached (one bounded request), not silently
        after hours of training."""
        if chief.is_chief():
            storage.require_bucket(self._client or auth.storage_client(), self.location, self.settings.retry_deadline)

    def start(self) -> "Archiver":
        """Start watching (or, on a non-chief worker, log one line and do nothing)."""
        if self._thread is not None:
            return self
        reason = chief.not_chief_reason()
        if reason:
            log.info("not the chief worker (%s): archiving of %s skipped", reason, self.run_dir)
            self._summary = _replace(self._summary, skipped=f"not the chief worker ({reason})")
            return self
        if self._client is None:  # resolved here, not in the worker: auth may need the main thread
            self._client = auth.storage_client()
        self._next_allowed = time.monotonic() + self._delay
        self._thread = threading.Thread(target=self._run, name="colab-magics-archiver", daemon=True)
        self._session = session.current()
        self._session.track(self, self.key)  # SIGTERM/SIGHUP and exit flush it first
        self._thread.start()
        return self

    def archive_now(self, wait: bool = False, timeout: float = FINAL_TIMEOUT) -> ArchiveSummary:
        """Archive the newest step as soon as the worker is free, whatever the interval."""
        with self._lock:
            before = self._served
            self._now_requested = True
            self._wake.set()
            if wait:
                deadline = time.monotonic() + timeout
                while self._served == before and self.active and time.monotonic() < deadline:
                    self._looked.wait(min(deadline - time.monotonic(), 0.5))
        return self.summary()

    def notify(self, *args, **kwargs) -> None:
        """A checkpoint was just written (a saver callback): look now, no need to wait for it to settle.

        Takes any arguments, so it can be given as is to `tf_hooks.SaverWithCallback`.
        """
        with self._lock:
            self._fresh = True
        self._wake.set()

    def stop(self, final: bool = True, timeout: float = FINAL_TIMEOUT) -> ArchiveSummary:
        """Stop watching; with `final`, first archive the newest step if it is not in the bucket yet.

        Waits at most `timeout` seconds; a final archive still running then goes on in the background
        (`pending` in the summary). Never raises for an upload failure.
        """
        thread = self._thread
        if thread is None:
            return self.summary()
        with self._lock:
            self._stopping, self._final = True, final
        self._wake.set()
        try:
            thread.join(timeout)
        except KeyboardInterrupt:
            log.warning("stopped waiting for the final archive of %s: it goes on in the background", self.run_dir)
            self._summary = _replace(self._summary, pending=True)
            raise
        finally:
            if self._session is not None:
                self._session.untrack(self, self.key)
        if thread.is_alive():
            log.warning("the final archive of %s did not finish within %.0f s: it goes on in the background",
                        self.run_dir, timeout)
            self._summary = _replace(self._summary, pending=True)
        return self.summary()

    def summary(self) -> ArchiveSummary:
        return self._summary

    # the session's shutdown (atexit, SIGTERM, SIGHUP, %unload_ext) ------------------------------
    def begin_close(self, reason: str) -> None:
        """Start the final archive now; every archiver of the session starts its own at once."""
        if not self.active:
            return
        log.warning("%s: archiving the newest step of %s before exiting", reason, self.run_dir)
        self._closing_deadline = time.monotonic() + self.last_chance_timeout
        with self._lock:
            self._stopping, self._final = True, True
        self._wake.set()

    def close(self, urgent: bool = False) -> None:
        """Stop after a final archive, within `last_chance_timeout` of `begin_close`."""
        deadline = self._closing_deadline or time.monotonic() + self.last_chance_timeout
        self.stop(final=True, timeout=max(deadline - time.monotonic(), 0.0))

    def __enter__(self) -> "Archiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(final=True)

    # the worker thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if self.every is None:
                    wait = 60.0
                else:
                    wait = self._poll if now >= self._next_allowed else self._next_allowed - now
                self._wake.wait(wait)
                self._wake.clear()
                with self._lock:
                    if self._stopping:
                        break
                    asked, self._now_requested = self._now_requested, False
                    if self.every is None:  # archives only when asked, or told of a new checkpoint
                        due = asked or self._fresh
                    else:
                        due = asked or time.monotonic() >= self._next_allowed
                    fresh = self._fresh and due
                    if due:
                        self._fresh = False
                if due:
                    self._look(settle=not (asked or fresh), asked=asked)
            if self._final:
                self._look(settle=False)
                newest = self._newest()
                self._summary = _replace(self._summary, newest_step=newest.step if newest else None)
        except BaseException:  # never into training: a bug here must not kill anything but this thread
            log.exception("the archiver of %s stopped on an unexpected error", self.run_dir)

    def _look(self, settle: bool, asked: bool = False) -> None:
        try:
            self._attempt(settle)
        finally:
            if asked:
                with self._lock:
                    self._served += 1
                    self._looked.notify_all()

    def _attempt(self, settle: bool) -> None:
        """Archive the newest step if it is new (and, when `settle`, unchanged since the last poll)."""
        ckpt = self._newest()
        if ckpt is None or ckpt.step in self._done:
            return
        step = ckpt.step
        if settle and not ckpt.designated:  # a step counts once its files looked the same on two polls: not
            # half-written (a step a framework's pointer names is whole already: TF saves faster than we poll)
            signature = (ckpt.step, _signature(ckpt.files))
            previous, self._candidate = self._candidate, signature
            if signature != previous:
                # checkpoints come faster than we poll: take the previous newest if it is unchanged (a
                # whole directory named by its mtime has no previous step: it waits for a quiet poll)
                if previous is None or previous[0] in self._done or ckpt.layout == "directory" \
                        or not self._unchanged(previous):
                    return
                step = previous[0]
        started = time.monotonic()
        try:
            at = step if ckpt.step_from != "mtime" else None  # an mtime is no step: save_run names it so
            result = runs.save_run(self.run_dir, self.location.url, step=at, events=self.events,
                                   keep=self.keep, settings=self.settings, client=self._client, fmt=self.fmt,
                                   exclude=self.exclude, include=self.include, pinned=self._pinned())
        except ColabMagicsError as exc:
            self._failed(step, Words(*exc.args))
        except Exception as exc:  # an unexpected library error: logged with its traceback, retried
            log.exception("archiving step %s of %s failed", step, self.run_dir)
            self._failed(step, f"{type(exc).__name__}: {exc}")
        else:
            if result.outcome == "vanished":
                log.info("step %s of %s: %s", result.step, self.run_dir, result.note)
                return  # deleted by the library while we read it: not in the bucket; a newer step comes next
            self._done.add(step)
            s = self._summary
            if result.uploaded:
                log.info("archived step %s of %s to %s", result.step, self.run_dir, result.url)
                s = _replace(s, archives=s.archives + 1, urls=s.urls + (result.url,))
            else:
                log.info("step %s of %s: %s", result.step, self.run_dir, result.note)
            self._summary = _replace(s, last_step=result.step, last_url=result.url, run=result.run,
                                     last_archived_at=time.time())
        finally:
            if self.every is not None:
                self._next_allowed = started + self.every

    def _failed(self, step: int, message: str | Words) -> None:
        retry = f"retrying in {self.every:g} s" if self.every is not None else "retrying at the next request"
        log.warning("archiving step %s of %s failed (%s): %s", step, self.run_dir, retry, message)
        self._summary = _replace(self._summary, failures=self._summary.failures + 1, last_error=message)

    def _unchanged(self, candidate: tuple) -> bool:
        try:
            return candidate == (candidate[0], _signature(checkpoints.find_checkpoint(
                self.run_dir, candidate[0], exclude=self.exclude, include=self.include, events=self.events).files))
        except (NoCheckpointFound, RunDirError, OSError):
            return False  # deleted meanwhile (a saver keeping only the last few)

    def _newest(self):
        try:
            found = checkpoints.find_checkpoint(self.run_dir, exclude=self.exclude, include=self.include,
                                                events=self.events)
        except RunDirError as exc:  # nothing written yet (or nothing we would archive)
            self._first_look(exc)
            return None
        except OSError as exc:  # a file vanished while we looked (a saver pruning old steps)
            log.debug("could not scan %s: %s", self.run_dir, exc)
            return None
        self._checked = True
        return found

    def _first_look(self, exc: RunDirError) -> None:
        """At the first look only: one line when RUN_DIR holds nothing this archiver would archive,
        saying what it looks for, so a wrong path or format shows before hours of training."""
        if self._checked:
            return
        self._checked = True
        try:
            why = "does not exist" if not self.run_dir.exists() else "is empty" if not any(self.run_dir.iterdir()) \
                else None
        except OSError:
            why = None
        if why is None or isinstance(exc, NoCheckpointFound):  # the error says what is there and what we look for
            log.warning("%s", Words(*exc.args))
        else:
            log.warning("nothing to archive yet: %s %s; looking for %s", self.run_dir, why, checkpoints.LOOKED_FOR)

    def _pinned(self) -> tuple[str, ...]:
        """The paths the training library keeps, from the `pinned` callable (its failure: none)."""
        if self.pinned is None:
            return ()
        try:
            return tuple(str(p) for p in self.pinned() if p)
        except Exception as exc:  # a callback object in a state we did not foresee: archive without them
            log.debug("could not ask for the kept checkpoints: %s", exc)
            return ()


def _signature(files) -> tuple:
    """What two polls compare to call a step settled: each file's name, size and mtime (not its
    ctime or link count, which a save's hard-link snapshot moves); () while one is missing."""
    try:
        seen = packing.signatures(files)
    except OSError:  # unreadable now (a saver mid-rotation): not settled
        return ()
    if None in seen.values():
        return ()
    return tuple((path.name, sig.size, sig.mtime_ns) for path, sig in seen.items())


def _replace(summary: ArchiveSummary, **changes) -> ArchiveSummary:
    return replace(summary, **changes)


# --- session-wide archiving: the line form of %gcs_archive ----------------------------------------
def start_background(run_dir: str | os.PathLike, destination: str, every: float | str | None = DEFAULT_EVERY,
                     **options) -> Archiver:
    """Start an archiver that lasts until `stop_background` or the end of the session (kernel).

    One per run directory: a second one for the same directory is refused (AlreadyArchiving). The
    bucket is checked first (one bounded request, on the chief only), as `colab-magics run` does, so a
    wrong name fails now, not silently for the rest of the session.
    """
    key = Path(run_dir).expanduser().absolute()
    existing = session.current().get(Archiver, key)
    if existing is not None and existing.active:
        raise AlreadyArchiving(f"{key} is already archived in the background to {existing.location.url}: ",
                               do("archive_stop", str(key)), " first")
    worker = Archiver(key, destination, every, **options)
    worker.check_destination()
    worker.background = True  # tracked under its run dir while it runs; the shutdown gives it a final archive
    return worker.start()


def background() -> list[Archiver]:
    """The session's background archivers (started by `start_background`), oldest first."""
    return [a for a in session.current().items(Archiver) if a.background]


def stop_background(run_dir: str | os.PathLike | None = None, timeout: float = FINAL_TIMEOUT) -> list[ArchiveSummary]:
    """Stop the background archiver of `run_dir` (every one when None) after a final archive each."""
    if run_dir is None:
        found_workers = background()
    else:
        key = Path(run_dir).expanduser().absolute()
        found = session.current().get(Archiver, key)
        if found is None:
            raise ColabMagicsError(f"{key} is not archived in the background: ", do("archive_status"),
                                   " shows what is")
        found_workers = [found]
    deadline = time.monotonic() + timeout  # one deadline for all of them, as the last-chance flush
    return [w.stop(final=True, timeout=max(deadline - time.monotonic(), 0.0)) for w in found_workers]
