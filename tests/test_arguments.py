"""Every magic splits its arguments one way (POSIX shell rules): paths with spaces, quotes and `$`.

In a notebook IPython first expands `$name` and `{expr}` (outside single quotes, `$$` for a literal
`$`), then `magics.parse` splits the line as a shell would. `$x` is defined in the user namespace in
these tests, so an unwanted expansion would show as a changed name.
"""

from __future__ import annotations

import os

import pytest
from IPython.core.error import UsageError

from colab_magics.magics import ColabMagics, parse

WEIRD = 'my "quoted" run $x'  # a space, double quotes and a dollar sign


def make_run(path):
    path.mkdir(parents=True)
    (path / "ckpt-7.index").write_bytes(b"index")
    (path / "ckpt-7.data-00000-of-00001").write_bytes(os.urandom(5_000))
    return path


def cell(ip, code: str):
    result = ip.run_cell(code, store_history=False)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result


def test_parse_splits_like_a_shell_and_returns_what_follows_dashdash():
    args, extra = parse(ColabMagics.tensorboard_tunnel, "'/tmp/log dir' --provider local -- --reload_interval 5",
                        passthrough=True)
    assert (args.logdir, args.provider, extra) == ("/tmp/log dir", "local", ["--reload_interval", "5"])
    args, _ = parse(ColabMagics.gcs_save, r'/tmp/my\ run "gs://b/a b" --step 3')
    assert (args.run_dir, args.destination, args.step) == ("/tmp/my run", "gs://b/a b", 3)
    args, _ = parse(ColabMagics.gcs_save, ["/tmp/it's $HOME", "gs://b"])  # the CLI's argv, taken as is
    assert args.run_dir == "/tmp/it's $HOME"
    args, extra = parse(ColabMagics.gcs_save, "-- -odd-name gs://b")  # `--` ends the options, as in a shell
    assert (args.run_dir, extra) == ("-odd-name", [])


@pytest.mark.parametrize("line", ["'/tmp/run gs://b", '"/tmp/run gs://b', "/tmp/run\\"])
def test_unbalanced_quotes_are_a_one_line_usage_error(ip, line):
    with pytest.raises(UsageError) as raised:
        ip.run_line_magic("gcs_save", line)
    message = str(raised.value)
    assert "\n" not in message and ("closing quotation" in message or "escaped character" in message)


def test_save_list_load_a_run_whose_path_has_spaces_quotes_and_dollar(ip, bucket, tmp_path):
    ip.user_ns["x"] = "EXPANDED"
    run = make_run(tmp_path / "parent dir" / WEIRD)
    target = tmp_path / "restored here $x"
    ip.user_ns["TARGET"] = str(target)

    cell(ip, f"url = %gcs_save '{run}' 'gs://{bucket.name}/my prefix'")
    assert ip.user_ns["url"] == f"gs://{bucket.name}/my prefix/{WEIRD}.7.zip"

    cell(ip, f"listed = %gcs_list 'gs://{bucket.name}'")
    [info] = ip.user_ns["listed"]
    assert (info.run, info.step, info.prefix) == (WEIRD, 7, "my prefix")

    # "$TARGET" expands a variable holding a path with spaces; '...' keeps `$x` literal
    cell(ip, f"""ckpt = %gcs_load 'gs://{bucket.name}/my prefix/{WEIRD}' "$TARGET" """)
    assert ip.user_ns["ckpt"] == str(target / "ckpt-7")
    assert (target / "ckpt-7.data-00000-of-00001").read_bytes() == (run / "ckpt-7.data-00000-of-00001").read_bytes()


def test_double_dollar_is_a_literal_dollar(ip, bucket, tmp_path):
    ip.user_ns["x"] = "EXPANDED"
    run = make_run(tmp_path / "run $x")
    cell(ip, f'url = %gcs_save "{tmp_path}/run $$x" gs://{bucket.name}')
    assert ip.user_ns["url"] == f"gs://{bucket.name}/run $x.7.zip" and run.exists()


def test_archive_cell_with_spaces_quotes_and_dollar(ip, bucket, tmp_path):
    ip.user_ns["x"] = "EXPANDED"
    run = tmp_path / WEIRD
    cell(ip, f"%%gcs_archive '{run}' 'gs://{bucket.name}/a prefix' --every 1h\n"
             f"import os\nos.makedirs({str(run)!r})\n"
             f"open({str(run / 'ckpt-3.index')!r}, 'wb').write(b'i')\n"
             f"open({str(run / 'ckpt-3.data-00000-of-00001')!r}, 'wb').write(b'd')\n")
    assert bucket.get_blob(f"a prefix/{WEIRD}.3.zip") is not None
