"""Property: any recipe document gives a valid recipe or one clear ConfigError, never another exception.

Three sources of documents: random YAML trees (any keys, any nesting, wrong types), mutations of the
shipped and test recipes (deleted keys, unknown keys, values of the wrong type, sections replaced by
scalars), and raw text / ``--set`` overrides through the file loader. A recipe that validates must be a
fixed point: validating its resolved form, or that form after a YAML round trip, gives it back.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import tiny_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mflow_cli.app.catalog import DATASETS, MODELS
from mflow_cli.app.recipe import SECTIONS, TOP_LEVEL, Recipe, load_recipe, validate
from mflow_cli.errors import ConfigError
from mflow_cli.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = {k: v for k, v in tiny_recipe().items() if k not in ("evaluate", "plot")}
BASES = [TINY] + [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "recipes").glob("*.yaml"))]


def _known_names() -> list[str]:
    """Every name a recipe could plausibly use: sections, registered kinds, constructor arguments."""
    names = set(TOP_LEVEL) | set(DATASETS) | set(MODELS)
    for target in [*DATASETS.values(), *(kind.cls for kind in MODELS.values())]:
        names |= set(inspect.signature(target).parameters)
    names |= set(inspect.signature(TrainConfig).parameters)
    names |= {"joint", "manifold", "density", "cosine", "constant", "auto", "cpu", "cuda", "kind", "name"}
    return sorted(names)


NAMES = _known_names()
# MFLOW_FUZZ_EXAMPLES=5000 for a longer hunt than the default suite's.
EXAMPLES = int(os.environ.get("MFLOW_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(NAMES),
)
keys = st.one_of(st.sampled_from(NAMES), st.text(max_size=8), st.integers(), st.booleans(), st.none())
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def _check(doc, source: str = "fuzz.yaml") -> Recipe | None:
    """Validate; assert the outcome is a fixed-point recipe or a one-line ConfigError."""
    try:
        recipe = validate(doc, source)
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        return None
    assert isinstance(recipe, Recipe)
    resolved = recipe.to_dict()
    assert _same(validate(resolved, "again"), recipe)
    assert _same(validate(yaml.safe_load(yaml.safe_dump(resolved)), "round-trip"), recipe)
    return recipe


def _same(a: Recipe, b: Recipe) -> bool:
    """Equality that treats NaN as equal to itself (a float field may hold one)."""

    def norm(v):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    return norm(a.to_dict()) == norm(b.to_dict())


@SETTINGS
@given(trees)
def test_random_trees(doc):
    _check(doc)


@SETTINGS
@given(st.dictionaries(st.sampled_from(TOP_LEVEL), trees, max_size=len(TOP_LEVEL)))
def test_random_trees_under_the_right_sections(doc):
    _check(doc)


@st.composite
def mutated_recipes(draw):
    doc = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(BASES))))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(("top",) + SECTIONS))
        op = draw(st.sampled_from(("delete", "set", "add", "replace")))
        node = doc if where == "top" else doc.get(where)
        if op == "replace" or not isinstance(node, dict):
            doc[where if where != "top" else draw(st.sampled_from(TOP_LEVEL))] = draw(trees)
        elif op == "delete" and node:
            del node[draw(st.sampled_from(sorted(node, key=str)))]
        elif op == "set" and node:
            node[draw(st.sampled_from(sorted(node, key=str)))] = draw(trees)
        else:
            node[draw(keys)] = draw(trees)
    return doc


@SETTINGS
@given(mutated_recipes())
def test_mutated_valid_recipes(doc):
    _check(doc)


def test_the_unmutated_bases_are_valid():
    """The property above would be vacuous if the starting recipes were already invalid."""
    for base in BASES:
        assert _check(base) is not None


@st.composite
def overrides(draw):
    if draw(st.booleans()):
        return draw(st.text(max_size=20))
    key = ".".join(draw(st.lists(st.sampled_from(NAMES) | st.text(max_size=5), min_size=1, max_size=3)))
    value = draw(st.text(max_size=12) | st.sampled_from(["1", "1e-3", "[1, 2]", "{a: 1}", "null", "true", "- x"]))
    return f"{key}={value}"


@SETTINGS
@given(
    text=st.one_of(
        st.text(max_size=200),
        trees.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
        mutated_recipes().map(yaml.safe_dump),
        st.sampled_from(["[[[[", "a: b: c", "!!python/object:os.system {}", "x: !!binary ====", "{a: 1"]),
    ),
    sets=st.lists(overrides(), max_size=3),
)
def test_recipe_files_and_set_overrides(text, sets):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            recipe = load_recipe(path, sets)
        except ConfigError as err:
            assert str(err) and "\n" not in str(err)
            return
        assert _same(validate(recipe.to_dict(), "again"), recipe)


@st.composite
def hostile_documents(draw) -> str:
    """A valid recipe's text with hostile YAML spliced in: a duplicated key, aliases that multiply, deep nesting,
    or a huge value, at a random key."""
    base = yaml.safe_dump(draw(mutated_recipes()))
    key = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["duplicate", "aliases", "nesting", "huge"]))
    if kind == "duplicate":
        return base + f"{key}: 1\n{key}: 2\n"
    if kind == "aliases":
        levels, width = draw(st.integers(1, 8)), draw(st.integers(2, 9))
        text = "v0: &v0 [" + ", ".join(["x"] * width) + "]\n"
        for i in range(1, levels + 1):
            text += f"v{i}: &v{i} [" + ", ".join([f"*v{i - 1}"] * width) + "]\n"
        return text + base.replace(f"{key}:", f"{key}: *v{levels}\n_{key}:", 1)
    if kind == "nesting":
        depth = draw(st.integers(1, 400))
        return base + f"{key}: " + "[" * depth + "]" * depth + "\n"
    size = draw(st.integers(1, 300_000))
    return base + f"{key}: [" + "7," * size + "7]\n"


@settings(max_examples=int(os.environ.get("MFLOW_FUZZ_EXAMPLES", 150)) // 3, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(text=hostile_documents())
def test_hostile_yaml_is_bounded_one_line_or_valid(text):
    """Duplicated keys, multiplying aliases, deep nesting and huge values: each either validates (and round-trips) or
    is one ConfigError line, within seconds, never a RecursionError or a memory blow-up."""
    import time

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.yaml"
        path.write_text(text)
        start = time.monotonic()
        try:
            recipe = load_recipe(path)
        except ConfigError as err:
            assert str(err) and "\n" not in str(err) and len(str(err)) < 2000
        else:
            assert _same(validate(recipe.to_dict(), "again"), recipe)
        assert time.monotonic() - start < 20


@pytest.mark.parametrize(
    "text",
    ["!!python/object/apply:os.system ['touch pwned']", "x: !!python/name:os.system", "!!binary ===="],
)
def test_yaml_tags_that_would_run_code_are_refused(tmp_path, text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_recipe(path)
    assert not (tmp_path / "pwned").exists()


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda k: k not in NAMES))
def test_cli_prints_any_bad_key_literally_on_one_line(key):
    """User text in an error (a key like '[/x]' or 'a\\nb') must not be read as rich markup or break the line."""
    import contextlib
    import io
    import sys

    from mflow_cli.app.cli import run

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], key: 1}}))
        err = io.StringIO()
        argv, sys.argv = sys.argv, ["mflow", "train", str(path), "--out", str(Path(tmp) / "run")]
        try:
            with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
                run()
        finally:
            sys.argv = argv
    assert exit_info.value.code == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: unknown key "), lines
    expected = repr(f"data.{key}").replace("\r", "\\r").replace("\n", "\\n")
    assert expected in lines[0]
