"""ColabMagics: one short method per magic — parse the arguments, call a service, display.

Settings are traitlets, so `%config ColabMagics.chunk_size_mb = 200` works; precedence is
flag > %config > COLAB_MAGICS_* environment variable > default.
"""

from __future__ import annotations

import functools
import os

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Float, Int, Unicode, default

from colab_magics.errors import ColabMagicsError


def expected_errors(method):
    """Turn our expected failures into a one-line UsageError (IPython prints no traceback for it)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except ColabMagicsError as exc:
            raise UsageError(str(exc)) from exc

    return wrapper


def _env(name: str, default, kind=str):
    value = os.environ.get(f"COLAB_MAGICS_{name.upper()}")
    if value is None:
        return default
    if kind is bool:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return kind(value)


@magics_class
class ColabMagics(Magics):
    """Checkpoints to Cloud Storage and back, TensorBoard tunnels and bucket mounts for notebook VMs."""

    chunk_size_mb = Int(help="Upload/download chunk size in MiB (resumable-upload chunk; memory ≈ 2 chunks).").tag(config=True)
    retry_deadline = Float(help="Seconds a transfer keeps retrying transient errors before failing.").tag(config=True)
    progress = Bool(help="Show progress bars for transfers of 64 MiB or more.").tag(config=True)
    emulator_dir = Unicode(help="Where `%gcs_auth --emulator` keeps the local emulator's data.").tag(config=True)

    @default("chunk_size_mb")
    def _chunk_size_default(self):
        return _env("chunk_size_mb", 100, int)

    @default("retry_deadline")
    def _retry_deadline_default(self):
        return _env("retry_deadline", 120.0, float)

    @default("progress")
    def _progress_default(self):
        return _env("progress", True, bool)

    @default("emulator_dir")
    def _emulator_dir_default(self):
        from colab_magics.emulator import default_root

        return _env("emulator_dir", str(default_root()))

    def transfer_settings(self):
        from colab_magics.transfer import TransferSettings

        return TransferSettings(
            chunk_size=self.chunk_size_mb * 1024 * 1024,
            retry_deadline=self.retry_deadline,
            progress=self.progress,
        )

    # --- storage --------------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("project", nargs="?", help="Google Cloud project to use by default.")
    @argument("--key-file", metavar="PATH", help="Service-account JSON key file.")
    @argument("--emulator", action="store_true",
              help="Use the bundled local GCS emulator (started if not running): no account needed.")
    @expected_errors
    def gcs_auth(self, line: str = ""):
        """Authenticate to Google Cloud and set the default project for the other magics.

        Order: the emulator (--emulator or STORAGE_EMULATOR_HOST) → --key-file (or
        GOOGLE_APPLICATION_CREDENTIALS) → Colab's sign-in / Kaggle's integration → Application
        Default Credentials.

        Examples::

            %gcs_auth --emulator
            %gcs_auth my-project
            %gcs_auth my-project --key-file /content/key.json
        """
        from colab_magics import auth, session

        args = parse_argstring(self.gcs_auth, line)
        info = auth.authenticate(args.project, key_file=args.key_file, emulator=args.emulator,
                                 emulator_root=self.emulator_dir)
        session.current().set_auth(info)
        if info.project and info.method != "emulator":
            auth.set_gcloud_project(info.project)
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
    @expected_errors
    def gcs_save(self, line: str = ""):
        """Archive the latest checkpoint of RUN_DIR into a bucket as RUN.STEP.zip; return its URL.

        The archive is streamed (no temporary file), checked end to end by crc32c, and never
        overwrites an existing one unless --force. A file of the step that changes while it is read
        makes the step be read again; if it keeps changing the save fails and uploads nothing.

        Examples::

            %gcs_save /content/runs/run1 gs://my-bucket/experiments --events
            url = %gcs_save runs/run1 my-bucket --step 1000 --keep 3
        """
        from colab_magics import runs

        args = parse_argstring(self.gcs_save, line)
        result = runs.save_run(args.run_dir, args.destination, step=args.step, events=args.events,
                               force=args.force, keep=args.keep, settings=self.transfer_settings())
        print(_describe_save(result))
        return result.url

    @line_magic
    @magic_arguments()
    @argument("source", help="gs://BUCKET[/PREFIX]/RUN.STEP.zip (or .tar.gz), or gs://BUCKET[/PREFIX]/RUN "
                             "for its most recently uploaded archive.")
    @argument("target_dir", help="Directory to restore into (created if missing).")
    @argument("--step", type=int, help="With a run URL: restore the archive of this step instead.")
    @expected_errors
    def gcs_load(self, line: str = ""):
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

        args = parse_argstring(self.gcs_load, line)
        result = runs.load_run(args.source, args.target_dir, step=args.step, settings=self.transfer_settings())
        print(_describe_load(result))
        return result

    @line_magic
    @magic_arguments()
    @argument("location", help="gs://BUCKET[/PREFIX]")
    @argument("run", nargs="?", help="Only this run's archives.")
    @expected_errors
    def gcs_list(self, line: str = ""):
        """List the archives under a bucket prefix (oldest upload first): run, step, size, time; return them.

        A checkpoint without a step number in its name is archived under its mtime and shown as
        such; the latest archive of a run is the most recently uploaded one, whatever its step.

        Examples::

            %gcs_list gs://my-bucket/experiments
            %gcs_list gs://my-bucket run1
        """
        from colab_magics import runs
        from colab_magics.display import Table, TableList, human_size

        args = parse_argstring(self.gcs_list, line)
        archives = runs.list_archives(args.location, args.run)
        rows = [(a.run, _step_text(a), human_size(a.size), _when(a.updated), a.url) for a in archives]
        return TableList(archives, Table(["run", "step", "size", "updated", "url"], rows,
                                         empty=f"no archives under {args.location}"))

    # --- tensorboard and tunnels ----------------------------------------------------------------
    tunnel_provider = Unicode(
        help="Default provider of %tensorboard_tunnel (ngrok, cloudflared, ssh, colab, local); "
             "empty: colab inside Colab, ngrok when NGROK_AUTHTOKEN is set, else local.",
    ).tag(config=True)
    tensorboard_timeout = Float(
        help="Seconds to wait for TensorBoard (and the tunnel) to answer before giving up.",
    ).tag(config=True)
    ngrok_bin_dir = Unicode(
        help="Directory of the ngrok agent (installed there if missing); empty: pyngrok's default.",
    ).tag(config=True)
    ssh_known_hosts = Unicode(
        help="known_hosts file for --provider ssh; empty: ssh's own (~/.ssh/known_hosts).",
    ).tag(config=True)

    @default("tunnel_provider")
    def _tunnel_provider_default(self):
        return _env("tunnel_provider", "")

    @default("tensorboard_timeout")
    def _tensorboard_timeout_default(self):
        return _env("tensorboard_timeout", 90.0, float)

    @default("ngrok_bin_dir")
    def _ngrok_bin_dir_default(self):
        return _env("ngrok_bin_dir", "")

    @default("ssh_known_hosts")
    def _ssh_known_hosts_default(self):
        return _env("ssh_known_hosts", "")

    @line_magic
    @magic_arguments()
    @argument("logdir", nargs="?", help="Directory TensorBoard reads (created if missing).")
    @argument("--provider", help="ngrok | cloudflared | ssh | colab | local (default: see %%config "
                                 "ColabMagics.tunnel_provider).")
    @argument("--port", type=int, help="Local port for TensorBoard (another is used if it is busy).")
    @argument("--auth", metavar="USER:PASS", help="Credentials the tunnel asks for (ngrok); "
                                                   "default: user 'tensorboard' and a generated password.")
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
    def tensorboard_tunnel(self, line: str = ""):
        """Start (or reuse) TensorBoard for LOGDIR and make it reachable; return the URL.

        Flags after `--` go to TensorBoard unchanged. The ngrok tunnel asks for a password by
        default (shown once, with the link); cloudflared quick tunnels cannot.

        Examples::

            %tensorboard_tunnel runs
            url = %tensorboard_tunnel runs --provider ngrok --auth me:long-password
            %tensorboard_tunnel runs --provider cloudflared
            %tensorboard_tunnel runs --provider ssh --ssh me@myserver.example.com --remote-port 8080
            %tensorboard_tunnel runs -- --reload_interval 5 --samples_per_plugin images=100
            %tensorboard_tunnel --list
            %tensorboard_tunnel runs --stop
        """
        from colab_magics import tensorboard, tunnels
        from colab_magics.display import Table, TableList, show

        args, extra = _split_passthrough(self.tensorboard_tunnel.parser, line)
        if args.list:
            rows = tensorboard.listing()
            return TableList(rows, Table(["what", "serves", "url", "pid"], rows,
                                         empty="no TensorBoard or tunnel running"))
        if args.stop:
            stopped = tensorboard.stop_served(args.logdir)
            print(f"Stopped {len(stopped.instances)} TensorBoard(s) and {len(stopped.tunnels)} tunnel(s)")
            return None
        if not args.logdir:
            raise UsageError("give the LOGDIR TensorBoard should read, e.g. %tensorboard_tunnel runs")
        options = tunnels.TunnelOptions(
            auth=tunnels.parse_auth(args.auth) if args.auth else None, no_auth=args.no_auth,
            ssh_target=args.ssh, ssh_key=args.ssh_key, ssh_known_hosts=self.ssh_known_hosts or None,
            remote_port=args.remote_port, url=args.url, timeout=self.tensorboard_timeout,
            bin_dir=self.ngrok_bin_dir or None,
        )
        served = tensorboard.serve(args.logdir, args.provider or self.tunnel_provider or None, options,
                              port=args.port, extra_args=extra, timeout=self.tensorboard_timeout)
        show(served.link())
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
    def gcsfuse_mount(self, line: str = ""):
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

        args = parse_argstring(self.gcsfuse_mount, line)
        if args.list:
            mounts = mount.active_mounts()
            rows = [(m.mount_point, m.source, m.backend, "ro" if m.read_only else "rw", m.pid or "-")
                    for m in mounts]
            return TableList(mounts, Table(["mount point", "source", "backend", "mode", "pid"], rows,
                                           empty="no bucket mounts"))
        if not args.bucket:
            raise UsageError("give a BUCKET (or --list): %gcsfuse_mount BUCKET [MOUNT_POINT]")
        if args.unmount:
            where = args.mount_point or mount.default_mount_point(args.bucket)
            result = mount.unmount(where)
            print(f"Unmounted {result.mount_point}")
            return result.mount_point
        result = mount.mount(args.bucket, args.mount_point, only_dir=args.only_dir, read_only=args.read_only,
                             create=args.create, location=args.location, storage_class=args.storage_class,
                             backend=args.backend, install=args.install)
        verb = "Already mounted" if result.reused else "Mounted"
        print(f"{verb} {result.url} at {result.mount_point} ({result.backend}"
              f"{', read-only' if result.read_only else ''}{', bucket created' if result.created_bucket else ''})")
        return result.mount_point

    # --- continuous archiving -------------------------------------------------------------------
    @cell_magic
    @magic_arguments()
    @argument("run_dir", help="The run directory the cell writes checkpoints into (it may not exist yet).")
    @argument("destination", help="gs://BUCKET[/PREFIX] (or a bare bucket name).")
    @argument("--every", default="10m", metavar="INTERVAL",
              help="Shortest time between two archives: 90 (seconds), 30s, 10m, 1h (default 10m).")
    @argument("--events", action="store_true", help="Also archive every events.out.tfevents.* below RUN_DIR.")
    @argument("--keep", type=int, metavar="N", help="After each archive, delete all but the newest N of this run.")
    def gcs_archive(self, line: str = "", cell: str = ""):
        """Run the cell while a background worker archives RUN_DIR's newest checkpoint to a bucket.

        A new step is archived (as RUN.STEP.zip, like %gcs_save) at most once per --every; when
        the cell ends — normally, with an error or by the Stop button — the newest step is archived
        before the cell's exception is raised again, unchanged. Upload failures are logged and
        retried; they never stop training. Non-chief workers (TF_CONFIG, RANK) archive nothing.
        SIGTERM and interpreter exit during the cell also archive the newest step first.

        Examples::

            %%gcs_archive /content/runs/run1 gs://my-bucket/experiments --every 10m --keep 3
            model.fit(x, y, epochs=50, callbacks=[keras.callbacks.ModelCheckpoint(
                "/content/runs/run1/ckpt-{epoch:03d}.weights.h5", save_weights_only=True)])
        """
        __tracebackhide__ = True  # IPython hides this frame: the traceback shown is the cell's
        worker = self._start_archiver(line)
        try:
            return self._exec_cell(self.shell, cell, f"%%gcs_archive {line}")
        finally:
            print(self._describe_archiving(worker.stop(final=True)))

    @expected_errors
    def _start_archiver(self, line: str):
        from colab_magics import archiver

        args = parse_argstring(self.gcs_archive, line)
        return archiver.Archiver(args.run_dir, args.destination, args.every, events=args.events,
                                 keep=args.keep, settings=self.transfer_settings()).start()

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

    @staticmethod
    def _describe_archiving(summary) -> str:
        if summary.skipped:
            return f"Archiving skipped: {summary.skipped}"
        text = f"Archived {summary.archives} checkpoint(s) of {summary.run} to {summary.destination}"
        text += f"; last step {summary.last_step}: {summary.last_url}" if summary.last_url else "; no checkpoint found"
        if summary.newest_step is not None and summary.newest_step != summary.last_step:
            text += f"; newest step {summary.newest_step} is NOT archived"
        if summary.failures:
            text += f"; {summary.failures} failed attempt(s), last: {summary.last_error}"
        if summary.pending:
            text += "; the final archive is still running in the background"
        return text


def _split_passthrough(parser, line: str):
    """Parse the magic's own flags; everything after a standalone `--` is returned as passthrough."""
    from IPython.utils.process import arg_split

    argv = arg_split(line, posix=True)
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    return parser.parse_args(argv), []


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _describe_save(result) -> str:
    from colab_magics.display import human_size
    from colab_magics.runs import Skipped

    step = _step_text(result)
    if isinstance(result, Skipped):
        return f"Skipped {result.url}: {result.reason}"
    text = (f"Saved step {step} of {result.run} to {result.url} "
            f"({result.files} files, {human_size(result.size)}, {result.seconds:.1f} s)")
    if result.reread:
        text += f"; read again after {', '.join(dict.fromkeys(result.reread))} changed while read"
    if result.deleted:
        text += f"; deleted {', '.join(url.rsplit('/', 1)[-1] for url in result.deleted)}"
    return text


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
