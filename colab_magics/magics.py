"""ColabMagics: one short method per magic — parse the arguments, call a service, display.

Settings are traitlets, so `%config ColabMagics.chunk_size_mb = 200` works; precedence is
flag > %config > COLAB_MAGICS_* environment variable > default.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
from typing import Sequence

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, Unicode


from colab_magics.errors import ColabMagicsError, Dialect
from colab_magics.settings import DEFAULTS, NAMES, Settings, from_env, help_of


#: How the magics word a failure's parameters and remedies: `--keep`, `%gcs_auth --emulator`.
DIALECT = Dialect("magic", {
    "auth": "%gcs_auth", "save": "%gcs_save", "load": "%gcs_load", "list": "%gcs_list",
    "mount": "%gcsfuse_mount", "unmount": "%gcsfuse_mount --unmount", "mounts": "%gcsfuse_mount --list",
    "archive": "%gcs_archive", "archive_stop": "%gcs_archive --stop", "archive_status": "%gcs_archive --status",
    "tunnel": "%tensorboard_tunnel", "cleanup": "%gcs_cleanup",
})


def expected_errors(method):
    """Turn our expected failures into a one-line UsageError (IPython prints no traceback for it),
    worded in the dialect of whoever called the magic (`ColabMagics.dialect`: the CLI sets its own)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ColabMagicsError as exc:
            raise UsageError(self.dialect.render(exc)) from exc

    return wrapper


def parse(magic, line: str | Sequence[str], *, passthrough: bool = False) -> tuple[argparse.Namespace, list[str]]:
    """The one argument splitter of every magic and CLI command: `line` split by POSIX shell rules
    (quotes group and are removed, backslash escapes), then parsed by the magic's own parser.

    The CLI hands its argv list as is (no re-joining). With `passthrough`, everything after a
    standalone `--` is returned unparsed (e.g. TensorBoard's own flags); without it, `--` only ends
    the options, as in a shell. A `#` starting a word starts a comment, as in a shell
    (`%gcs_list gs://b/exp   # run, step, size`). Unbalanced quotes are a one-line UsageError.
    """
    if isinstance(line, str):
        try:
            argv = shlex.split(_without_comment(line))
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            raise UsageError(f"{exc.args[0].lower()} in: {line.strip()}") from None
    else:
        argv = list(line)
    rest: list[str] = []
    if passthrough and "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    return magic.parser.parse_args(argv), rest


def _without_comment(line: str) -> str:
    """`line` up to a shell comment: a `#` at the start of a word, outside quotes (`a#b` is a word)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


class _FromSettings:
    """A trait whose type, help and default come from `settings.Settings`; the default is read from
    COLAB_MAGICS_<NAME> when first used (`settings.from_env`), as the CLI and the Python API read it."""

    def __init__(self, name: str):
        super().__init__(help=help_of(name))
        self.tag(config=True)

    def default(self, obj=None):
        return getattr(from_env(), self.name)


class _Int(_FromSettings, Int):
    pass


class _Float(_FromSettings, Float):
    pass


class _Bool(_FromSettings, Bool):
    pass


class _Unicode(_FromSettings, Unicode):
    pass


def _setting(name: str):
    kind = {int: _Int, float: _Float, bool: _Bool, str: _Unicode}[type(getattr(DEFAULTS, name))]
    return kind(name)


@magics_class
class ColabMagics(Magics):
    """Checkpoints to Cloud Storage and back, TensorBoard tunnels and bucket mounts for notebook VMs."""

    chunk_size_mb = _setting("chunk_size_mb")
    retry_deadline = _setting("retry_deadline")
    progress = _setting("progress")
    emulator_dir = _setting("emulator_dir")
    restore_max_ratio = _setting("restore_max_ratio")
    restore_free_margin_mb = _setting("restore_free_margin_mb")
    streams = _setting("streams")
    restore_max_files = _setting("restore_max_files")
    tunnel_provider = _setting("tunnel_provider")
    tensorboard_timeout = _setting("tensorboard_timeout")
    ngrok_bin_dir = _setting("ngrok_bin_dir")
    ssh_known_hosts = _setting("ssh_known_hosts")
    every = _setting("every")
    final_timeout = _setting("final_timeout")

    #: the words of messages and notes: the magics' own, or the CLI's when it runs a magic's body
    dialect: Dialect = DIALECT

    def settings(self, **flags) -> Settings:
        """The settings as `%config` (else the environment, else the defaults) has them now, with the
        flags given (a None flag was not given)."""
        values = {name: getattr(self, name) for name in NAMES}
        return Settings(**{**values, **{k: v for k, v in flags.items() if v is not None}})

    def _listed(self, listing):
        """A listing shows its table at once (also when assigned, or run from a script) and is returned
        as the list of its rows; the CLI (no shell) prints the table itself."""
        return listing.show(self.shell) if self.shell is not None else listing

    # --- storage --------------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("project", nargs="?", help="Google Cloud project to use by default.")
    @argument("--key-file", metavar="PATH", help="Credentials JSON file: a service-account key, "
                                                "gcloud's user credentials or a workload-identity config.")
    @argument("--emulator", action="store_true",
              help="Use the bundled local GCS emulator (started if not running): no account needed.")
    @expected_errors
    def gcs_auth(self, line: str | Sequence[str] = ""):
        """Authenticate to Google Cloud and set the default project for the other magics.

        Order: --key-file (any credentials file google-auth reads) or --emulator → an externally set
        STORAGE_EMULATOR_HOST → GOOGLE_APPLICATION_CREDENTIALS → Colab's sign-in / Kaggle's Google
        Cloud Services add-on, else its Google Cloud SDK add-on → Application Default Credentials.

        Examples::

            %gcs_auth --emulator
            %gcs_auth my-project
            %gcs_auth my-project --key-file /content/key.json
        """
        from colab_magics import auth

        args, _ = parse(self.gcs_auth, line)
        info = auth.sign_in(args.project, key_file=args.key_file, emulator=args.emulator,
                            emulator_root=self.emulator_dir or None)
        print(f"Google Cloud: {info.identity} ({info.method}), project {info.project or '(none)'}")

    @line_magic
    @magic_arguments()
    @argument("run_dir", help="The run directory (its name becomes the archive's RUN).")
    @argument("destination", help="gs://BUCKET[/PREFIX] (or a bare bucket name).")
    @argument("--step", type=int, help="Save this step instead of the latest.")
    @argument("--events", action="store_true", help="Also archive every events.out.tfevents.* below RUN_DIR.")
    @argument("--force", action="store_true", help="Replace the archive if it already exists.")
    @argument("--keep", type=int, metavar="N", help="Then delete all but the N most recently uploaded archives "
                                                     "of this run (never the one just written).")
    @argument("--exclude", action="append", default=[], metavar="GLOB",
              help="Leave out files whose path, name or directory matches GLOB (repeatable).")
    @argument("--include", action="append", default=[], metavar="GLOB",
              help="Put back files that GLOB matches, e.g. an older step or some event files (repeatable).")
    @argument("--dry-run", action="store_true",
              help="Show the step, every file that would go in and what is left out; upload nothing.")
    @argument("--streams", type=int, metavar="N",
              help="Parallel uploads of one archive of 64 MiB or more, composed into the one object "
                   f"(default: the streams setting, {DEFAULTS.streams}); 1: one stream.")
    @expected_errors
    def gcs_save(self, line: str | Sequence[str] = ""):
        """Archive RUN_DIR's latest checkpoint into a bucket as RUN.STEP.zip; return its URL.

        Everything under RUN_DIR goes in except the other steps of each checkpoint series
        (`ckpt-{N}.*`, `checkpoint-{N}/`, ...), TensorBoard event files (unless --events) and what
        --exclude names. The archive is streamed (no temporary file), checked end to end by crc32c,
        and never overwrites an existing one unless --force. A file of the step that changes while
        it is read makes the step be read again; if it keeps changing the save fails and uploads
        nothing. An archive of 64 MiB or more is sent as --streams parallel parts composed into the
        one object; the temporary parts never outlive the save (see %gcs_cleanup).

        Examples::

            %gcs_save /content/runs/run1 gs://my-bucket/experiments --events
            url = %gcs_save runs/run1 my-bucket --step 1000 --keep 3
            %gcs_save runs/run1 my-bucket --dry-run --exclude '*.tmp' --exclude samples
            %gcs_save '/content/my run' gs://my-bucket
        """
        from colab_magics import runs

        args, _ = parse(self.gcs_save, line)
        if args.dry_run:
            print(_describe_plan(runs.plan_save(args.run_dir, args.destination, step=args.step, events=args.events,
                                                exclude=tuple(args.exclude), include=tuple(args.include))))
            return None
        result = runs.save_run(args.run_dir, args.destination, step=args.step, events=args.events,
                               force=args.force, keep=args.keep, settings=self.settings(streams=args.streams),
                               exclude=tuple(args.exclude), include=tuple(args.include))
        print(_describe_save(result, self.dialect))
        return result.url

    @line_magic
    @magic_arguments()
    @argument("source", help="gs://BUCKET[/PREFIX]/RUN.STEP.zip (or .tar.gz), or gs://BUCKET[/PREFIX]/RUN "
                             "for its most recently uploaded archive.")
    @argument("target_dir", help="Directory to restore into (created if missing).")
    @argument("--step", type=int, help="With a run URL: restore the archive of this step instead.")
    @argument("--streams", type=int, metavar="N", help="Parallel ranged reads of a zip (default: the `streams` "
                                                       f"setting, {DEFAULTS.streams}; 1: one stream).")
    @expected_errors
    def gcs_load(self, line: str | Sequence[str] = ""):
        """Restore an archive (or a run's latest) into TARGET_DIR; return the checkpoint.

        Extraction is checked and atomic: a corrupt or unsafe archive leaves TARGET_DIR as it was.
        The result is the checkpoint path (a str: open(), Path(), tf.train.load_checkpoint() take
        it) with .step and .epoch saying where training stopped, where the layout records it.

        Examples::

            %gcs_load gs://my-bucket/experiments/run1 /content/runs/run1
            ckpt = %gcs_load gs://my-bucket/run1.1000.zip runs/run1
            ckpt = %gcs_load gs://my-bucket/run1 runs/run1 --step 500
            model.fit(x, y, initial_epoch=ckpt.epoch, epochs=10)
        """
        from colab_magics import runs

        args, _ = parse(self.gcs_load, line)
        result = runs.load_run(args.source, args.target_dir, step=args.step,
                               settings=self.settings(streams=args.streams))
        print(_describe_load(result))
        return result

    @line_magic
    @magic_arguments()
    @argument("destination", help="gs://BUCKET[/PREFIX] the runs are archived under.")
    @argument("run", nargs="?", help="Only this run's archives.")
    @expected_errors
    def gcs_list(self, line: str | Sequence[str] = ""):
        """List the archives under a bucket prefix and every prefix below it (oldest upload first):
        prefix, run, step, size, time; show them (also when assigned) and return them.

        A checkpoint without a step number in its name is archived under its mtime and shown as
        such; the latest archive of a run is the most recently uploaded one, whatever its step.

        Examples::

            %gcs_list gs://my-bucket
            %gcs_list gs://my-bucket/experiments run1
        """
        from colab_magics import runs, storage
        from colab_magics.display import Table, TableList, human_size

        args, _ = parse(self.gcs_list, line)
        archives = runs.list_archives(args.destination, args.run, recursive=True, settings=self.settings())
        asked = storage.parse_url(args.destination).path
        rows = [(_relative(a.prefix, asked), a.run, _step_text(a), human_size(a.size), _when(a.updated), a.url)
                for a in archives]
        return self._listed(TableList(archives, Table(["prefix", "run", "step", "size", "updated", "url"], rows,
                                                      empty=f"no archives under {args.destination}")))

    @line_magic
    @magic_arguments()
    @argument("destination", help="gs://BUCKET[/PREFIX]: the parts folders there and under every prefix below it.")
    @expected_errors
    def gcs_cleanup(self, line: str | Sequence[str] = ""):
        """Delete now the temporary parts that interrupted parallel saves left under a bucket prefix
        (and below it); return how many were removed.

        A save of 64 MiB or more uploads its archive as parts under PREFIX/.colab_magics-parts/ and
        composes them into RUN.STEP.zip; a save that fails deletes them, but a killed process cannot.
        The next save to that prefix removes parts older than 6 hours; this removes them all at once
        (a save running right now then fails, leaving nothing). Listings never show parts.

        Examples::

            %gcs_cleanup gs://my-bucket
            %gcs_cleanup gs://my-bucket/experiments
        """
        from colab_magics import runs

        args, _ = parse(self.gcs_cleanup, line)
        result = runs.remove_debris(args.destination, settings=self.settings())
        print(f"Removed {len(result.removed)} part(s) left by interrupted saves under {result.url}")
        return len(result.removed)

    # --- tensorboard and tunnels ----------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("logdir", nargs="?", help="Directory TensorBoard reads (created if missing), or a gs:// URL.")
    @argument("--provider", help="ngrok | cloudflared | ssh | colab | local (default: the tunnel_provider "
                                 "setting, else colab in Colab, ngrok when NGROK_AUTHTOKEN is set, else local).")
    @argument("--port", type=int, help="Local port for TensorBoard (another is used if it is busy).")
    @argument("--auth", metavar="USER:PASS", help="Credentials the URL asks for, with any provider "
                                                   "(local included); default on ngrok, cloudflared and ssh: "
                                                   "user 'tensorboard' and a generated password.")
    @argument("--no-auth", action="store_true", help="Open the tunnel without a password (anyone with "
                                                     "the URL sees your TensorBoard).")
    @argument("--ssh", metavar="USER@HOST[:PORT]", help="Server for --provider ssh (ssh -R).")
    @argument("--ssh-key", metavar="PATH", help="Private key for --provider ssh.")
    @argument("--remote-port", type=int, default=0,
              help="Port opened on the ssh server (default: one the server picks).")
    @argument("--url", help="The public URL, when only you know it (e.g. your server's proxy for --ssh).")
    @argument("--stop", action="store_true", help="End the TensorBoard of LOGDIR and its tunnels "
                                                  "(all of them without LOGDIR).")
    @argument("--list", action="store_true", help="Show the running TensorBoards and tunnels.")
    @expected_errors
    def tensorboard_tunnel(self, line: str | Sequence[str] = ""):
        """Start (or reuse) TensorBoard for LOGDIR and make it reachable; return the URL.

        Flags after `--` go to TensorBoard unchanged. In Colab TensorBoard is shown in the output
        (provider colab). Every public tunnel (ngrok, cloudflared, ssh) asks for a password by
        default, shown once with the link: ngrok checks it itself, the others go through a
        basic-auth proxy on 127.0.0.1. --auth sets it on any provider, local included. A gs://
        LOGDIR is read by TensorBoard itself.

        Examples::

            %tensorboard_tunnel runs
            url = %tensorboard_tunnel runs --provider ngrok --auth me:long-password
            %tensorboard_tunnel runs --provider cloudflared
            %tensorboard_tunnel gs://my-bucket/logs
            %tensorboard_tunnel runs --provider local --auth me:correct-horse
            %tensorboard_tunnel runs --provider ssh --ssh me@myserver.example.com --remote-port 8080
            %tensorboard_tunnel runs -- --reload_interval 5 --samples_per_plugin images=100
            %tensorboard_tunnel --list
            %tensorboard_tunnel runs --stop
        """
        from colab_magics import tensorboard, tunnels
        from colab_magics.display import Table, TableList, show

        args, extra = parse(self.tensorboard_tunnel, line, passthrough=True)
        if args.list:
            rows = tensorboard.listing()
            return self._listed(TableList(rows, Table(["what", "serves", "url", "pid"], rows,
                                                      empty="no TensorBoard or tunnel running")))
        if args.stop:
            stopped = tensorboard.stop_served(args.logdir)
            print(f"Stopped {len(stopped.instances)} TensorBoard(s) and {len(stopped.tunnels)} tunnel(s)")
            return None
        if not args.logdir:
            raise UsageError(f"give the LOGDIR TensorBoard should read, e.g. {self.dialect.commands['tunnel']} runs")
        settings = self.settings()
        options = tunnels.TunnelOptions.from_settings(
            settings, auth=tunnels.parse_auth(args.auth) if args.auth else None, no_auth=args.no_auth,
            ssh_target=args.ssh, ssh_key=args.ssh_key, remote_port=args.remote_port, url=args.url)
        served = tensorboard.serve(args.logdir, args.provider, options, port=args.port, extra_args=extra,
                                   settings=settings)
        tensorboard.inline_view(served)
        show(served.link(self.dialect.render))
        return served.url

    # --- mounts ---------------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("bucket", nargs="?", help="Bucket name, gs://BUCKET or gs://BUCKET/DIR.")
    @argument("mount_point", nargs="?", help="Local directory (default /tmp/gcs-bucket/BUCKET).")
    @argument("--unmount", action="store_true", help="Unmount (waiting for uploads) and end the backend.")
    @argument("--list", action="store_true", help="Show the active bucket mounts.")
    @argument("--create", action="store_true", help="Create the bucket when it does not exist.")
    @argument("--location", help="Location of a bucket made by --create (e.g. asia-east1, EU).")
    @argument("--storage-class", help="Storage class of a bucket made by --create (e.g. STANDARD).")
    @argument("--only-dir", metavar="DIR", help="Mount only this directory (prefix) of the bucket.")
    @argument("--read-only", action="store_true", help="Mount read-only.")
    @argument("--backend", choices=["gcsfuse", "rclone"],
              help="Default: gcsfuse when installed, else rclone (installed with apt when root).")
    @argument("--install", action="store_true",
              help="Install gcsfuse from Google's apt repository when missing (Debian/Ubuntu, root).")
    @expected_errors
    def gcsfuse_mount(self, line: str | Sequence[str] = ""):
        """Mount a bucket on the local filesystem (gcsfuse or rclone over FUSE); return the local path.

        The mount outlives the cell; it is unmounted by --unmount, %unload_ext and interpreter exit.
        Files closed under the mount are uploaded at once; --unmount waits until they are.

        Examples::

            path = %gcsfuse_mount my-bucket
            %gcsfuse_mount my-bucket /content/ckpt --only-dir run1 --create --location EU
            %gcsfuse_mount gs://datasets/imagenet --read-only
            %gcsfuse_mount my-bucket --unmount
            %gcsfuse_mount --list
        """
        from colab_magics import mount
        from colab_magics.display import Table, TableList

        args, _ = parse(self.gcsfuse_mount, line)
        if args.list:
            mounts = mount.active_mounts()
            rows = [(m.mount_point, m.source, m.backend, "ro" if m.read_only else "rw", m.pid or "-")
                    for m in mounts]
            return self._listed(TableList(mounts, Table(["mount point", "source", "backend", "mode", "pid"], rows,
                                                        empty="no bucket mounts")))
        if not args.bucket:
            raise UsageError(f"give a BUCKET (or --list): {self.dialect.commands['mount']} BUCKET MOUNT_POINT")
        if args.unmount:  # BUCKET [MOUNT_POINT], or the mount point alone
            alone = args.mount_point is None and (os.sep in args.bucket or args.bucket.startswith("."))
            where = args.mount_point or (args.bucket if alone else mount.default_mount_point(args.bucket))
            result = mount.unmount(where)
            print(f"Unmounted {result.mount_point}")
            return result.mount_point
        result = mount.mount(args.bucket, args.mount_point, only_dir=args.only_dir, read_only=args.read_only,
                             create=args.create, location=args.location, storage_class=args.storage_class,
                             backend=args.backend, install=args.install, settings=self.settings())
        verb = "Already mounted" if result.reused else "Mounted"
        print(f"{verb} {result.url} at {result.mount_point} ({result.backend}"
              f"{', read-only' if result.read_only else ''}{', bucket created' if result.created_bucket else ''})")
        return result.mount_point

    # --- continuous archiving -------------------------------------------------------------------
    @line_cell_magic
    @magic_arguments()
    @argument("run_dir", nargs="?", help="The run directory the cell writes checkpoints into (it may not exist yet).")
    @argument("destination", nargs="?", help="gs://BUCKET[/PREFIX] (or a bare bucket name).")
    @argument("--every", metavar="INTERVAL",
              help="Shortest time between two archives: 90 (seconds), 30s, 10m, 1h (default: the `every` "
                   f"setting, {DEFAULTS.every}).")
    @argument("--events", action="store_true", help="Also archive every events.out.tfevents.* below RUN_DIR.")
    @argument("--keep", type=int, metavar="N", help="After each archive, delete all but the newest N of this run.")
    @argument("--exclude", action="append", default=[], metavar="GLOB",
              help="Leave out files whose path, name or directory matches GLOB (repeatable; see %%gcs_save).")
    @argument("--include", action="append", default=[], metavar="GLOB",
              help="Put back files that GLOB matches (repeatable).")
    @argument("--streams", type=int, metavar="N",
              help="Parallel uploads of one archive of 64 MiB or more (default: the streams setting); 1: one stream.")
    @argument("--stop", action="store_true", help="Line form: end the background archiving of RUN_DIR (of every "
                                                  "run without it) after a final archive; print the summary.")
    @argument("--status", action="store_true", help="Line form: show what each background archiver archived, "
                                                    "when, and its last error.")
    def gcs_archive(self, line: str | Sequence[str] = "", cell: str | None = None):
        """Archive RUN_DIR's newest checkpoint to a bucket from a background worker: while the cell runs
        (%%gcs_archive), or for the rest of the session (%gcs_archive, the line form).

        A new step is archived (as RUN.STEP.zip, like %gcs_save) at most once per --every; when
        the cell ends — normally, with an error or by the Stop button — the newest step is archived
        before the cell's exception is raised again, unchanged. Upload failures are logged and
        retried; they never stop training. Non-chief workers (TF_CONFIG, RANK, Horovod, MPI, SLURM,
        JAX multi-host, torch.distributed: see colab_magics.chief) archive nothing.
        SIGTERM and interpreter exit during the cell also archive the newest step first.

        The line form starts the same worker and returns at once: it archives while any later cell
        trains, until `%gcs_archive --stop` (a final archive, then the summary) or the kernel ends
        (a last-chance archive, within 20 s). `%gcs_archive --status` shows what it did.

        Examples::

            %%gcs_archive /content/runs/run1 gs://my-bucket/experiments --every 10m --keep 3
            model.fit(x, y, epochs=50, callbacks=[keras.callbacks.ModelCheckpoint(
                "/content/runs/run1/ckpt-{epoch:03d}.weights.h5", save_weights_only=True)])

            %gcs_archive /content/runs/run1 gs://my-bucket/experiments --every 10m
            %gcs_archive --status
            %gcs_archive --stop
        """
        __tracebackhide__ = True  # IPython hides this frame: the traceback shown is the cell's
        if cell is None:
            return self._archive_in_background(line)
        worker = self._start_archiver(line)
        try:
            return self._exec_cell(self.shell, cell, f"%%gcs_archive {line}")
        finally:
            print(describe_archiving(worker.stop(final=True), self.dialect))

    @expected_errors
    def _start_archiver(self, line: str):
        from colab_magics import archiver

        args, _ = parse(self.gcs_archive, line)
        if args.stop or args.status:
            raise UsageError("--stop and --status belong to the line form: %gcs_archive --status")
        _require_run(args, "%%gcs_archive")
        return archiver.Archiver(args.run_dir, args.destination, args.every or self.every, events=args.events,
                                 keep=args.keep, settings=self.settings(streams=args.streams),
                                 exclude=tuple(args.exclude), include=tuple(args.include)).start()

    @expected_errors
    def _archive_in_background(self, line: str):
        """The line form: start (or --stop, or show with --status) session-wide archiving."""
        from colab_magics import archiver
        from colab_magics.display import Table, TableList

        args, _ = parse(self.gcs_archive, line)
        if args.status:
            workers = archiver.background()
            rows = [_archiving_row(w.run_dir, w.summary(), self.dialect) for w in workers]
            return self._listed(TableList(workers, Table(["run dir", "destination", "archives", "last step",
                                                          "archived at", "last error"], rows,
                                                         empty="no background archiving")))
        if args.stop:
            summaries = archiver.stop_background(args.run_dir)
            for summary in summaries:
                print(describe_archiving(summary, self.dialect))
            if not summaries:
                print("No background archiving to stop")
            return None
        _require_run(args, "%gcs_archive")
        worker = archiver.start_background(args.run_dir, args.destination, args.every or self.every, events=args.events,
                                           keep=args.keep, settings=self.settings(streams=args.streams),
                                           exclude=tuple(args.exclude), include=tuple(args.include))
        summary = worker.summary()
        if summary.skipped:
            print(f"Archiving skipped: {summary.skipped}")
        else:
            print(f"Archiving {worker.run_dir} to {summary.destination} every {args.every or self.every} in the background, "
                  f"until %gcs_archive --stop or the end of the kernel")
        return None

    @line_magic
    @magic_arguments()
    @argument("run_dir", help="The run directory to restore into (its name is the run's RUN).")
    @argument("destination", help="gs://BUCKET[/PREFIX] the run is archived under.")
    @argument("--streams", type=int, metavar="N", help="Parallel ranged reads of a zip (default: the `streams` "
                                                       f"setting, {DEFAULTS.streams}; 1: one stream).")
    @expected_errors
    def gcs_resume(self, line: str = ""):
        """Restore the latest archive of RUN_DIR's run into RUN_DIR, if there is one; return the record.

        With nothing archived yet it is a fresh start, not an error: the result is falsy and says so,
        so the first cell of a notebook is the same on the first run and after a reset. A missing
        bucket is still an error.

        Examples::

            resumed = %gcs_resume /content/runs/run1 gs://my-bucket/experiments
            start_step = resumed.step if resumed else 0
        """
        from colab_magics import runs

        args, _ = parse(self.gcs_resume, line)
        result = runs.resume(args.run_dir, args.destination, settings=self.settings(streams=args.streams))
        print(_describe_load(result) if result else f"Fresh start: {result.note}")
        return result

    @staticmethod
    def _exec_cell(shell, cell: str, first_line: str):
        """Run `cell` in the user's namespace as run_cell would, exceptions untouched (the magic's
        finally re-raises them as they are); return a final expression's value so it shows as Out."""
        __tracebackhide__ = True
        import ast

        source = shell.transform_cell(cell)
        name = shell.compile.cache(f"{first_line}\n{source}", shell.execution_count)
        tree = shell.transform_ast(shell.compile.ast_parse(source, filename=name))
        ast.increment_lineno(tree, 1)  # line numbers as in the notebook cell, below the magic line
        last = ast.Expression(tree.body.pop().value) if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(shell.compile(tree, name, "exec"), shell.user_global_ns, shell.user_ns)
        if last is not None:
            return eval(shell.compile(last, name, "eval"), shell.user_global_ns, shell.user_ns)
        return None


def describe_archiving(summary, dialect: Dialect, *, more: tuple[str, ...] = (),
                       pending: str = "the final archive is still running in the background") -> str:
    """An archiver's summary in one line (the magics' and `colab-magics run`'s): what went up, what
    did not, the last failure in `dialect`'s words, then `more` and, when it applies, `pending`."""
    if summary.skipped:
        return f"Archiving skipped: {summary.skipped}"
    text = f"Archived {summary.archives} checkpoint(s) of {summary.run} to {summary.destination}"
    if summary.last_url:
        text += f"; last step {summary.last_step}: {summary.last_url}"
    else:
        text += "; nothing archived yet" if summary.pending else "; no checkpoint found"
    if summary.newest_step is not None and summary.newest_step != summary.last_step:
        text += f"; newest step {summary.newest_step} is NOT archived"
    if summary.failures:
        text += f"; {summary.failures} failed attempt(s), last: {dialect.render(summary.last_error)}"
    text += "".join(f"; {note}" for note in more)
    return text + (f"; {pending}" if summary.pending else "")


def _relative(prefix: str, asked: str) -> str:
    """Where an archive sits relative to the prefix asked about: "." for right there."""
    return prefix[len(asked):].strip("/") or "." if prefix.startswith(asked) else prefix


def _require_run(args, magic: str) -> None:
    if not (args.run_dir and args.destination):
        raise UsageError(f"give RUN_DIR and gs://BUCKET[/PREFIX]: {magic} runs/run1 gs://my-bucket/exp")


def _archiving_row(run_dir, summary, dialect: Dialect) -> tuple:
    from datetime import datetime, timezone

    when = datetime.fromtimestamp(summary.last_archived_at, timezone.utc) if summary.last_archived_at else None
    return (run_dir, summary.destination, summary.archives, summary.last_step if summary.last_step is not None else "-",
            _when(when), dialect.render(summary.last_error) if summary.last_error else "-")


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _describe_save(result, dialect: Dialect) -> str:
    from colab_magics.display import human_size

    if not result.uploaded:
        return f"Skipped {result.url}: {dialect.render(result.note)}"
    text = (f"Saved step {_step_text(result)} of {result.run} to {result.url} "
            f"({result.files} files, {human_size(result.size)}, {result.seconds:.1f} s"
            f"{f', {result.parts} parallel parts' if result.parts else ''})")
    if result.step_from == "mtime":
        text += "; no step number in the names: named by the newest file's time"
    if getattr(result, "kept", ()):
        text += f"; with {', '.join(result.kept)}, kept by the training library (its best)"
    if result.left_out_older:
        text += f"; {result.left_out_older} file(s) of older steps left out"
    if result.reread:
        text += f"; read again after {', '.join(dict.fromkeys(result.reread))} changed while read"
    if result.deleted:
        text += f"; deleted {', '.join(url.rsplit('/', 1)[-1] for url in result.deleted)}"
    return text


def _describe_plan(result) -> str:
    """A dry run: the step, every file with its size, and each group left out with its reason."""
    from colab_magics.display import Table, human_size

    step = (f"step {result.step}" if result.step_from != "mtime"
            else f"step {result.step} (the newest file's time: no step number in the names)")
    lines = [f"Dry run, nothing uploaded: would save {step} of {result.run} to {result.url}",
             f"Checkpoint: {result.checkpoint} ({result.layout}); "
             f"{len(result.files)} file(s), {human_size(result.size)}:"]
    table = Table(["file", "size"], [(path.as_posix(), human_size(size)) for path, size in result.files])
    lines += ["  " + row for row in str(table).splitlines()[1:]]
    for kept in getattr(result, "kept", ()):
        lines.append(f"Also kept, as the training library records: {kept.path.relative_to(result.root).as_posix()} "
                     f"({kept.why})")
    if result.left_out:
        lines.append("Left out:")
    for group in result.left_out:
        names = [p.relative_to(result.root).as_posix() for p in group.files[:3]]
        names += ["…"] if len(group.files) > 3 else []
        lines.append(f"  {group.reason}: {len(group.files)} file(s) ({', '.join(names)})")
    return "\n".join(lines)


def _describe_load(result) -> str:
    where = ", ".join(f"{k} {v}" for k, v in (("step", result.step), ("epoch", result.epoch)) if v is not None)
    text = (f"Restored {result.url} into {result.target} "
            f"({where + ', ' if where else ''}{len(result.files)} files, {result.seconds:.1f} s)")
    if result.checkpoint:
        text += f"\nCheckpoint: {result.checkpoint}"
    return text


def _step_text(record) -> str:
    """A step as shown: the number, or the mtime that stands in for one."""
    if getattr(record, "step_from", "name") != "mtime":
        return str(record.step)
    from datetime import datetime, timezone

    return f"(mtime {_when(datetime.fromtimestamp(record.step, timezone.utc))})"
