"""The original colab_utils names, as thin calls into the modules that do the work.

Every call the colab_utils README shows runs with only `colab_utils` changed to `colab_magics`,
with the original positional order and keyword names (`save_to_bucket(train_dir, bucket,
project_id, basename=None, ...)`). `SaverWithCallback` and `GcsArchiveHook` are reachable here too,
as in colab_utils; TensorFlow is imported only when one of them is first used. New code can use the
magics or `colab_magics.runs` directly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from colab_magics import auth as _auth
from colab_magics import mount, runs, session, storage
from colab_magics.errors import AuthError, InvalidArgument, check_argument

_TF_NAMES = ("SaverWithCallback", "GcsArchiveHook")
# `from colab_magics.gcloud import *` gives the TF names too (importing TF) where TF is installed
__all__ = ["gcloud_auth", "auth", "config_project", "save_to_bucket", "load_from_bucket",
           "load_latest_checkpoint_from_bucket", "gcsfuse"]
if importlib.util.find_spec("tensorflow") is not None:
    __all__ += _TF_NAMES
_PATH = (str, os.PathLike)
_TEXT_OR_NONE = (str, type(None))


def __getattr__(name: str):
    if name in _TF_NAMES:  # colab_utils kept the TF classes in gcloud: built lazily in tf_hooks
        from colab_magics import tf_hooks

        return getattr(tf_hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gcloud_auth(project_id: str | None = None, *, key_file: str | None = None, emulator: bool = False):
    """Authenticate (emulator → key file → Colab/Kaggle → ADC), make it the default; return AuthInfo.

    The emulator keeps its data where `%gcs_auth --emulator` does (`%config ColabMagics.emulator_dir`,
    else COLAB_MAGICS_EMULATOR_DIR, else the user's cache directory).
    """
    check_argument("gcloud_auth", "project_id", project_id, _TEXT_OR_NONE, "a project id (str)")
    return _auth.sign_in(project_id, key_file=key_file, emulator=emulator, emulator_root=_configured_emulator_dir())


def _configured_emulator_dir() -> str | None:
    """`%config ColabMagics.emulator_dir` of the running IPython, if the extension is loaded there."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    magics = shell.magics_manager.registry.get("ColabMagics") if shell is not None else None
    return getattr(magics, "emulator_dir", None) or None


auth = gcloud_auth  # colab_utils' README documents it as `auth(project_id)`


def config_project(project_id: str | None = None) -> str:
    """Make `project_id` the project of the storage client, authenticating first if needed; return
    the project in use (with no argument: the current one)."""
    check_argument("config_project", "project_id", project_id, _TEXT_OR_NONE, "a project id (str)")
    current = session.current()
    info = current.auth or _auth.authenticate(project_id)
    if project_id and info.project != project_id:
        info = dataclasses.replace(info, project=project_id)
    current.set_auth(info)
    if not info.project:
        raise AuthError("no Google Cloud project is set: call config_project('my-project') or %gcs_auth my-project")
    return info.project


def save_to_bucket(
    train_dir: str | os.PathLike,
    bucket: str,
    project_id: str | None = None,
    basename: str | None = None,
    step: int | None = None,
    save_events: bool = False,
    force: bool = False,
    *,
    project_name: str | None = None,
    keep: int | None = None,
) -> str:
    """Archive the latest (or `step`'s) checkpoint of `train_dir` as BASENAME.STEP.zip in `bucket`;
    return its gs:// URL.

    `bucket` may be a bare name (as in colab_utils) or gs://BUCKET/PREFIX; BASENAME defaults to the
    directory's name. `project_id` (or `project_name`) selects the project when no `%gcs_auth` ran.
    An archive already in the bucket is kept (its URL returned) unless `force`.
    """
    call = "save_to_bucket"
    check_argument(call, "train_dir", train_dir, _PATH, "the run directory (a path)")
    _check_bucket(call, bucket)
    if project_id is not None and project_name is not None and project_id != project_name:
        raise InvalidArgument(f"{call}: project_id={project_id!r} and project_name={project_name!r} disagree: "
                              "give one of them")
    check_argument(call, "basename", basename, _TEXT_OR_NONE, "the run name of the archive (str)")
    step = _step(call, step)
    check_argument(call, "save_events", save_events, (bool,), "True or False")
    check_argument(call, "force", force, (bool,), "True or False")
    check_argument(call, "keep", keep, (int, type(None)), "a number of archives (int)")
    _auth.use_project(project_id if project_id is not None else project_name, call)
    result = runs.save_run(train_dir, bucket, step=step, events=save_events, force=force, keep=keep,
                           run_name=basename)
    return result.url


def load_from_bucket(
    zip_filename: str | None = None,
    bucket: str | None = None,
    train_dir: str | os.PathLike | None = None,
    *,
    tar_filename: str | None = None,
) -> str:
    """Restore `zip_filename` (e.g. "run1.1000.zip", or a .tar.gz: later colab_utils called the
    argument `tar_filename`) from `bucket` into `train_dir`.

    Returns the restored checkpoint path (or `train_dir` when the archive holds no known checkpoint).
    """
    call = "load_from_bucket"
    if zip_filename is not None and tar_filename is not None and zip_filename != tar_filename:
        raise InvalidArgument(f"{call}: give zip_filename or tar_filename, not both")
    name = zip_filename if zip_filename is not None else tar_filename
    check_argument(call, "zip_filename", name, (str,), "an archive name such as 'run1.1000.zip' (str)")
    _check_bucket(call, bucket)
    check_argument(call, "train_dir", train_dir, _PATH, "the directory to restore into (a path)")
    location = storage.parse_url(bucket)
    source = name if name.startswith("gs://") else location.child(name).url
    result = runs.load_run(source, train_dir)
    return str(result.checkpoint or result.target)


def load_latest_checkpoint_from_bucket(tensorboard_run: str, bucket: str, train_dir: str | os.PathLike) -> str:
    """Restore the newest archive of run `tensorboard_run` from `bucket` into `train_dir`; return
    the restored checkpoint path (as `load_from_bucket`)."""
    call = "load_latest_checkpoint_from_bucket"
    check_argument(call, "tensorboard_run", tensorboard_run, (str,), "a run name such as 'run1' (str)")
    _check_bucket(call, bucket)
    check_argument(call, "train_dir", train_dir, _PATH, "the directory to restore into (a path)")
    result = runs.load_run(storage.parse_url(bucket).child(tensorboard_run).url, train_dir)
    return str(result.checkpoint or result.target)


def gcsfuse(
    bucket: str | None = None,
    gcs_class: str = "regional",
    gcs_location: str = "asia-east1",
    project_id: str | None = None,
) -> str:
    """Mount `bucket` at /tmp/gcs-bucket/BUCKET (creating the bucket when missing); return the path.

    As in colab_utils: no bucket → a new one named gcsfuse-TIMESTAMP; `gcs_class` and `gcs_location`
    apply only to a bucket created here. gcsfuse is used when installed, else rclone.
    """
    import time

    call = "gcsfuse"
    check_argument(call, "bucket", bucket, _TEXT_OR_NONE, "a bucket name (str) or None")
    check_argument(call, "gcs_class", gcs_class, (str,), "a storage class such as 'regional' (str)")
    check_argument(call, "gcs_location", gcs_location, (str,), "a location such as 'asia-east1' (str)")
    _auth.use_project(project_id, call)
    name = bucket or f"gcsfuse-{int(time.time())}"
    return mount.mount(name, create=True, location=gcs_location, storage_class=gcs_class).mount_point


def _check_bucket(call: str, bucket) -> None:
    check_argument(call, "bucket", bucket, (str,), "a bucket name or gs://BUCKET[/PREFIX] (str)")
    storage.parse_url(bucket)  # InvalidBucketURL, one line, before any work


def _step(call: str, step) -> int | None:
    """colab_utils handed steps around as strings ("1000"): accept those as well as ints."""
    if isinstance(step, str) and step.strip().isdigit():
        return int(step)
    check_argument(call, "step", step, (int, type(None)), "a checkpoint step (int)")
    return step
