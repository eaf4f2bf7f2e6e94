"""colab_utils users change one word: every code block of the colab_utils README runs against the
emulator with `colab_utils` → `colab_magics`, and our README's migration table is true line by line.

The colab_utils README is copied to tests/data/colab_utils-README.md (the seed of this project) and
its code blocks are read from there, so a test fails if a call it shows stops working.
"""

from __future__ import annotations

import ast
import base64
import importlib
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

from colab_magics import gcloud, mount, session, tboard
from colab_magics.errors import BucketNotFound, ColabMagicsError, InvalidArgument, InvalidBucketURL
from conftest import run_cell

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "tests" / "data" / "colab_utils-README.md").read_text()
README = (ROOT / "README.md").read_text()
STANDINS = ROOT / "tests" / "standins"
TOKEN = "2abcStandInAuthtoken_do_not_leak_9xyz"
PROJECT = "my-project-123"
FUSE_OK = (Path("/dev/fuse").exists() and os.access("/dev/fuse", os.R_OK | os.W_OK)
           and shutil.which("rclone") is not None)

# each code block of the colab_utils README, recognised by one pattern
BLOCKS = {
    "tboard script": r"import colab_utils\.tboard",
    "launch_tensorboard": r"\A\s*tboard\.launch_tensorboard\(",
    "install_ngrok": r"\A\s*tboard\.install_ngrok\(",
    "gcloud script": r"bucket_name = ",
    "gcloud_auth": r"\A\s*colab_utils\.gcloud\.gcloud_auth\(project_name\)\s*\Z",
    "save_to_bucket": r"\A\s*colab_utils\.gcloud\.save_to_bucket\(train_dir",
    "load_from_bucket": r"\A\s*colab_utils\.gcloud\.load_from_bucket\(zip_filename",
    "SaverWithCallback": r"def save_checkpoint_to_bucket",
    "GcsArchiveHook": r"GcsArchiveHook\(",
    "gcsfuse": r"\A\s*local_path = gcsfuse\(",
}


def seed_blocks() -> list[str]:
    """The fenced code blocks of the colab_utils README, dedented, its `*****` banner lines dropped."""
    found = re.findall(r"^[ \t]*```[ \t]*\n(.*?)^[ \t]*```", SEED, re.M | re.S)
    return [textwrap.dedent("\n".join(line for line in b.splitlines() if not line.lstrip().startswith("*")))
            for b in found]


def block(name: str) -> str:
    """One block of the colab_utils README with only `colab_utils` changed to `colab_magics`."""
    (code,) = [b for b in seed_blocks() if re.search(BLOCKS[name], b)]
    return code.replace("colab_utils", "colab_magics")


def run(shell, code: str):
    """Run a cell in the real IPython shell; raise what it raised."""
    result = run_cell(shell, code)
    if not result.success:
        raise result.error_in_exec or result.error_before_exec
    return result.result


def archive_names(bucket, prefix: str = "") -> set[str]:
    return {b.name for b in bucket.client.list_blobs(bucket.name, prefix=prefix or None)}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def write_tf1_run(tf, run_dir: Path, steps=(500, 1000)) -> Path:
    """A TF1 run directory as colab_utils users had them: Saver checkpoints (absolute paths) + events."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        tf.compat.v1.get_variable("w", shape=[4, 4])
        saver = tf.compat.v1.train.Saver(max_to_keep=5)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for n in steps:
                sess.run(step.assign(n))
                saver.save(sess, str(run_dir / "model.ckpt"), global_step=n)
    with tf.summary.create_file_writer(str(run_dir)).as_default():
        tf.summary.scalar("loss", 0.5, step=steps[-1])
    return run_dir


def train_tf1(tf, run_dir: Path, until: int, saver=None, hooks=()) -> None:
    """What slim.learning.train / tf.estimator did for colab_utils users (both are gone from TF 2):
    MonitoredTrainingSession with a checkpoint every 10 steps through `saver`."""
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        tf.compat.v1.get_variable("w", shape=[8])
        train_op = tf.compat.v1.assign_add(step, 1)
        saver = saver() if callable(saver) and not hasattr(saver, "save") else saver
        saver = saver or tf.compat.v1.train.Saver()
        saver_hook = tf.compat.v1.train.CheckpointSaverHook(str(run_dir), save_steps=10, saver=saver)
        with tf.compat.v1.train.MonitoredTrainingSession(
            checkpoint_dir=str(run_dir), chief_only_hooks=[saver_hook], hooks=list(hooks),
            save_checkpoint_secs=None, save_checkpoint_steps=None, save_summaries_steps=None,
            save_summaries_secs=None, log_step_count_steps=None,
        ) as sess:
            while sess.run(step) < until:
                sess.run(train_op)


@pytest.fixture()
def ngrok_root(tmp_path, monkeypatch):
    """The notebook's working directory (`ROOT = %pwd`, the README's bin_dir) holding the stand-in
    ngrok agent (no ngrok cloud is reachable here), with an authtoken in the environment."""
    root = tmp_path / "content"
    root.mkdir()
    for name in ("ngrok", "_edge.py"):
        shutil.copy2(STANDINS / name, root / name)
    monkeypatch.chdir(root)
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    monkeypatch.setenv("STANDIN_NGROK_EXPECT_TOKEN", TOKEN)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # TensorBoard's info files stay in this test
    yield root
    from colab_magics import tensorboard, tunnels

    tensorboard.stop_served()
    tunnels.close_tunnels()


@pytest.fixture()
def fuse_root(tmp_path, monkeypatch):
    """Mounts go under tmp_path instead of /tmp/gcs-bucket; all unmounted after the test."""
    if not FUSE_OK:
        pytest.skip("FUSE or rclone is not available here")
    monkeypatch.setattr(mount, "DEFAULT_ROOT", str(tmp_path / "gcs-bucket"))
    yield tmp_path / "gcs-bucket"
    mount.unmount_all(timeout=60)


def get(url: str, auth: tuple[str, str]) -> int:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status


# --- every block of the colab_utils README --------------------------------------------------------
def test_every_code_block_of_the_colab_utils_readme_has_a_test():
    blocks = seed_blocks()
    claimed = [[name for name, pattern in BLOCKS.items() if re.search(pattern, b)] for b in blocks]
    assert all(len(names) == 1 for names in claimed), claimed
    assert sorted(n for names in claimed for n in names) == sorted(BLOCKS)


def test_tboard_blocks_run_verbatim(ip, ngrok_root, capsys):
    url = run(ip, block("tboard script"))  # ROOT = %pwd, LOG_DIR = ROOT/log, launch_tensorboard(...)

    assert (ngrok_root / "log").is_dir()
    password = re.search(r"Password: (\S+)", capsys.readouterr().out).group(1)
    assert get(url, ("tensorboard", password)) == 200
    # the later blocks write `tboard.`: the module as `from colab_magics import tboard` binds it
    run(ip, "from colab_magics import tboard")
    assert run(ip, block("launch_tensorboard")) == url  # the same TensorBoard and tunnel, reused
    assert run(ip, block("install_ngrok")) == str(ngrok_root / "ngrok")  # log_dir= accepted


def test_gcloud_script_runs_verbatim(ip, bucket, tf, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    write_tf1_run(tf, tmp_path / "log" / "training-run-1", steps=(500, 1000))
    code = block("gcloud script").replace('"my-checkpoints"', repr(bucket.name))
    code = code.replace("# colab_magics.gcloud.config_project", "colab_magics.gcloud.config_project")  # its alternative
    if FUSE_OK:
        request.getfixturevalue("fuse_root")
        code = code.replace('"my-bucket"', repr(f"fuse-{uuid.uuid4().hex[:10]}"))
    else:  # no FUSE here: the script up to its gcsfuse part (test_gcsfuse_block_runs_verbatim skips too)
        code = code[: code.index("# mount gcs bucket")]

    run(ip, code)

    assert session.current().auth.project == PROJECT
    assert archive_names(bucket) == {"training-run-1.1000.zip"}
    with zipfile.ZipFile(bucket.blob("training-run-1.1000.zip").open("rb")) as archive:
        names = archive.namelist()
    assert "model.ckpt-1000.index" in names and any(n.startswith("events.out.tfevents") for n in names)
    assert "model.ckpt-500.index" not in names
    restored = tmp_path / "log" / "training-run-2"
    assert tf.train.latest_checkpoint(str(restored)) == str(restored / "model.ckpt-1000")
    if not FUSE_OK:
        pytest.skip("the script ran up to its gcsfuse part: mounting needs FUSE and rclone")
    local_path = ip.user_ns["local_path"]
    assert local_path in Path("/proc/mounts").read_text()


def test_gcloud_auth_save_and_load_blocks_run_verbatim(bucket, tf, tmp_path):
    run_dir = write_tf1_run(tf, tmp_path / "run1")
    import colab_magics  # noqa: F401  (the blocks call colab_magics.gcloud....)
    import colab_magics.gcloud

    names = {"colab_magics": colab_magics, "project_name": PROJECT, "train_dir": str(run_dir),
             "bucket": bucket.name}
    info = eval(block("gcloud_auth"), names)
    assert info.project == PROJECT and session.current().auth.project == PROJECT

    url = eval(block("save_to_bucket"), names)
    assert url == f"gs://{bucket.name}/run1.1000.zip"

    # the README's signature line ends with a stray ':' (a copy of a `def` line): the call is the rest
    load = block("load_from_bucket").rstrip().removesuffix(":")
    names.update(zip_filename="run1.1000.zip", train_dir=str(tmp_path / "restored"))
    checkpoint = eval(load, names)
    assert checkpoint == str(tmp_path / "restored" / "model.ckpt-1000")
    assert tf.train.latest_checkpoint(str(tmp_path / "restored")) == checkpoint


def saver_block_parts(code: str) -> tuple[str, list[str]]:
    """The callback definition and the `SaverWithCallback(...)` assignments of the README block (its
    `tf.reset_default_graph()` and `slim.learning.train` are TF 1 only)."""
    tree = ast.parse(code)
    callback = next(node for node in tree.body if isinstance(node, ast.FunctionDef))
    savers = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("SaverWithCallback")]
    return ast.get_source_segment(code, callback), savers


def test_saver_with_callback_block_archives_each_save(bucket, tf, tmp_path):
    callback, savers = saver_block_parts(block("SaverWithCallback").replace('"my-bucket"', repr(bucket.name)))
    assert savers == ["saver = SaverWithCallback(save_checkpoint_to_bucket)",
                      "checkpoint_saver = colab_magics.gcloud.SaverWithCallback(save_checkpoint_to_bucket)"]
    names: dict = {}
    exec("import os, re\nimport colab_magics.gcloud\nfrom colab_magics.gcloud import SaverWithCallback", names)
    exec(callback, names)

    def make_saver():
        for line in savers:
            exec(line, names)  # both lines of the README, in a graph that has variables
        return names["checkpoint_saver"]

    train_tf1(tf, tmp_path / "train1", 25, saver=make_saver)
    assert archive_names(bucket) == {f"train1.{step}.zip" for step in (0, 10, 20, 25)}


def test_a_failing_saver_callback_is_a_warning_and_training_goes_on(bucket, tf, tmp_path, caplog):
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    callback, _ = saver_block_parts(block("SaverWithCallback").replace('"my-bucket"', repr(missing)))
    names: dict = {}
    exec("import os, re\nimport colab_magics.gcloud", names)
    exec(callback, names)
    caplog.set_level(logging.WARNING, logger="colab_magics.tf_hooks")

    train_tf1(tf, tmp_path / "train2", 20,
              saver=lambda: gcloud.SaverWithCallback(names["save_checkpoint_to_bucket"]))

    assert tf.train.latest_checkpoint(str(tmp_path / "train2")).endswith("model.ckpt-20")
    warnings = [r.getMessage() for r in caplog.records if r.name == "colab_magics.tf_hooks"]
    assert len(warnings) == 3  # steps 0, 10, 20: each save logged, none stopped training
    assert all("\n" not in w and f"gs://{missing} does not exist" in w for w in warnings), warnings


def test_gcs_archive_hook_block_archives_at_the_end(bucket, tf, tmp_path):
    tree = ast.parse(block("GcsArchiveHook").replace('"my-bucket"', repr(bucket.name)))
    branch = next(node for node in ast.walk(tree) if isinstance(node, ast.If))
    statements = [ast.unparse(s) for s in branch.body if isinstance(s, ast.Assign)
                  and ast.unparse(s.targets[0]) in {"bucket", "project_name", "archiveHook"}]
    assert len(statements) == 3, statements
    run_dir = tmp_path / "est1"
    # params as the block's comments say: params["start"] = time.time(), params["log_dir"] = TRAIN_LOG
    names = {"GcsArchiveHook": gcloud.GcsArchiveHook, "params": {"start": time.time(), "log_dir": str(run_dir)}}
    for statement in statements:
        exec(statement, names)

    train_tf1(tf, run_dir, 25, hooks=[names["archiveHook"]])
    assert archive_names(bucket) == {"est1.25.tar.gz"}  # every_n_secs=3600: only the final archive


def test_gcsfuse_block_runs_verbatim(gcs, fuse_root):
    names: dict = {}
    exec("from colab_magics.gcloud import gcsfuse", names)
    exec(block("gcsfuse"), names)  # no bucket: a new gcsfuse-TIMESTAMP bucket, created and mounted
    local_path = Path(names["local_path"])
    assert local_path.parent == fuse_root and local_path.name.startswith("gcsfuse-")
    assert gcs.bucket(local_path.name).exists() and str(local_path) in Path("/proc/mounts").read_text()


# --- names, laziness, bad input -------------------------------------------------------------------
def test_importing_gcloud_and_tboard_imports_no_tensorflow():
    code = ("import sys, colab_magics.gcloud as g, colab_magics.tboard; "
            "assert callable(g.auth) and callable(g.config_project); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_config_project_sets_and_reports_the_project(gcs):
    assert gcloud.config_project(PROJECT) == PROJECT
    assert session.current().auth.project == PROJECT and gcloud.config_project() == PROJECT
    assert gcloud.auth is gcloud.gcloud_auth


def test_old_positional_and_keyword_forms_of_save_to_bucket(bucket, tf, tmp_path):
    run_dir = write_tf1_run(tf, tmp_path / "run1")
    # colab_utils' last order: (train_dir, bucket, project_id, basename, step, save_events, force)
    url = gcloud.save_to_bucket(str(run_dir), bucket.name, PROJECT, "renamed", 500, True, False)
    assert url == f"gs://{bucket.name}/renamed.500.zip"
    with zipfile.ZipFile(bucket.blob("renamed.500.zip").open("rb")) as archive:
        assert any(n.startswith("events.out.tfevents") for n in archive.namelist())  # save_events, 6th
    assert gcloud.save_to_bucket(run_dir, bucket.name, project_id=PROJECT, basename="kw", step="1000",
                                 save_events=False) == f"gs://{bucket.name}/kw.1000.zip"  # a str step, as the saver gave
    assert gcloud.save_to_bucket(run_dir, f"gs://{bucket.name}/exp", project_name=PROJECT).endswith("/exp/run1.1000.zip")
    assert gcloud.load_from_bucket(tar_filename="kw.1000.zip", bucket=bucket.name,
                                   train_dir=tmp_path / "back").endswith("model.ckpt-1000")
    assert gcloud.load_latest_checkpoint_from_bucket("renamed", bucket.name, tmp_path / "latest").endswith("model.ckpt-500")


def test_wrong_arguments_are_one_line_errors_naming_the_parameter(gcs, tmp_path):
    run_dir = tmp_path / "run1"
    cases = [
        (lambda: gcloud.save_to_bucket(run_dir, None), InvalidArgument, "save_to_bucket: bucket must be"),
        (lambda: gcloud.save_to_bucket(run_dir, "ok-bucket", PROJECT, 500), InvalidArgument,
         "basename must be the run name of the archive (str), not 500"),
        (lambda: gcloud.save_to_bucket(42, "ok-bucket"), InvalidArgument, "train_dir must be"),
        (lambda: gcloud.save_to_bucket(run_dir, "ok-bucket", step=1.5), InvalidArgument, "step must be"),
        (lambda: gcloud.save_to_bucket(run_dir, "ok-bucket", save_events="yes"), InvalidArgument, "save_events must be"),
        (lambda: gcloud.save_to_bucket(run_dir, "Bad_Bucket"), InvalidBucketURL, "not a valid name"),
        (lambda: gcloud.save_to_bucket(run_dir, "ok-bucket", project_id="a", project_name="b"), InvalidArgument,
         "disagree"),
        (lambda: gcloud.load_from_bucket(), InvalidArgument, "zip_filename must be"),
        (lambda: gcloud.load_from_bucket("run1.1.zip", "ok-bucket"), InvalidArgument, "train_dir must be"),
        (lambda: gcloud.config_project(42), InvalidArgument, "project_id must be"),
        (lambda: gcloud.gcloud_auth(["p"]), InvalidArgument, "project_id must be"),
        (lambda: gcloud.gcsfuse(123), InvalidArgument, "gcsfuse: bucket must be"),
        (lambda: tboard.launch_tensorboard(bin_dir=str(tmp_path)), InvalidArgument, "give log_dir="),
        (lambda: tboard.install_ngrok(3), InvalidArgument, "bin_dir must be"),
    ]
    for call, kind, text in cases:
        with pytest.raises(kind) as caught:
            call()
        assert isinstance(caught.value, ColabMagicsError) and text in one_line(caught.value)


def test_a_missing_bucket_is_the_magics_one_line_error(gcs, tf, tmp_path):
    run_dir = write_tf1_run(tf, tmp_path / "run1")
    with pytest.raises(BucketNotFound) as caught:
        gcloud.save_to_bucket(run_dir, f"missing-{uuid.uuid4().hex[:10]}", PROJECT)
    assert "does not exist" in one_line(caught.value)
    with pytest.raises(BucketNotFound):
        gcloud.load_from_bucket("run1.1000.zip", f"missing-{uuid.uuid4().hex[:10]}", tmp_path / "x")


def test_tf_names_refuse_wrong_arguments_in_one_line(gcs, tf, tmp_path):
    cases = [
        (lambda: gcloud.GcsArchiveHook(3600, str(tmp_path), "gs://ok-bucket"), "pass the interval as every_n_secs="),
        (lambda: gcloud.GcsArchiveHook(str(tmp_path), None, None), "bucket must be"),
        (lambda: gcloud.GcsArchiveHook(str(tmp_path), None, "ok-bucket", every_n_secs="hourly"), "every_n_secs must be"),
        (lambda: gcloud.GcsArchiveHook(str(tmp_path), None, "ok-bucket", every_n_secs=0), "more than 0"),
        (lambda: gcloud.GcsArchiveHook(log_dir="a", log="b", bucket="ok-bucket"), "not both"),
        (lambda: gcloud.SaverWithCallback("upload", var_list=[tf.Variable(1.0)]), "must be a function"),
    ]
    for call, text in cases:
        with pytest.raises(InvalidArgument) as caught:
            call()
        assert text in one_line(caught.value)
    names: dict = {}
    exec("from colab_magics.gcloud import *", names)  # as old notebooks did before SaverWithCallback(...)
    assert names["SaverWithCallback"] is gcloud.SaverWithCallback and callable(names["gcsfuse"])
    hook = gcloud.GcsArchiveHook(log=str(tmp_path), bucket="ok-bucket", every_n_secs=60, delay_n_secs=5)
    assert (hook.log, hook.every_n_secs, hook.delay_n_secs) == (str(tmp_path), 60.0, 5.0)


# --- the migration table in our README ------------------------------------------------------------
def migration_rows() -> list[list[str]]:
    section = README.split("## Python API and migrating from colab_utils")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| —")]
    return [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")] for line in rows]


def rendered_signature(obj) -> str:
    """`inspect.signature` as the table writes it: names and defaults, no annotations."""
    parts, star = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_migration_table_signatures_are_the_real_ones(tf):
    rows = migration_rows()
    assert len(rows) >= 12
    for old, new, _differs, _magic in rows:
        match = re.fullmatch(r"(colab_magics\.[\w.]+)\((.*)\)", new)
        assert match, f"not a call: {new}"
        assert rendered_signature(resolve(match.group(1))) == match.group(2), new
        if old != "—":  # the same function under the same name as in colab_utils
            assert old.split("(")[0] == match.group(1).removeprefix("colab_magics."), (old, new)


def test_migration_table_old_calls_run(bucket, tf, tmp_path, ngrok_root):
    train_dir = write_tf1_run(tf, tmp_path / "run1")
    names = {"gcloud": gcloud, "tboard": tboard, "project_id": PROJECT, "project": PROJECT,
             "train_dir": str(train_dir), "log_dir": str(train_dir), "bucket": bucket.name,
             "zip_filename": "run1.1000.zip", "tensorboard_run": "run1", "ROOT": str(ngrok_root),
             "LOG_DIR": str(ngrok_root / "log"), "callback_op": lambda *a, **k: None, "kwargs": {}}
    not_run = {"gcloud.gcsfuse", "tboard.launch_tensorboard"}  # run for real by the README block tests
    ran = []
    for old, *_ in migration_rows():
        if old == "—" or old.split("(")[0] in not_run:
            continue
        if "SaverWithCallback" in old:
            with tf.Graph().as_default():
                tf.compat.v1.get_variable("w", shape=[2])
                assert eval(old, names) is not None
        else:
            assert eval(old, names) is not None, old
        ran.append(old.split("(")[0])
    assert "gcloud.save_to_bucket" in ran and "gcloud.GcsArchiveHook" in ran and len(ran) == 9
    assert "run1.1000.zip" in archive_names(bucket)
