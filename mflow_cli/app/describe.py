"""``mflow describe``: the recipe keys of a model kind or dataset, read from the code itself.

The keys, types and defaults come from the constructor's signature (with the kind's preset), the one-line docs
from the **Arguments** section of its docstring (zuko's style), and the citation from its **References** section,
so the description cannot drift from what validation accepts.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..training import TrainConfig
from . import catalog
from .recipe import INJECTED, _type_name


@dataclass(frozen=True)
class KeyDoc:
    """One recipe key: its name, type, default (``None`` printed as null) and the docstring's line."""

    name: str
    type: str
    default: Any
    required: bool
    doc: str


def docstring_section(obj: Any, title: str) -> list[str]:
    """The lines of a reST-style section (``Arguments:``, ``References:``) of ``obj``'s docstring, dedented once."""
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"{title}:")
    except StopIteration:
        return []
    body = []
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        body.append(line[4:] if line.startswith("    ") else line.strip())
    while body and not body[-1].strip():
        body.pop()
    return body


def argument_docs(obj: Any) -> dict[str, str]:
    """``{argument: description}`` from the Arguments section (continuation lines joined); a class inherits the
    entries of its base classes' sections for the arguments it does not document itself."""
    if inspect.isclass(obj):
        merged: dict[str, str] = {}
        for base in reversed(obj.__mro__):
            if base.__doc__:
                merged.update(_own_argument_docs(base))
        return merged
    return _own_argument_docs(obj)


def _own_argument_docs(obj: Any) -> dict[str, str]:
    docs: dict[str, str] = {}
    name = None
    for line in docstring_section(obj, "Arguments"):
        if line and not line.startswith(" ") and ":" in line:
            name, _, text = line.partition(":")
            name = name.strip()
            docs[name] = text.strip()
        elif name is not None and line.strip():
            docs[name] += " " + line.strip()
    return docs


def references(obj: Any) -> list[str]:
    """The lines of the References section, without the leading ``|``."""
    return [line.strip().lstrip("|").strip() for line in docstring_section(obj, "References") if line.strip()]


def keys(target: Callable, preset: Mapping[str, Any] | None = None) -> list[KeyDoc]:
    """Every recipe key of ``target`` (a class or function): type, default (the preset's where it sets one), doc."""
    preset = preset or {}
    init = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(init)
    docs = argument_docs(target)
    out = []
    for name, p in inspect.signature(target).parameters.items():
        if name in INJECTED or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        default = preset.get(name, p.default)
        required = default is inspect.Parameter.empty
        out.append(KeyDoc(name, _type_name(hints.get(name, Any)), None if required else default, required,
                          docs.get(name, "")))
    return out


@dataclass(frozen=True)
class Description:
    """What ``mflow describe`` prints for one name: a title, the citations, and keys by recipe section."""

    title: str
    references: list[str]
    sections: dict[str, list[KeyDoc]]


def describe_kind(kind: str) -> Description:
    """The keys of ``model.kind: KIND`` and of the ``evaluate``/``plot`` sections that go with it."""
    entry = catalog.model_kind(kind)
    sections = {"model": keys(entry.cls, entry.preset), "train": keys(TrainConfig)}
    sections["evaluate"] = keys(entry.evaluation.options)
    sections["plot"] = keys(entry.evaluation.figures)
    if entry.pixel_evaluation is not None:
        sections["evaluate (image data)"] = keys(entry.pixel_evaluation.options)
        sections["plot (image data)"] = keys(entry.pixel_evaluation.figures)
    title = f"model.kind: {kind} — {entry.summary} ({entry.cls.__module__}.{entry.cls.__name__})"
    return Description(title, references(entry.cls), sections)


def describe_data(name: str) -> Description:
    """The keys of ``data.name: NAME``."""
    cls = catalog.dataset_class(name)
    summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
    title = f"data.name: {name} — {summary} ({cls.__module__}.{cls.__name__})"
    return Description(title, references(cls), {"data": keys(cls)})
