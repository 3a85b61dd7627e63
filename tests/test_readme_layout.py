"""The README's Layout section is the map a newcomer reads first: it must name every part of the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tunesmith"


def layout() -> dict[str, str]:
    """Entry (`cli/`, `project.py`) -> its text, continuation lines included."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^  (\S+)\s*(.*)$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2)
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def parts(folder: Path) -> list[str]:
    """Module stems, subpackages (with a slash) and shipped page assets of one package folder."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name in ("__init__.py", "__main__.py", "__pycache__", "py.typed") or p.name.endswith(".jsonl"):
            continue
        if p.is_dir():
            out.append(p.name + "/")
        elif p.suffix == ".py":
            out.append(p.stem)
        elif p.suffix in (".css", ".js"):
            out.append(p.name)
    return out


def mentioned(name: str, text: str) -> bool:
    return re.search(r"(?<![\w.])" + re.escape(name) + r"(?![\w])", text) is not None


def test_every_top_level_part_has_an_entry_and_every_entry_exists():
    entries = layout()
    top = [p if p.endswith("/") else p + ".py" for p in parts(PACKAGE)]
    text = " ".join(f"{k} {v}" for k, v in entries.items())
    missing = [p for p in top if not mentioned(p.rstrip("/") + ("/" if p.endswith("/") else ""), text)
               and not mentioned(p, text)]
    assert not missing, f"README Layout does not name: {missing}"
    stale = [e for e in entries if e.startswith(tuple("abcdefghijklmnopqrstuvwxyz_")) and (e.endswith("/") or
             e.endswith(".py")) and not (PACKAGE / e.rstrip("/")).exists()]
    assert not stale, f"README Layout names what is not in src/tunesmith: {stale}"


def test_every_module_of_a_package_is_named_in_its_entry():
    entries = layout()
    missing = {}
    for entry, text in entries.items():
        if not entry.endswith("/") or not (PACKAGE / entry).is_dir():
            continue
        folder = PACKAGE / entry
        names = parts(folder) + [f"{sub}{name}" for sub in parts(folder) if sub.endswith("/")
                                 for name in parts(folder / sub)]
        gone = [n for n in names if not mentioned(n.split("/")[-1] or n, text)]
        if gone:
            missing[entry] = gone
    assert not missing, f"README Layout entries that leave out modules: {missing}"
