"""The recipes shipped with mflow: found by bare name (``mflow train dnf_spiral``) and listed by ``mflow recipes``.

In a checkout they are the files of ``recipes/``; an installed wheel carries the same files as package data
(``mflow_cli/recipes``, mapped from ``recipes/`` by setup.py).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]


def recipe_folder() -> Path | None:
    """Where the shipped recipes are: inside the installed package, else the checkout's ``recipes/``."""
    for folder in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def shipped_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe, sorted by name."""
    folder = recipe_folder()
    return {} if folder is None else {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe(arg: str | Path) -> Path:
    """A recipe argument as a file: an existing path as given, else a shipped recipe's bare name."""
    path = Path(arg)
    if path.exists():
        return path
    shipped = shipped_recipes()
    name = path.stem if path.suffix in (".yaml", ".yml") and len(path.parts) == 1 else str(arg)
    if name in shipped:
        return shipped[name]
    close = [n for n in shipped if name in n or n in name][:5]
    hint = f"; shipped recipes like it: {', '.join(close)}" if close else "; `mflow recipes` lists the shipped ones"
    raise ConfigError(f"recipe file not found: {arg}{hint}")


def summary(path: Path) -> str:
    """What a recipe reproduces: its first comment line."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
