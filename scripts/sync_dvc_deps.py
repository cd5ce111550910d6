"""Rewrite the code deps of every stage in dvc.yaml from its imports (tmifpe.pipeline.code_deps).

Usage: python scripts/sync_dvc_deps.py [--check] [DVC_YAML]. Each stage's ``deps:`` list becomes
the derived code files (the closure of its ``python -m stages.<name>`` entry point) followed by
its other deps (data, models, results, non-Python resources) in their order; comments and the
rest of the file are kept. ``--check`` writes nothing and exits 1 listing the stale stages.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tmifpe.pipeline.code_deps import ROOT, dvc_code_deps, is_code_dep

STAGE = re.compile(r"^  (\w+):\s*$")
CMD = re.compile(r"cmd: python -m (stages\.\w+)(.*)$")
DEPS = re.compile(r"^(\s+)deps:\s*$")


def render(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """(dvc.yaml with derived code deps, names of the stages whose deps changed)."""
    lines, out, stale = text.splitlines(), [], []
    stage, module, per_item, in_stages, i = None, None, False, False, 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^\S", line):  # a top-level key: `stages:` or past it
            stage, module, in_stages = None, None, line.startswith("stages:")
        elif in_stages and (m := STAGE.match(line)):
            stage, module = m.group(1), None
        if m := CMD.search(line):
            module, per_item = m.group(1), "${item.loss}" in m.group(2)
        out.append(line)
        i += 1
        deps = DEPS.match(line)
        if not (stage and module and deps):
            continue
        item = f"{deps.group(1)}  - "
        old = []
        while i < len(lines) and lines[i].startswith(item):
            old.append(lines[i])
            i += 1
        entries = [(o[len(item):].split("#")[0].strip(), o) for o in old]
        kept = [o for e, o in entries if not is_code_dep(e, root)]
        new = [f"{item}{d}" for d in dvc_code_deps(module, per_item_loss=per_item, root=root)]
        if [*new, *kept] != old:
            stale.append(stage)
        out += [*new, *kept]
    return "\n".join(out) + "\n", stale


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0]) if paths else ROOT / "dvc.yaml"
    text, stale = render(path.read_text())
    if check:
        if stale:
            print(f"{path}: code deps of {', '.join(stale)} are stale; run "
                  "`python scripts/sync_dvc_deps.py`", file=sys.stderr)
        return 1 if stale else 0
    path.write_text(text)
    print(f"{path}: {len(stale)} stage(s) updated{': ' + ', '.join(stale) if stale else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
