"""mflow describe: every recipe key of every catalog name documented, every model citing its paper."""

from __future__ import annotations

import pytest

from mflow_cli.app import catalog
from mflow_cli.app.describe import argument_docs, describe_data, describe_kind, keys, references


@pytest.mark.parametrize("kind", sorted(catalog.MODELS))
def test_every_key_of_every_kind_is_documented(kind):
    description = describe_kind(kind)
    undocumented = [f"{section}.{row.name}" for section, rows in description.sections.items() for row in rows
                    if not row.doc]
    assert not undocumented, f"{kind}: no Arguments entry for {undocumented}"
    assert description.references, f"{kind}: {catalog.MODELS[kind].cls.__name__} cites no paper"


@pytest.mark.parametrize("name", sorted(catalog.DATASETS))
def test_every_dataset_key_is_documented(name):
    rows = describe_data(name).sections["data"]
    assert [r.name for r in rows if not r.doc] == []


def test_the_preset_shows_in_the_defaults():
    dnf = {r.name: r for r in keys(catalog.MODELS["dnf"].cls, catalog.MODELS["dnf"].preset)}
    mflow = {r.name: r for r in keys(catalog.MODELS["mflow"].cls, catalog.MODELS["mflow"].preset)}
    assert dnf["noise_std"].default == 0.1 and mflow["noise_std"].default == 0.0
    assert mflow["schedule"].default == "sequential" and "Gaussian inflation" in dnf["noise_std"].doc


def test_docstring_sections_are_parsed_with_continuation_lines():
    def f(a, b):
        """Summary.

        References:
            | A paper (Someone, 2020)

        Arguments:
            a: The first, a long line
                that continues here.
            b: The second.
        """

    assert argument_docs(f) == {"a": "The first, a long line that continues here.", "b": "The second."}
    assert references(f) == ["A paper (Someone, 2020)"]


def test_mflow_describe_prints_a_kind_and_a_dataset(mflow, capsys):
    assert mflow("describe", "dnf") == 0
    out = capsys.readouterr().out
    assert "noise_std" in out and "Brehmer" in out
    assert mflow("describe", "--data", "array") == 0
    assert "stream_threshold_mb" in capsys.readouterr().out
    assert mflow("describe", "nonsense") == 2
