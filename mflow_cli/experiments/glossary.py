"""The README's glossary of ``mflow evaluate``: every key of every evaluator, with its meaning, unit and direction.

    python -m mflow_cli.experiments.glossary                  # print the Markdown
    python -m mflow_cli.experiments.glossary --readme README.md   # replace the block between the glossary markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mflow_cli.metrics.glossary import glossary_markdown

START, END = "<!-- glossary -->", "<!-- /glossary -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="write the glossary into this file between its markers")
    args = parser.parse_args()
    text = glossary_markdown().strip()
    if args.readme is None:
        Console(markup=False, highlight=False).print(text, soft_wrap=True)
        return
    readme = args.readme.read_text()
    head, marker, rest = readme.partition(START)
    if not marker:
        raise SystemExit(f"{args.readme}: no {START} marker")
    tail = rest.partition(END)[2] if END in rest else rest
    args.readme.write_text(f"{head}{START}\n\n{text}\n\n{END}{tail}")
    Console().print(f"wrote the glossary into {args.readme}")


if __name__ == "__main__":
    main()
