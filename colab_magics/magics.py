"""ColabMagics: one short method per magic — parse the arguments, call a service, display.

Settings are traitlets, so `%config ColabMagics.chunk_size_mb = 200` works; precedence is
flag > %config > COLAB_MAGICS_* environment variable > default.
"""

from __future__ import annotations

import functools
import os

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
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
        from colab_magics.runs import TransferSettings

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
        return info

    @line_magic
    @magic_arguments()
    @argument("run_dir", help="The run directory (its name becomes the archive's RUN).")
    @argument("destination", help="gs://BUCKET[/PREFIX] (or a bare bucket name).")
    @argument("--step", type=int, help="Save this step instead of the latest.")
    @argument("--events", action="store_true", help="Also archive every events.out.tfevents.* below RUN_DIR.")
    @argument("--force", action="store_true", help="Replace the archive if it already exists.")
    @argument("--keep", type=int, metavar="N", help="Then delete all but the newest N archives of this run.")
    @expected_errors
    def gcs_save(self, line: str = ""):
        """Archive the latest checkpoint of RUN_DIR into a bucket as RUN.STEP.zip; return its URL.

        The archive is streamed (no temporary file), checked end to end by crc32c, and never
        overwrites an existing one unless --force.

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
    @argument("source", help="gs://BUCKET[/PREFIX]/RUN.STEP.zip (or .tar.gz), or gs://BUCKET[/PREFIX]/RUN for its latest.")
    @argument("target_dir", help="Directory to restore into (created if missing).")
    @expected_errors
    def gcs_load(self, line: str = ""):
        """Restore an archive (or a run's latest) into TARGET_DIR; return the checkpoint path.

        Extraction is checked and atomic: a corrupt or unsafe archive leaves TARGET_DIR as it was.

        Examples::

            %gcs_load gs://my-bucket/experiments/run1 /content/runs/run1
            ckpt = %gcs_load gs://my-bucket/run1.1000.zip runs/run1
        """
        from colab_magics import runs

        args = parse_argstring(self.gcs_load, line)
        result = runs.load_run(args.source, args.target_dir, settings=self.transfer_settings())
        print(_describe_load(result))
        return str(result.checkpoint) if result.checkpoint else str(result.target)

    @line_magic
    @magic_arguments()
    @argument("location", help="gs://BUCKET[/PREFIX]")
    @argument("run", nargs="?", help="Only this run's archives.")
    @expected_errors
    def gcs_list(self, line: str = ""):
        """List the archives under a bucket prefix: run, step, size, time. Returns the list.

        Examples::

            %gcs_list gs://my-bucket/experiments
            %gcs_list gs://my-bucket run1
        """
        from colab_magics import runs
        from colab_magics.display import Table, TableList, human_size

        args = parse_argstring(self.gcs_list, line)
        archives = runs.list_archives(args.location, args.run)
        rows = [(a.run, a.step, human_size(a.size), _when(a.updated), a.url) for a in archives]
        return TableList(archives, Table(["run", "step", "size", "updated", "url"], rows,
                                         empty=f"no archives under {args.location}"))

    # --- tensorboard and tunnels ----------------------------------------------------------------

    # --- mounts ---------------------------------------------------------------------------------

    # --- continuous archiving -------------------------------------------------------------------


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _describe_save(result) -> str:
    from colab_magics.display import human_size
    from colab_magics.runs import Skipped

    if isinstance(result, Skipped):
        return f"Skipped {result.url}: {result.reason}"
    text = (f"Saved step {result.step} of {result.run} to {result.url} "
            f"({result.files} files, {human_size(result.size)}, {result.seconds:.1f} s)")
    if result.deleted:
        text += f"; deleted {len(result.deleted)} older archive(s)"
    return text


def _describe_load(result) -> str:
    text = f"Restored {result.url} into {result.target} (step {result.step}, {result.files} files, {result.seconds:.1f} s)"
    if result.checkpoint:
        text += f"\nCheckpoint: {result.checkpoint}"
    return text
