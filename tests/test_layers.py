"""The package map in the README is the import graph: every import between the packages of
unirec_dagster follows the map's arrows (directly or through lower packages), and the map has no
cycle, so data flows only downward."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unirec_dagster"
BASE = {"warehouse", "settings", "progress"}   # "any of them ──> warehouse, settings, progress"
COMMANDS = {"definitions", "show", "slots", "partitions", "synthetic", "replay", "api"}  # command-line entry points


def readme_map() -> dict[str, set[str]]:
    """The arrows of the README's package map: `a ──> b, c` and chains `a ──> b ──> c; d ──> e`."""
    text = (ROOT / "README.md").read_text()
    block = text.split("packages depend one way:", 1)[1].split("```")[1]
    arrows: dict[str, set[str]] = {}
    for line in block.splitlines():
        if line.startswith("("):
            continue
        for chain in line.split(";"):
            parts = [p.strip() for p in chain.split("──>") if p.strip()]
            for source, targets in zip(parts, parts[1:]):
                name = source.split()[0]
                arrows.setdefault(name, set()).update(t.strip() for t in targets.split(","))
    return arrows


def imports() -> dict[str, set[str]]:
    """Package -> the other unirec_dagster packages and modules its files import."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unirec_dagster"):
                names = [node.module + "." + a.name for a in node.names] if node.module == "unirec_dagster" \
                    else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("unirec_dagster")]
            else:
                continue
            for name in names:
                target = name.split(".")[1]
                if target != source:
                    found.setdefault(source, set()).add(target)
    return found


def reachable(arrows: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in arrows.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_readme_map_has_no_cycle():
    arrows = readme_map()
    assert {"defs", "training", "evaluation", "serving", "ranking", "model", "history"} <= set(arrows)
    for package in arrows:
        assert package not in reachable(arrows, package), f"the README's package map has a cycle through {package}"


def test_every_import_follows_the_readme_map():
    arrows = readme_map()
    wrong = []
    for source, targets in sorted(imports().items()):
        if source in COMMANDS:
            continue
        allowed = reachable(arrows, source) | BASE
        wrong += [f"{source} ──> {target}" for target in sorted(targets - allowed)
                  if not (source in BASE and target in BASE)]
    assert not wrong, "imports against the README's package map (an upward arrow, or a map to update): " + \
        ", ".join(wrong)


def test_the_map_names_real_packages():
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith("_")}
    arrows = readme_map()
    named = set(arrows) | {t for ts in arrows.values() for t in ts}
    assert named <= names, f"the README's map names what does not exist: {sorted(named - names)}"
    assert re.search(r"nothing points back up", (ROOT / "README.md").read_text())
