"""Small shared pieces exist once: the one-line exception text and the progress-message type."""

import re
from pathlib import Path

import tunesmith
from tunesmith.errors import one_line

SRC = Path(tunesmith.__file__).parent


def _sources() -> dict[str, str]:
    return {str(p.relative_to(SRC)): p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}


def test_one_line_is_the_type_and_the_first_line_of_the_message():
    assert one_line(ValueError("bad header\nat byte 12\n")) == "ValueError: bad header"
    assert one_line(OSError("  \n  disk gone  ")) == "OSError: disk gone"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("")) == "RuntimeError"


def test_one_line_and_say_are_defined_once():
    defined = {name: [path for path, text in _sources().items() if re.search(pattern, text, re.M)]
               for name, pattern in {
                   "one_line": r"^def _?one_line\(",
                   "Say": r"^\w+ = Callable\[\[str\], None\]",
               }.items()}
    assert defined == {"one_line": ["errors.py"], "Say": ["progress.py"]}


def _imported_packages(module: Path) -> set[str]:
    """The tunesmith packages a module imports, at its top or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found |= {n.split(".")[1] for n in names if n.startswith("tunesmith.")}
    return found


def test_models_do_not_import_data():
    """`data` checks token lengths with `models.chat`; the other way round would make the two a cycle."""
    offenders = {str(p.relative_to(SRC)) for p in (SRC / "models").rglob("*.py") if "data" in _imported_packages(p)}
    assert offenders == set()


def test_message_is_still_importable_from_data_formats():
    from tunesmith.data.formats import Message
    from tunesmith.messages import Message as Shared

    assert Message is Shared and Message("assistant", "{}", 0.0).weight == 0.0
