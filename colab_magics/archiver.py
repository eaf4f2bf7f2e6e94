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

import atexit
import json
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from colab_magics.errors import ColabMagicsError, InvalidInterval, NoCheckpointFound, RunDirError

log = logging.getLogger(__name__)

DEFAULT_EVERY = 600.0
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


# --- who archives in multi-worker training ------------------------------------------------------
def not_chief_reason(environ: dict | None = None) -> str | None:
    """Why this process is not the one that should archive, or None when it is (or runs alone).

    TF_CONFIG: the `chief` (or `master`) task archives; without one, worker 0 does. Otherwise
    RANK (or LOCAL_RANK when RANK is unset) must be 0, as torchrun / accelerate / Horovod set them.
    """
    env = os.environ if environ is None else environ
    raw = env.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
        except ValueError:
            log.warning("TF_CONFIG is not valid JSON; archiving as if this were the chief")
            config = {}
        task = config.get("task") or {}
        kind, index = str(task.get("type") or ""), int(task.get("index") or 0)
        cluster = config.get("cluster") or {}
        if kind in ("chief", "master"):
            return None
        if kind == "worker" and index == 0 and not ({"chief", "master"} & set(cluster)):
            return None
        if kind:
            return f"TF_CONFIG task is {kind}:{index}"
    for name in ("RANK", "LOCAL_RANK"):
        value = (env.get(name) or "").strip()
        if value:
            return None if value == "0" else f"{name}={value}"
    return None


def is_chief(environ: dict | None = None) -> bool:
    """True when this process should archive (see `not_chief_reason`)."""
    return not_chief_reason(environ) is None


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
    last_error: str | None = None
    skipped: str | None = None  # why nothing was archived at all (not the chief)
    pending: bool = False  # the final archive had not finished when we stopped waiting
    newest_step: int | None = None  # newest step on disk after the final archive (None: not looked)
    urls: tuple[str, ...] = field(default=(), repr=False)


# --- the worker ---------------------------------------------------------------------------------
class Archiver:
    """Archive RUN_DIR's newest checkpoint to DESTINATION from a background thread.

    `every` is the shortest time between two archives (seconds, or "10m"); `None` archives only on
    `archive_now()` and at `stop(final=True)`. `delay` holds the first archive back that long.
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
    ):
        from colab_magics import storage

        self.run_dir = Path(run_dir).expanduser()
        self.location = storage.parse_url(destination)  # fails fast on a bad URL, before training
        self.every = None if every is None else parse_interval(every)
        if keep is not None and keep < 1:
            raise ColabMagicsError("--keep must be at least 1: it counts the archives to keep, the new one included")
        from colab_magics.transfer import TransferSettings

        # no progress bars from a background thread: they would land in whatever cell is running
        settings = replace(settings or TransferSettings(), progress=False)
        self.events, self.keep, self.settings, self.fmt = events, keep, settings, fmt
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
        self._summary = ArchiveSummary(self.location.url, self.run_dir.name)

    # public API ---------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Archiver":
        """Start watching (or, on a non-chief worker, log one line and do nothing)."""
        if self._thread is not None:
            return self
        reason = not_chief_reason()
        if reason:
            log.info("not the chief worker (%s): archiving of %s skipped", reason, self.run_dir)
            self._summary = _replace(self._summary, skipped=f"not the chief worker ({reason})")
            return self
        if self._client is None:  # resolved here, not in the worker: auth may need the main thread
            from colab_magics import session

            self._client = session.current().storage_client()
        self._next_allowed = time.monotonic() + self._delay
        self._thread = threading.Thread(target=self._run, name="colab-magics-archiver", daemon=True)
        _last_chance.add(self)
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
            _last_chance.remove(self)
        if thread.is_alive():
            log.warning("the final archive of %s did not finish within %.0f s: it goes on in the background",
                        self.run_dir, timeout)
            self._summary = _replace(self._summary, pending=True)
        return self.summary()

    def summary(self) -> ArchiveSummary:
        return self._summary

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
        from colab_magics import runs

        ckpt = self._newest()
        if ckpt is None or ckpt.step in self._done:
            return
        step = ckpt.step
        if settle:  # a step counts once its files looked the same on two polls: not half-written
            signature = (ckpt.step, _signature(ckpt.files))
            previous, self._candidate = self._candidate, signature
            if signature != previous:
                # checkpoints come faster than we poll: take the previous newest if it is unchanged
                if previous is None or previous[0] in self._done or not self._unchanged(previous):
                    return
                step = previous[0]
        started = time.monotonic()
        try:
            pinned = step if ckpt.step_from == "name" else None  # an mtime is no step: save_run names it so
            result = runs.save_run(self.run_dir, self.location.url, step=pinned, events=self.events,
                                   keep=self.keep, settings=self.settings, client=self._client, fmt=self.fmt)
        except ColabMagicsError as exc:
            self._failed(step, str(exc))
        except Exception as exc:  # an unexpected library error: logged with its traceback, retried
            log.exception("archiving step %s of %s failed", step, self.run_dir)
            self._failed(step, f"{type(exc).__name__}: {exc}")
        else:
            self._done.add(step)
            s = self._summary
            if isinstance(result, runs.Saved):
                log.info("archived step %s of %s to %s", result.step, self.run_dir, result.url)
                s = _replace(s, archives=s.archives + 1, urls=s.urls + (result.url,))
            else:
                log.info("step %s of %s: %s", result.step, self.run_dir, result.reason)
            self._summary = _replace(s, last_step=result.step, last_url=result.url, run=result.run)
        finally:
            if self.every is not None:
                self._next_allowed = started + self.every

    def _failed(self, step: int, message: str) -> None:
        retry = f"retrying in {self.every:g} s" if self.every is not None else "retrying at the next request"
        log.warning("archiving step %s of %s failed (%s): %s", step, self.run_dir, retry, message)
        self._summary = _replace(self._summary, failures=self._summary.failures + 1, last_error=message)

    def _unchanged(self, candidate: tuple) -> bool:
        from colab_magics import checkpoints

        try:
            return candidate == (candidate[0], _signature(checkpoints.find_checkpoint(self.run_dir, candidate[0]).files))
        except (NoCheckpointFound, RunDirError, OSError):
            return False  # deleted meanwhile (a saver keeping only the last few)

    def _newest(self):
        from colab_magics import checkpoints

        try:
            return checkpoints.find_checkpoint(self.run_dir)
        except (NoCheckpointFound, RunDirError):
            return None  # nothing written yet
        except OSError as exc:  # a file vanished while we looked (a saver pruning old steps)
            log.debug("could not scan %s: %s", self.run_dir, exc)
            return None


def _signature(files) -> tuple:
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            return ()
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _replace(summary: ArchiveSummary, **changes) -> ArchiveSummary:
    return replace(summary, **changes)


# --- last-chance flush: atexit and SIGTERM while an archiver runs -------------------------------
class _LastChance:
    """Process-wide hooks, installed only while at least one archiver is active.

    SIGTERM: flush every active archiver (bounded), then hand the signal to the previous handler
    (re-delivering it when that was the default, so the process still ends as a SIGTERM would).
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._active: list[Archiver] = []
        self._previous = None
        self._installed = False

    def add(self, archiver: Archiver) -> None:
        with self._lock:
            if not self._active:
                atexit.register(self._at_exit)
                self._install()
            self._active.append(archiver)

    def remove(self, archiver: Archiver) -> None:
        with self._lock:
            if archiver in self._active:
                self._active.remove(archiver)
            if not self._active:
                atexit.unregister(self._at_exit)
                self._uninstall()

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("archiver started outside the main thread: no SIGTERM flush")
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _uninstall(self) -> None:
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # someone else's handler stays
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

    def flush(self, reason: str) -> None:
        """Final archive of every active archiver, all within one `last_chance_timeout`."""
        with self._lock:
            archivers = list(self._active)
        if not archivers:
            return
        deadline = time.monotonic() + max(a.last_chance_timeout for a in archivers)
        for archiver in archivers:
            log.warning("%s: archiving the newest step of %s before exiting", reason, archiver.run_dir)
            archiver.stop(final=True, timeout=max(deadline - time.monotonic(), 0.0))

    def _at_exit(self) -> None:
        self.flush("interpreter exit")

    def _on_sigterm(self, signum, frame) -> None:
        previous = self._previous
        self.flush("SIGTERM")
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: end the process as SIGTERM would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


_last_chance = _LastChance()
