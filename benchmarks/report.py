"""Where every benchmark leaves its numbers: NAME.json (everything, for tools) and NAME.md (the tables,
for people and the README), in benchmarks/results/ unless told otherwise."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A markdown table: one header, one line per row (cells already formatted)."""
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_report(name: str, result: dict, lines: list[str], out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
