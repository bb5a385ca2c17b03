"""Recipes: YAML documents whose sections map one-to-one onto constructor arguments.

A recipe has top-level keys ``name``, ``seed``, ``device``, ``threads`` and the sections

- ``data``: ``name`` picks a dataset of the catalog (:mod:`mflow_cli.app.catalog`); the other keys are its
  constructor's arguments;
- ``model``: ``kind`` picks a model kind of the catalog: a class and a preset of its constructor's defaults; the
  other keys are the constructor's arguments;
- ``train``: the fields of :class:`mflow_cli.training.TrainConfig`;
- ``evaluate`` / ``plot``: the fields of the kind's evaluation options / figure options (the catalog picks them
  from the model kind and the dataset).

Validation reads each target's signature and type hints, so the schema cannot drift from the code:
an unknown key, a wrong type, a missing required key or a missing file is a :class:`ConfigError`
naming the key and the recipe file. Nothing is built until the whole recipe is valid. Spellings of
earlier versions (``catalog.ModelKind.renamed``, :data:`VALUE_SPELLINGS`) are rewritten first, each with a
one-line notice on the ``mflow`` logger, so saved recipes and checkpoints keep loading.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..datasets.base import ExistingPath
from ..errors import ConfigError
from ..io import atomic_path, writing
from ..training import TrainConfig
from . import catalog

log = logging.getLogger("mflow")

TOP_LEVEL = ("name", "seed", "device", "threads", "data", "model", "train", "evaluate", "plot")
SECTIONS = ("data", "model", "train", "evaluate", "plot")
# Arguments the library passes itself; a recipe may not set them.
MAX_THREADS = 1024
RUN_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}")
"""A run name is a plain folder name under ``runs/``: it cannot escape it."""
INJECTED = ("self", "data_shape", "model", "dataset", "records", "run_dir", "out_dir")


@dataclass
class Recipe:
    """A validated recipe with every default filled in; ``source`` says where it came from (for messages)."""

    name: str
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    data: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    plot: dict = field(default_factory=dict)
    source: str = field(default="recipe", compare=False)

    def to_dict(self) -> dict:
        return {k: copy.deepcopy(getattr(self, k)) for k in TOP_LEVEL}


# --------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return "path to an existing file" if tp is ExistingPath else tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}" if args else "mapping"
    return str(tp)


def _check(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, converted value) for ``value`` against the type hint ``tp``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return value in args and type(value) in {type(a) for a in args}, value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, conv = _check(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        out = []
        for v in value:
            ok, conv = _check(v, item)
            if not ok:
                return False, value
            out.append(conv)
        return True, out
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, value
        item = args[1] if args else Any
        out = {}
        for k, v in value.items():
            ok, conv = _check(v, item)
            if not ok:
                return False, value
            out[k] = conv
        return True, out
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is ExistingPath:
        return isinstance(value, str), value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def short_repr(value: Any) -> str:
    """A bounded repr for error messages: never expands a huge or deeply shared value."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_kwargs(
    target: Callable, values: dict, section: str, source: str, defaults: Mapping[str, Any] | None = None
) -> dict:
    """Check ``values`` against ``target``'s signature; return them with defaults filled in.

    ``defaults`` (a model kind's preset) replaces the signature's defaults of the arguments it names.
    """
    defaults = defaults or {}
    params = {
        name: p
        for name, p in inspect.signature(target).parameters.items()
        if name not in INJECTED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    init = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(init)
    for key in values:
        if key not in params:
            expected = ", ".join(params) or "no keys"
            raise ConfigError(f"{source}: unknown key {f'{section}.{key}'!r} (expected one of: {expected})")
    resolved = {}
    for name, p in params.items():
        if name not in values:
            default = defaults.get(name, p.default)
            if default is inspect.Parameter.empty:
                raise ConfigError(f"{source}: missing required key '{section}.{name}'")
            resolved[name] = copy.deepcopy(default)
            continue
        tp = hints.get(name, Any)
        ok, value = _check(values[name], tp)
        if not ok:
            raise ConfigError(
                f"{source}: '{section}.{name}' must be {_type_name(tp)}, got {short_repr(values[name])}"
            )
        if section != "train":  # TrainConfig.check gives the train keys their own ranges
            _check_number(value, f"{source}: '{section}.{name}'")
        if isinstance(value, str) and _mentions(tp, ExistingPath):
            found = os.path.expanduser(value)
            if not os.path.exists(found):
                raise ConfigError(f"{source}: '{section}.{name}': file not found: {value!r}")
            if not (os.path.isfile(found) or os.path.isdir(found)):
                raise ConfigError(f"{source}: '{section}.{name}': {value!r} is not a regular file or folder")
        resolved[name] = value
    return resolved


MAX_INT = 2**62


def _check_number(value: Any, where: str) -> None:
    """Every number a recipe gives is finite, and every integer is in 0..2^62 (no argument takes a negative
    count); the constructors check their own narrower ranges and raise :class:`ConfigError` before any work."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where} must be a finite number, got {item}")
        if isinstance(item, int) and not 0 <= item <= MAX_INT:
            raise ConfigError(f"{where} must be an integer in 0..2^62, got {short_repr(item)}")


def _mentions(tp: Any, target: type) -> bool:
    return tp is target or any(_mentions(a, target) for a in typing.get_args(tp))


# --------------------------------------------------------------------------- loading


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML scalars (``1e-3`` is read as a float)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
        except ConfigError:
            value = raw
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out.append((key.strip(), value))
    return out


def apply_overrides(doc: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Set dotted keys in ``doc``. A key without a section (``epochs``) is looked up in the sections."""
    doc = copy.deepcopy(doc)
    for key, value in overrides:
        parts = key.split(".")
        if len(parts) == 1 and parts[0] not in TOP_LEVEL:
            owners = [s for s in SECTIONS if isinstance(doc.get(s), dict) and parts[0] in doc[s]]
            if not owners:
                owners = [s for s in SECTIONS if parts[0] in _section_keys(doc, s)]
            if len(owners) != 1:
                where = " or ".join(f"{s}.{parts[0]}" for s in owners) or "no section"
                raise ConfigError(f"--set {key}: ambiguous or unknown key ({where}); write section.key")
            parts = [owners[0], parts[0]]
        node = doc
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return doc


def _targets(doc: dict) -> dict[str, Callable | None]:
    """What validates each section of ``doc`` (None where the data name or model kind is unknown)."""
    data, model = doc.get("data"), doc.get("model")
    kind = model.get("kind") if isinstance(model, dict) else None
    name = data.get("name") if isinstance(data, dict) else None
    entry = catalog.MODELS.get(kind) if isinstance(kind, str) else None
    dataset_cls = catalog.DATASETS.get(name) if isinstance(name, str) else None
    evaluation = entry.evaluation_for(dataset_cls) if entry is not None and dataset_cls is not None else None
    return {
        "train": TrainConfig,
        "model": entry.cls if entry is not None else None,
        "data": dataset_cls,
        "evaluate": evaluation.options if evaluation is not None else None,
        "plot": evaluation.figures if evaluation is not None else None,
    }


def _section_keys(doc: dict, section: str) -> set[str]:
    """The keys a section accepts, from its target's signature (empty if the target is unknown)."""
    target = _targets(doc)[section]
    return set(inspect.signature(target).parameters) - set(INJECTED) if target else set()


MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits a recipe needs: no duplicate keys, bounded nesting and aliases.

    ``a: 1`` followed by ``a: 2`` is refused (naming the key and both lines) rather than silently resolved, and a
    document whose aliases expand to more than :data:`MAX_NODES` nodes (an "alias bomb") or that nests deeper than
    :data:`MAX_DEPTH` is refused before anything is built from it.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source, self.depth = source, 0

    def compose_node(self, parent, index):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(f"{self.source}: nested more than {MAX_DEPTH} levels deep at line {line}")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.source}: duplicate key {short_repr(key)} at lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The number of nodes ``node`` stands for once every alias is expanded (shared subtrees counted each time)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a node that refers to itself stops here
        if isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    return memo[id(node)]


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with the recipe limits (:class:`_RecipeLoader`); errors name ``source``."""
    loader = None
    try:
        loader = _RecipeLoader(text, source)
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise ConfigError(f"{source}: the document expands to more than {MAX_NODES:,} values (aliases)")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {problem}{line}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """Read a recipe file: at most :data:`MAX_RECIPE_BYTES`, a regular text file, a mapping of sections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    doc = parse_yaml(text, str(path))
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(doc).__name__}")
    return doc


def write_yaml(obj: dict, path: str | Path) -> None:
    """Write a resolved recipe atomically (temp file, then rename)."""
    with atomic_path(path) as tmp, writing(path):
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


VALUE_SPELLINGS: Mapping[str, str] = {
    "rq-coupling": "rq_coupling",
    "affine-coupling": "affine_coupling",
    "affine-autoregressive": "affine_autoregressive",
}
"""Model-key values as earlier versions spelled them -> today's spelling."""


def _rename(section: dict, old: str, new: str, where: str, source: str, changes: list[str]) -> None:
    if old in section:
        if new in section:
            raise ConfigError(f"{source}: '{where}.{old}' and '{where}.{new}' are the same key (old and new name)")
        section[new] = section.pop(old)
        changes.append(f"{where}.{old} -> {where}.{new}")


def migrate(doc: dict, source: str) -> dict:
    """Rewrite keys and values spelled as in earlier versions, with one notice on the ``mflow`` logger.

    Model keys and training phases follow the kind's ``renamed``/``renamed_phases`` in the catalog, dataset keys
    :data:`~mflow_cli.app.catalog.DATA_RENAMED`, string values :data:`VALUE_SPELLINGS`; ``plot`` keys that are now
    evaluation options move to ``evaluate`` (where that does not set them already). A recipe that spells one key
    both ways is an error.
    """
    doc = copy.deepcopy(doc)
    changes: list[str] = []
    model, data = doc.get("model"), doc.get("data")
    kind = model.get("kind") if isinstance(model, dict) else None
    entry = catalog.MODELS.get(kind) if isinstance(kind, str) else None
    if entry is not None:
        for old, new in entry.renamed.items():
            _rename(model, old, new, "model", source, changes)
        for key, value in list(model.items()):
            if isinstance(value, str) and value in VALUE_SPELLINGS:
                model[key] = VALUE_SPELLINGS[value]
                changes.append(f"{value} -> {VALUE_SPELLINGS[value]}")
        train = doc.get("train")
        epochs = train.get("epochs") if isinstance(train, dict) else None
        if isinstance(epochs, dict):
            for old, new in entry.renamed_phases.items():
                if old in epochs and new not in epochs:
                    epochs[new] = epochs.pop(old)
                    changes.append(f"train.epochs.{old} -> train.epochs.{new}")
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str):
        for old, new in catalog.DATA_RENAMED.get(name, {}).items():
            _rename(data, old, new, "data", source, changes)
        dataset_cls = catalog.DATASETS.get(name)
        if isinstance(data.get("logit"), bool) and dataset_cls is not None and "preprocessing" in inspect.signature(
            dataset_cls
        ).parameters and "logit" not in inspect.signature(dataset_cls).parameters:
            data["preprocessing"] = catalog.LOGIT_KEY[data.pop("logit")]
            changes.append(f"data.logit -> data.preprocessing: {data['preprocessing']}")
    plot, evaluate = doc.get("plot"), doc.get("evaluate")
    targets = _targets(doc)
    if isinstance(plot, dict) and targets["plot"] is not None and targets["evaluate"] is not None:
        figure_keys = set(inspect.signature(targets["plot"]).parameters)
        option_keys = set(inspect.signature(targets["evaluate"]).parameters)
        if evaluate is None:
            evaluate = doc["evaluate"] = {}
        for key in [k for k in plot if k not in figure_keys and k in option_keys]:
            value = plot.pop(key)
            if isinstance(evaluate, dict) and key not in evaluate:
                evaluate[key] = value
            changes.append(f"plot.{key} -> evaluate.{key}")
    if changes:
        log.warning("%s uses old spellings (%s); they still load, the new ones are preferred", source,
                    ", ".join(changes))
    return doc


def validate(doc: Any, source: str, default_name: str = "run") -> Recipe:
    """Validate a recipe document (already parsed) and return it with all defaults filled in."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections")
    for key in doc:
        if key not in TOP_LEVEL:
            raise ConfigError(
                f"{source}: unknown top-level key {short_repr(key)} (expected one of: {', '.join(TOP_LEVEL)})"
            )
    for section in SECTIONS:
        value = doc.get(section, {})
        if value is None:
            value = {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys")
    doc = migrate(doc, source)
    top = {
        "name": (str, doc.get("name", default_name)),
        "seed": (int, doc.get("seed", 0)),
        "device": (Literal["auto", "cpu", "cuda"], doc.get("device", "auto")),
        "threads": (int | None, doc.get("threads")),
    }
    for key, (tp, value) in top.items():
        ok, _ = _check(value, tp)
        if not ok:
            raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {short_repr(value)}")
    if top["threads"][1] is not None and not 1 <= top["threads"][1] <= MAX_THREADS:
        raise ConfigError(f"{source}: 'threads' must be in 1..{MAX_THREADS}, got {short_repr(top['threads'][1])}")
    if not 0 <= top["seed"][1] < 2**63:
        raise ConfigError(f"{source}: 'seed' must be in 0..2^63 - 1, got {short_repr(top['seed'][1])}")
    if not RUN_NAME.fullmatch(top["name"][1]):
        raise ConfigError(
            f"{source}: 'name' must be a plain name (letters, digits, '.', '_', '-'; no '/', not '.' or '..'), "
            f"got {short_repr(top['name'][1])}"
        )

    data = dict(doc.get("data") or {})
    model = dict(doc.get("model") or {})
    for section, key, table in (("data", "name", catalog.DATASETS), ("model", "kind", catalog.MODELS)):
        value = (data if section == "data" else model).get(key)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{section}.{key}' must name one of: {', '.join(sorted(table))}")
    data_name = data.pop("name")
    model_kind = model.pop("kind")
    dataset_cls = catalog.dataset_class(data_name, f"{source}: data.name: ")
    entry = catalog.model_kind(model_kind, f"{source}: model.kind: ")
    evaluation = entry.evaluation_for(dataset_cls)

    recipe = Recipe(
        name=top["name"][1],
        seed=top["seed"][1],
        device=top["device"][1],
        threads=top["threads"][1],
        data={"name": data_name, **validate_kwargs(dataset_cls, data, "data", source)},
        model={"kind": model_kind, **validate_kwargs(entry.cls, model, "model", source, entry.preset)},
        train=validate_kwargs(TrainConfig, dict(doc.get("train") or {}), "train", source),
        evaluate=validate_kwargs(evaluation.options, dict(doc.get("evaluate") or {}), "evaluate", source),
        plot=validate_kwargs(evaluation.figures, dict(doc.get("plot") or {}), "plot", source),
        source=source,
    )
    TrainConfig(**recipe.train).check(entry.cls.phase_names(**_without(recipe.model, "kind")), source)
    return recipe


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``--set``) and validate a recipe file."""
    doc = read_yaml(path)
    doc = apply_overrides(doc, parse_overrides(overrides or []))
    return validate(doc, str(path), default_name=Path(path).stem)
