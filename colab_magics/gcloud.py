"""The original colab_utils names, as thin calls into the modules that do the work.

`from colab_magics.gcloud import gcloud_auth, save_to_bucket, load_from_bucket, gcsfuse` keeps old
notebooks running; new code can use the magics or `colab_magics.runs` directly.
"""

from __future__ import annotations

import os

from colab_magics import auth, runs, session, storage


def gcloud_auth(project_id: str | None = None, *, key_file: str | None = None, emulator: bool = False):
    """Authenticate (emulator → key file → Colab/Kaggle → ADC), make it the default; return AuthInfo.

    The emulator keeps its data where `%gcs_auth --emulator` does (`%config ColabMagics.emulator_dir`,
    else COLAB_MAGICS_EMULATOR_DIR, else the user's cache directory).
    """
    return auth.sign_in(project_id, key_file=key_file, emulator=emulator, emulator_root=_configured_emulator_dir())


def _configured_emulator_dir() -> str | None:
    """`%config ColabMagics.emulator_dir` of the running IPython, if the extension is loaded there."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    magics = shell.magics_manager.registry.get("ColabMagics") if shell is not None else None
    return getattr(magics, "emulator_dir", None) or None


def save_to_bucket(
    train_dir: str | os.PathLike,
    bucket: str,
    project_name: str | None = None,
    step: int | None = None,
    save_events: bool = False,
    force: bool = False,
    keep: int | None = None,
) -> str:
    """Archive the latest checkpoint of `train_dir` as RUN.STEP.zip in `bucket`; return its gs:// URL.

    `bucket` may be a bare name (as in colab_utils) or gs://BUCKET/PREFIX. `project_name` selects the
    project of the client when no `%gcs_auth` was done.
    """
    if project_name and session.current().auth is None:
        session.current().set_auth(auth.authenticate(project_name))
    result = runs.save_run(train_dir, bucket, step=step, events=save_events, force=force, keep=keep)
    return result.url


def load_from_bucket(zip_filename: str, bucket: str, train_dir: str | os.PathLike) -> str:
    """Restore `zip_filename` (e.g. "run1.1000.zip", or a .tar.gz) from `bucket` into `train_dir`.

    Returns the restored checkpoint path (or `train_dir` when the archive holds no known checkpoint).
    """
    location = storage.parse_url(bucket)
    name = zip_filename if zip_filename.startswith("gs://") else location.child(zip_filename).url
    result = runs.load_run(name, train_dir)
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

    from colab_magics import mount

    if project_id and session.current().auth is None:
        session.current().set_auth(auth.authenticate(project_id))
    name = bucket or f"gcsfuse-{int(time.time())}"
    return mount.mount(name, create=True, location=gcs_location, storage_class=gcs_class).mount_point
