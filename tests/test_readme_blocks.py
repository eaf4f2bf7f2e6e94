"""Every code block of this project's README runs as written, as tests/test_compat.py does for the
colab_utils README: each block is recognised by one pattern (`BLOCKS`), and run in a real IPython
shell (python blocks) or a real shell (bash blocks) against the emulator, with the real libraries.

What a reader's notebook has before a block (a Keras `model`, a `trainer`, a `train()` function, a
run directory with checkpoints) is set up by the test, in the open. Two things are replaced, the same
way for every block: Colab's `/content` is a temporary directory, and the buckets the README names
(`my-bucket`, `datasets`, `my-checkpoints`) are emulator buckets of those names. What cannot run here
is listed in `NOT_HERE` with the reason, block by block or line by line, and shown as a skip.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from conftest import run_cell


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
STANDINS = ROOT / "tests" / "standins"
TOKEN = "2abcStandInAuthtoken_do_not_leak_9xyz"
FUSE_OK = (Path("/dev/fuse").exists() and os.access("/dev/fuse", os.R_OK | os.W_OK)
           and shutil.which("rclone") is not None)
NAMED_BUCKETS = ("my-bucket", "datasets", "my-checkpoints")

# each python or bash block of the README, recognised by one pattern
BLOCKS = {
    "the two commands": r"pip install -e",
    "five minutes: auth": r"\A%load_ext colab_magics\n%gcs_auth --emulator",
    "five minutes: a model": r"\Aimport keras, numpy as np",
    "five minutes: archive": r"\A%%gcs_archive runs/run1 gs://local-bucket/exp",
    "five minutes: restore and resume": r"\A%gcs_list gs://local-bucket/exp",
    "save, list, load": r"\A%gcs_auth my-project +# which credentials",
    "retry deadline": r"retry_deadline = 30",
    "resume a Keras model": r"\Ackpt = %gcs_load gs://my-bucket/exp/run1 runs/run1\nmodel = keras",
    "restore ratio": r"restore_max_ratio = 1000",
    "first cell with gcs_resume": r"\Aresumed = %gcs_resume",
    "tensorboard tunnels": r"\A%load_ext colab_magics\n\n%tensorboard_tunnel runs",
    "tboard seed API": r"\Afrom colab_magics import tboard",
    "gcsfuse_mount": r"\A%gcs_auth my-project +# or --key-file",
    "gcsfuse seed API": r"\Afrom colab_magics.gcloud import gcsfuse",
    "gcs_archive cell": r"\A%%gcs_archive /content/runs/run1",
    "gcs_archive line form": r"\A%gcs_archive /content/runs/run1",
    "colab-magics run": r"\Acolab-magics run runs/run1",
    "Archiver": r"\Afrom colab_magics.archiver import Archiver",
    "TensorFlow hooks": r"\Afrom colab_magics.tf_hooks import",
    "training callbacks": r"\Afrom colab_magics.callbacks import",
    "the command line": r"\Acolab-magics --emulator save",
    "migrating from colab_utils": r"\Aimport colab_magics.gcloud\n",
    "public API": r"\Afrom colab_magics import \(sign_in",
    "tunnel passwords in a shell": r"\Aexport COLAB_MAGICS_TUNNEL_AUTH=",
}

# what cannot run here, and why (a block, or a line of a block)
NOT_HERE = {
    "the two commands": "installs packages and runs the whole suite; test_readme.py checks both commands "
                        "and test_notebooks.py runs notebooks/run.py",
    "%tensorboard_tunnel runs --provider ssh --ssh me@myserver.example.com":
        "needs the reader's own server (test_tunnels.py runs --provider ssh against a local sshd)",
    "colab-magics mount my-bucket /mnt/ckpt": "stays in the foreground until Ctrl-C "
                                              "(test_cli.py runs a foreground mount and ends it)",
    "colab-magics tunnel runs --provider ngrok": "stays in the foreground until Ctrl-C "
                                                 "(test_cli.py runs a foreground tunnel and ends it)",
    "tunnel passwords in a shell": "foreground tunnels until Ctrl-C; test_cli.py runs them with the password "
                                   "from the environment, a 0600 file and the terminal, and reads every "
                                   "process's command line meanwhile",
}
FUSE_ONLY = "needs FUSE and rclone, missing here"


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of each python and bash block of the README, dedented."""
    found = re.findall(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", README, re.M | re.S)
    return [(lang, textwrap.dedent(code)) for lang, code in found if lang in ("python", "bash")]


def block(name: str) -> str:
    """One block, with Colab's /content moved to the test's directory (see `content`)."""
    (code,) = [code for _, code in readme_blocks() if re.search(BLOCKS[name], code)]
    return code.replace("/content", str(CONTENT[0]))


CONTENT: list[Path] = [Path("/content")]  # set per test by the `content` fixture


def runnable(code: str) -> tuple[str, list[str]]:
    """`code` without the lines that cannot run here, and the reasons for those left out."""
    kept, reasons = [], []
    for line in code.splitlines():
        reason = next((why for start, why in NOT_HERE.items() if line.startswith(start)), None)
        if reason:
            reasons.append(f"{line.split('#')[0].strip()}: {reason}")
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", reasons


def run(shell, code: str):
    result = run_cell(shell, code)
    if not result.success:
        raise result.error_in_exec or result.error_before_exec
    return result.result


def part(code: str, start: str, end: str | None = None) -> str:
    """The lines of `code` from the comment line `start` up to the comment line `end`."""
    lines = code.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next((i for i, line in enumerate(lines) if end and line.startswith(end)), len(lines))
    return "\n".join(lines[first:last]) + "\n"


def names_in(bucket) -> set[str]:
    return {b.name for b in bucket.client.list_blobs(bucket.name)}


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture()
def content(tmp_path, monkeypatch):
    """The notebook's working directory (Colab's /content), with the README's buckets on the emulator."""
    root = tmp_path / "content"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # TensorBoard's info files stay in this test
    CONTENT[0] = root
    yield root
    CONTENT[0] = Path("/content")


@pytest.fixture()
def buckets(gcs):
    """`my-bucket`, `datasets`, `my-checkpoints` on the emulator, empty."""
    made = {}
    for name in NAMED_BUCKETS:
        bucket = gcs.lookup_bucket(name) or gcs.create_bucket(name)
        for blob in gcs.list_blobs(name):
            blob.delete()
        made[name] = bucket
    return made


@pytest.fixture()
def ngrok(tmp_path, monkeypatch):
    """The stand-in ngrok agent (no ngrok cloud is reachable here), with an authtoken."""
    bin_dir = tmp_path / "ngrok-bin"
    bin_dir.mkdir()
    for name in ("ngrok", "_edge.py"):
        shutil.copy2(STANDINS / name, bin_dir / name)
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    monkeypatch.setenv("STANDIN_NGROK_EXPECT_TOKEN", TOKEN)
    monkeypatch.setenv("COLAB_MAGICS_NGROK_BIN_DIR", str(bin_dir))
    yield bin_dir
    from colab_magics import tensorboard, tunnels

    tensorboard.stop_served()
    tunnels.close_tunnels()


@pytest.fixture()
def mounts(tmp_path, monkeypatch):
    """Mounts go under tmp_path instead of /tmp/gcs-bucket; all unmounted after the test."""
    from colab_magics import mount

    monkeypatch.setattr(mount, "DEFAULT_ROOT", str(tmp_path / "gcs-bucket"))
    yield tmp_path / "gcs-bucket"
    mount.unmount_all(timeout=60)


def keras_model(ip) -> None:
    """The README's own tiny model (five minutes), as a reader's notebook has one before later blocks."""
    run(ip, block("five minutes: a model"))


def archive_keras_run(ip, run_dir: Path, destination: str, epochs: int = 2) -> None:
    """A Keras run archived as the five-minutes example does it."""
    keras_model(ip)
    ip.user_ns["_run_dir"] = str(run_dir)
    run(ip, f"%%gcs_archive {run_dir} {destination} --every 10m\n"
            f"model.fit(x, y, epochs={epochs}, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint("
            f"_run_dir + '/epoch-{{epoch:03d}}.keras')])")


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def steps_run(run_dir: Path, steps=(500, 1000)) -> Path:
    """A run directory as the save examples assume: two numbered steps, an event file, a scratch file."""
    for step in steps:
        write(run_dir / f"ckpt-{step}.weights.h5", os.urandom(2000))
    write(run_dir / "train" / "events.out.tfevents.1.host")
    write(run_dir / "notes.tmp")
    return run_dir


# --- the blocks -----------------------------------------------------------------------------------
def test_every_python_and_bash_block_of_the_readme_has_a_test():
    claimed = [[name for name, pattern in BLOCKS.items() if re.search(pattern, code)] for _, code in readme_blocks()]
    assert all(len(names) == 1 for names in claimed), list(zip(claimed, [c[:60] for _, c in readme_blocks()]))
    assert sorted(n for names in claimed for n in names) == sorted(BLOCKS)
    assert all(key in BLOCKS or any(line.startswith(key) for _, code in readme_blocks() for line in code.splitlines())
               for key in NOT_HERE), "NOT_HERE names a block or line the README no longer has"


def test_the_two_commands():
    pytest.skip(NOT_HERE["the two commands"])


def test_five_minutes_in_a_notebook(ip, content, ngrok, mounts, monkeypatch):
    """The README's first notebook: the bundled emulator, a model archived while it trains, a reset, a
    resume at the archived epoch (an int), TensorBoard through a tunnel, the bucket mounted."""
    pytest.importorskip("keras")
    monkeypatch.setenv("COLAB_MAGICS_EMULATOR_DIR", str(content.parent / "emulator"))  # its own, fresh
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    run(ip, block("five minutes: auth"))
    run(ip, block("five minutes: a model"))
    run(ip, block("five minutes: archive"))
    shutil.rmtree(content / "runs")  # the VM reset

    code, reasons = block("five minutes: restore and resume"), []
    if not FUSE_OK:
        code, reasons = code.replace("path = %gcsfuse_mount local-bucket", "pass"), [FUSE_ONLY]
    run(ip, code)

    ckpt = ip.user_ns["ckpt"]
    assert ckpt.epoch == 3 and isinstance(ckpt.epoch, int) and ckpt.path == Path("runs/run1/epoch-003.keras")
    assert ip.user_ns["model"].history.epoch == [3, 4]  # fit went on after the 3 archived epochs
    assert ip.user_ns["url"].startswith("http")
    if FUSE_OK:
        assert Path(ip.user_ns["path"]).name == "local-bucket"
        assert (Path(ip.user_ns["path"]) / "exp" / "run1.3.zip").exists()
    if reasons:
        pytest.skip("; ".join(reasons))


def test_save_list_and_load(ip, content, buckets, capsys):
    steps_run(content / "runs" / "run1")
    step, epoch, path, files = run(ip, block("save, list, load"))
    assert ip.user_ns["url"] == "gs://my-bucket/exp/run1.1000.zip"
    assert names_in(buckets["my-bucket"]) == {"exp/run1.1000.zip", "exp/run1.500.zip"}
    assert "Dry run, nothing uploaded" in capsys.readouterr().out
    assert (step, epoch, path) == (500, None, content / "restored" / "ckpt-500.weights.h5")


def test_retry_deadline_setting(ip):
    run(ip, block("retry deadline"))
    assert ip.magics_manager.registry["ColabMagics"].settings().retry_deadline == 30


def test_resume_a_keras_model_at_its_epoch(ip, content, buckets):
    archive_keras_run(ip, content / "runs" / "run1", "gs://my-bucket/exp", epochs=2)
    shutil.rmtree(content / "runs")
    run(ip, block("resume a Keras model"))
    assert ip.user_ns["ckpt"].epoch == 2 and ip.user_ns["model"].history.epoch[0] == 2


def test_restore_with_a_higher_ratio(ip, content, buckets):
    archive_keras_run(ip, content / "runs" / "run1", "gs://my-bucket/exp", epochs=1)
    run(ip, block("restore ratio"))
    assert ip.user_ns["ckpt"].path == content / "runs" / "run1" / "epoch-001.keras"


def test_first_cell_with_gcs_resume(ip, content, buckets):
    from tests.test_records import hf_trainer

    hf = (pytest.importorskip("transformers"), pytest.importorskip("torch"))
    pytest.importorskip("accelerate")
    ip.user_ns["trainer"] = hf_trainer(hf, content / "runs" / "run1", 4)  # a reader's Trainer
    try:
        run(ip, block("first cell with gcs_resume"))
    finally:
        run(ip, f"%gcs_archive --stop {content / 'runs' / 'run1'}")
    assert not ip.user_ns["resumed"]  # nothing archived yet: a fresh start
    assert "exp/run1.4.zip" in names_in(buckets["my-bucket"])


def test_tensorboard_tunnels(ip, content, ngrok, monkeypatch):
    pytest.importorskip("tensorboard")
    from tests.test_tunnels import ToStandinEdge
    import urllib.request

    from conftest import free_port

    port = free_port()  # the stand-in cloudflared's edge, reachable through its trycloudflare.com URL
    monkeypatch.setenv("STANDIN_CLOUDFLARED_EDGE_PORT", str(port))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    urllib.request.install_opener(urllib.request.build_opener(ToStandinEdge(port)))
    code, reasons = runnable(block("tensorboard tunnels"))
    try:
        run(ip, code.replace("%load_ext colab_magics\n", ""))  # loaded already by the fixture
    finally:
        urllib.request.install_opener(None)
    assert ip.user_ns["url"].startswith("http")
    pytest.skip("; ".join(reasons))


def test_tboard_seed_api(content, ngrok):
    pytest.importorskip("tensorboard")
    (content / "bin").mkdir()
    for name in ("ngrok", "_edge.py"):
        shutil.copy2(ngrok / name, content / "bin" / name)
    names: dict = {}
    exec(block("tboard seed API"), names)
    assert names["url"].startswith("http") and (content / "runs").is_dir()


@pytest.mark.skipif(not FUSE_OK, reason=FUSE_ONLY)
def test_gcsfuse_mount(ip, content, buckets, mounts):
    buckets["datasets"].blob("imagenet/train/0.jpg").upload_from_string(b"jpg")
    run(ip, block("gcsfuse_mount"))
    assert Path(ip.user_ns["path"]) == mounts / "my-bucket"
    assert (content / "ckpt").is_dir()


@pytest.mark.skipif(not FUSE_OK, reason=FUSE_ONLY)
def test_gcsfuse_seed_api(gcs, buckets, mounts):
    names: dict = {}
    exec(block("gcsfuse seed API"), names)
    assert Path(names["path"]) == mounts / "my-bucket"


def test_gcs_archive_cell(ip, content, buckets, capsys):
    keras_model(ip)
    run(ip, block("gcs_archive cell"))
    assert re.search(r"Archived [12] checkpoint\(s\) of run1 to gs://my-bucket/experiments; last step 50: ",
                     capsys.readouterr().out)
    assert "experiments/run1.50.zip" in names_in(buckets["my-bucket"])


def test_gcs_archive_line_form(ip, content, buckets, capsys):
    write(content / "runs" / "run1" / "step-1.pt")
    code = block("gcs_archive line form")
    first, rest = code.split("\n", 1)
    run(ip, first)
    write(content / "runs" / "run1" / "step-2.pt")  # a training cell
    run(ip, rest)
    assert "last step 2" in capsys.readouterr().out
    assert "experiments/run1.2.zip" in names_in(buckets["my-bucket"])


TRAIN_PY = textwrap.dedent("""
    # a reader's train.py: one more step after the newest in runs/run1
    import argparse, os, pathlib, re
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.parse_args()
    if os.environ.get("RANK", "0") == "0":  # torchrun's chief writes the checkpoints
        run = pathlib.Path("runs/run1")
        run.mkdir(parents=True, exist_ok=True)
        steps = [int(m.group(1)) for p in run.iterdir() if (m := re.search(r"-(\\d+)\\.", p.name))]
        (run / f"step-{max(steps, default=0) + 1}.pt").write_bytes(os.urandom(1000))
""")


EXIT_CODES = {"colab-magics": 2}  # a command line whose exit code is not 0 by design: no command is misuse


def shell_lines(code: str, env: dict, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Each command line of a bash block, run by bash as a reader's terminal would."""
    results = []
    for line in code.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            results.append(subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True,
                                          timeout=300))
            expected = EXIT_CODES.get(line.split("#")[0].strip(), 0)
            assert results[-1].returncode == expected, (line, results[-1].stdout, results[-1].stderr)
    return results


def terminal(emulator_host: str, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "STORAGE_EMULATOR_HOST": emulator_host, **extra}


def test_colab_magics_run(content, buckets, emulator_host):
    pytest.importorskip("torch")
    (content / "train.py").write_text(TRAIN_PY)
    shell_lines(block("colab-magics run"), terminal(emulator_host), content)
    # the second job resumed nothing (no --resume) and wrote step 2 beside step 1: both archived, the newest last
    assert {"exp/run1.1.zip", "exp/run1.2.zip"} <= names_in(buckets["my-bucket"])


def test_archiver_from_python(content, buckets):
    names: dict = {}

    def train():  # a reader's training function: three steps
        for step in (1, 2, 3):
            write(content / "runs" / "run1" / f"step-{step}.pt")

    names["train"] = train
    exec(block("Archiver"), names)
    assert names["archiver"].summary().last_step == 3
    assert "experiments/run1.3.zip" in names_in(buckets["my-bucket"])


def test_tensorflow_hooks(ip, content, buckets):
    tf = pytest.importorskip("tensorflow")
    code = block("TensorFlow hooks")
    run(ip, part(code, "from colab_magics", "# tf.compat.v1"))

    # the tf.compat.v1 part is graph code: a TF 1 notebook has built its graph (a global step, variables)
    names = {"tf": tf, "NOTEBOOK_START": time.time(), "GcsArchiveHook": ip.user_ns["GcsArchiveHook"],
             "SaverWithCallback": ip.user_ns["SaverWithCallback"]}
    with tf.Graph().as_default():
        tf.compat.v1.train.get_or_create_global_step()
        tf.compat.v1.get_variable("w", shape=[2])
        exec(part(code, "# tf.compat.v1"), names)
    [archive] = [n for n in names_in(buckets["my-bucket"]) if n.startswith("tf/")]
    assert archive == "tf/run1.0.tar.gz"  # the step-0 save of CheckpointSaverHook, archived at end()


def test_training_callbacks(ip, content, buckets):
    pytest.importorskip("keras")
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    lightning = pytest.importorskip("lightning")
    code = block("training callbacks")
    keras_model(ip)
    run(ip, part(code, "from colab_magics", "# transformers"))
    assert "keras/run1.20.zip" in names_in(buckets["my-bucket"])

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                                     intermediate_size=16, num_labels=2)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 100, (4,), generator=g), "labels": torch.tensor(i % 2)}
            for i in range(8 * 167)]  # 3 epochs of 167 steps: checkpoint-500 and the last, 501
    ip.user_ns.update(model=transformers.BertForSequenceClassification(config), data=data,
                      Trainer=transformers.Trainer, TrainingArguments=transformers.TrainingArguments)
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    run(ip, part(code, "# transformers", "# Lightning"))
    assert ip.user_ns["ckpt"].path == Path("runs/bert1/checkpoint-501")
    assert ip.user_ns["trainer"].state.global_step == 501

    from tests.test_records import tiny_module

    ip.user_ns.update(L=lightning, ModelCheckpoint=lightning.pytorch.callbacks.ModelCheckpoint,
                      model=tiny_module((torch, lightning.pytorch))(),
                      data=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 4),
                                                                                      torch.randn(2, 2)), batch_size=2))
    run(ip, part(code, "# Lightning"))
    assert "lit/lit1.1000.zip" in names_in(buckets["my-bucket"])  # 1000 epochs of one batch: step 1000 last


def test_the_command_line(content, buckets, emulator_host):
    from colab_magics import runs
    from colab_magics.settings import Settings

    steps_run(content / "runs" / "run1")
    steps_run(content / "runs" / "my run", steps=(7,))
    (content / "train.py").write_text(TRAIN_PY)
    runs.save_run(content / "runs" / "run1", "gs://my-bucket/exp", settings=Settings(progress=False))  # saved before
    code, reasons = runnable(block("the command line"))
    env = terminal(emulator_host, COLAB_MAGICS_EMULATOR_DIR=str(content.parent / "emulator"))
    first, rest = code.split("\n", 1)
    shell_lines(first, {k: v for k, v in env.items() if k != "STORAGE_EMULATOR_HOST"}, content)  # --emulator
    results = shell_lines(rest, env, content)
    assert any("exp/run1.1000.zip" in r.stdout for r in results)  # the list
    assert names_in(buckets["my-bucket"]) >= {"exp/my run.7.zip", "exp/run1.1000.zip", "exp/run1.1001.zip"}
    pytest.skip("; ".join(reasons))


def test_tunnel_passwords_in_a_shell():
    pytest.skip(NOT_HERE["tunnel passwords in a shell"])


def test_the_public_api_block_imports_what_it_names():
    names: dict = {}
    exec(block("public API"), names)  # the callbacks' libraries are imported here, on first use

    import colab_magics

    assert {n for n in names if not n.startswith("__")} == set(colab_magics.__all__) - {
        "load_ipython_extension", "unload_ipython_extension"}


def test_migrating_from_colab_utils(content, buckets):
    tf = pytest.importorskip("tensorflow")
    from tests.test_compat import write_tf1_run

    train_log = write_tf1_run(tf, content / "log" / "training-run-1", steps=(500, 1000))
    saved = []
    names = {"TRAIN_LOG": str(train_log), "CHECKPOINTS": str(content / "restored"),
             "save_checkpoint_to_bucket": lambda *args, **kwargs: saved.append(kwargs)}
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("w", shape=[2])  # SaverWithCallback saves a graph's variables
        exec(block("migrating from colab_utils"), names)
    assert names["url"] == "gs://my-checkpoints/training-run-1.1000.zip"
    assert names["ckpt"] == str(content / "restored" / "model.ckpt-1000")
    with zipfile.ZipFile(buckets["my-checkpoints"].blob("training-run-1.1000.zip").open("rb")) as archive:
        assert any(n.startswith("events.out.tfevents") for n in archive.namelist())


def test_no_magic_line_of_the_readme_breaks_on_its_comment():
    """Trailing comments on magic lines are the README's style: they are comments, not arguments."""
    from colab_magics.magics import ColabMagics, parse

    lines = [line for _, code in readme_blocks() for line in code.splitlines()
             if re.match(r"\s*(\w+ = )?%gcs_list ", line) and "#" in line]
    assert lines
    for line in lines:
        args, _ = parse(ColabMagics.gcs_list, line.split("%gcs_list", 1)[1])
        assert args.destination.startswith("gs://") and args.run is None


def test_readme_python_blocks_parse():
    """Each python block is Python once IPython has turned its magics into calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    for lang, code in readme_blocks():
        if lang == "python":
            ast.parse(TransformerManager().transform_cell(code))

