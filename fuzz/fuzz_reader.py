"""Coverage-guided fuzzing of the JSONL reader and the format detector (atheris, libFuzzer).

Each input is written as a JSONL file and read the way `check` reads it: every line through
`iter_raw`, every parsed line through `parse_record`. A TunesmithError is a proper answer; any other
exception is a crash that libFuzzer saves as crash-<hash> in the current directory.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from tunesmith.data.formats import parse_record
    from tunesmith.data.reader import iter_raw
    from tunesmith.errors import TunesmithError

_PATH = os.path.join(tempfile.mkdtemp(prefix="tunesmith-fuzz-"), "input.jsonl")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(data)
    try:
        for raw in iter_raw(_PATH):
            if raw.error is None:
                ex = parse_record(raw.value, raw.line, raw.offset)
                ex.input_text(), ex.outputs(), ex.dialogue_text()
    except TunesmithError as error:
        if _PATH not in error.message and "input.jsonl" not in error.message:
            raise AssertionError(f"error does not name the file: {error.message}") from None


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
