"""What the CLI prints: user strings literally (no markup, no emoji codes, no hyperlinks), progress lines in logs."""

from __future__ import annotations

import h5py
import numpy as np
import yaml
from helpers import tiny_recipe

WEIRD = ":smile: [bold]b[/] [/] [link=file:etc]x[/link]"


def test_user_strings_come_out_verbatim_in_errors_and_tables(tmp_path, mflow, capsys):
    run = tmp_path / ":x: [bold]run[/]"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(train={"epochs": 1, "batch_size": 100})))
    assert mflow("train", recipe, "--out", run) == 0
    assert f"-> {run}" in capsys.readouterr().out  # the header names the folder as given
    folder = tmp_path / ":smile: [bold]b["  # with the file name below the path reads ...[/]x [link=file:etc]...
    folder.mkdir()
    wide = folder / "]x [link=file:etc]x[" / "]wide.h5"
    wide.parent.mkdir()
    assert "[/]" in str(wide) and ":smile:" in str(wide) and "[link=" in str(wide)
    with h5py.File(wide, "w") as fh:
        fh["x"] = np.zeros((4, 3), dtype="float32")
    assert mflow("encode", run, wide, "-o", tmp_path / "z.h5") == 2
    err = capsys.readouterr().err
    assert f"error: {wide}:x: shape (4, 3) does not match" in err and "😄" not in err
    assert mflow("encode", run, wide, "--dataset", WEIRD, "-o", tmp_path / "z.h5") == 2
    assert f"no dataset '{WEIRD}'" in capsys.readouterr().err
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump(tiny_recipe(name="[link=file:///etc/passwd]x[/link]")))
    assert mflow("train", named) == 2
    assert "got '[link=file:///etc/passwd]x[/link]'" in capsys.readouterr().err
    assert mflow("evaluate", run) == 0
    out = capsys.readouterr().out
    assert f"evaluation of {run}" in out.replace("\n", "") or str(run) in out
    assert "[bold]run[/]" in out and "\x1b]8;" not in out  # no terminal hyperlink escape


def test_progress_lines_appear_while_training_when_output_is_not_a_terminal(tmp_path, mflow, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(train={"epochs": 3, "batch_size": 20})))
    assert mflow("train", recipe, "--out", tmp_path / "run") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("joint: ")]
    assert len(lines) >= 10, lines  # a line every 5% of the 60 steps, not one bar at the end
    assert lines[-1].startswith("joint: 60/60 (100%)") and "loss" in lines[-1]


def test_help_shows_flags_as_flags_and_plain_usage(mflow, capsys):
    assert mflow("sample", "--help") == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out and "{" not in out.splitlines()[0] and "RUN_DIR" in out and "--force" in out
    assert "Example" in out
