"""An Ollama Modelfile beside each GGUF export, so an Ollama user keeps the run's system prompt.

`<stem>.Modelfile` (not `Modelfile`): one export folder can hold several quantisations, and each file
gets its own Modelfile instead of the last export overwriting the others'. It holds

* ``FROM ./<file>.gguf`` (Ollama resolves it against the Modelfile's folder);
* ``TEMPLATE``: the chat template in Ollama's Go-template syntax, derived by rendering probe
  conversations with the tokenizer's own template and checked on others (`derive_chat_parts`);
  where the template is not "fixed text, role, fixed text, content, fixed text" per message, no
  TEMPLATE is written and the file and the export's notes say why;
* ``SYSTEM``: the system prompt the run was trained with (training, eval and serve put it first);
* ``PARAMETER stop`` for each end-of-turn token (eos and the template's markers).

Values are quoted the way Ollama's parser (parser/parser.go) reads them back: bare, "..." on one
line, or \"\"\"...\"\"\" across lines; a value that parser would cut short or change is refused.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ExportError, one_line

#: probe contents: plain words no template trims, escapes or recognises
_PROBE = {"system": "Probe7f3aSystem", "user": "Probe9c1eUser", "assistant": "Probe2b5dAnswer",
          "user2": "Probe4d8eAgain"}
_TRIPLE = '"""'


class TemplateNotDerived(Exception):
    """The chat template has no Go-template equivalent this module writes; the message says why."""


@dataclass(frozen=True)
class ChatParts:
    """Each message rendered as `before + role + after + content + end`; `bos` is what the template
    writes first that llama.cpp does not add itself; `runtime_bos` is the BOS llama.cpp adds."""

    bos: str
    before: str
    after: str
    end: str
    runtime_bos: str = ""

    def render(self, chat: list[dict[str, str]]) -> str:
        """The text llama.cpp sees for `chat` plus the assistant's turn opening, filled as Ollama fills it."""
        turns = "".join(f"{self.before}{m['role']}{self.after}{m['content']}{self.end}" for m in chat)
        return f"{self.runtime_bos}{self.bos}{turns}{self.before}assistant{self.after}"

    def go_template(self) -> str:
        return (f"{self.bos}{{{{ range .Messages }}}}{self.before}{{{{ .Role }}}}{self.after}{{{{ .Content }}}}"
                f"{self.end}{{{{ end }}}}{self.before}assistant{self.after}")


def _render(tokenizer: Any, chat: list[dict[str, str]], *, gen: bool) -> str:
    from tunesmith.models.chat import render

    return render(tokenizer, chat, add_generation_prompt=gen)


def _split(text: str, marks: list[str]) -> list[str]:
    """`text` cut at each of `marks` in order (each exactly once), or TemplateNotDerived."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            raise TemplateNotDerived("it does not write each message's content exactly once")
        head, text = text.split(mark)
        pieces.append(head)
    return [*pieces, text]


def derive_chat_parts(tokenizer: Any, *, add_bos: bool, with_system: bool = True) -> ChatParts:
    """The per-message text around roles and contents, read off the tokenizer's own template and
    checked on further conversations (with a system message when `with_system`, else also without)."""
    s, u, a, u2 = (_PROBE[k] for k in ("system", "user", "assistant", "user2"))
    try:
        full = _render(tokenizer, [{"role": "system", "content": s}, {"role": "user", "content": u},
                                   {"role": "assistant", "content": a}], gen=False)
    except Exception as exc:  # noqa: BLE001 - a template raising on plain messages is reported, not fatal
        raise TemplateNotDerived(f"it fails on a plain system/user/assistant chat ({one_line(exc)})") from None
    head, m1, m2, end = _split(full, [s, u, a])
    if not (m1.startswith(end) and m2.startswith(end)):
        raise TemplateNotDerived("its messages do not all end with the same text")
    around_user, around_assistant = m1[len(end):], m2[len(end):]
    at = around_user.find("user")
    before, after = around_user[:at], around_user[at + len("user"):]
    if at < 0 or around_assistant != f"{before}assistant{after}":
        raise TemplateNotDerived("it does not write the role name between the same fixed text for every role")
    bos_token = getattr(tokenizer, "bos_token", None) or ""
    opening = head.removesuffix(f"{before}system{after}")
    if opening == head or opening not in ("", bos_token):
        raise TemplateNotDerived("it writes the system message differently from the others")
    if "{{" in before + after + end + opening:
        raise TemplateNotDerived("its fixed text contains '{{', which Go templates would read as an action")
    # llama.cpp adds BOS itself when the vocabulary says so: the template must then not write it again
    parts = ChatParts("" if add_bos and opening else opening, before, after, end,
                      bos_token if add_bos else "")
    probes = [[{"role": "system", "content": s}, {"role": "user", "content": u}],
              [{"role": "system", "content": s}, {"role": "user", "content": u},
               {"role": "assistant", "content": a}, {"role": "user", "content": u2}]]
    if not with_system:
        probes.append([{"role": "user", "content": u}])
    for chat in probes:
        if parts.render(chat) != _render(tokenizer, chat, gen=True):
            roles = "/".join(m["role"] for m in chat)
            raise TemplateNotDerived(f"the derived template differs from it on a {roles} chat "
                                     "(a default system prompt, or text that depends on the position)")
    return parts


# ---------------------------------------------------------------------------------------------
# quoting


def quote(value: str, what: str) -> str:
    """`value` as Ollama's Modelfile parser reads it back exactly, or ExportError naming `what`."""
    odd = next((c for c in value if not (c.isprintable() or c in "\n\r\t")), None)
    if odd is not None:
        raise ExportError(f"{what} cannot be written to an Ollama Modelfile: it contains the control character "
                          f"U+{ord(odd):04X}, which Ollama's Modelfile parser drops",
                          f"remove that character from {what}")
    if "\n" not in value and "\r" not in value:
        return value if value and value == value.strip() and not value.startswith('"') else f'"{value}"'
    # Ollama ends a triple-quoted value at the first line break where the text so far ends in """
    for number, match in enumerate(re.finditer(r"[\r\n]", value), start=1):
        so_far = (_TRIPLE + value[:match.start()]).strip()
        if len(so_far) >= 6 and so_far.endswith(_TRIPLE):
            raise ExportError(f"{what} cannot be written to an Ollama Modelfile: its line {number} ends with "
                              '""", where Ollama would end the value',
                              f"remove the quotes at the end of line {number} of {what}")
    return f"{_TRIPLE}{value}{_TRIPLE}"


# ---------------------------------------------------------------------------------------------
# the file


@dataclass
class Modelfile:
    path: Path
    text: str
    ollama_create: str
    notes: list[str]


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


def ollama_name(run_id: str, quant: str) -> str:
    """A model name Ollama accepts: lower-case letters, digits, '-', '_' and '.'; the quant as the tag."""
    base = re.sub(r"[^a-z0-9_.-]+", "-", run_id.lower()).strip("-.") or "model"
    return f"tunesmith-{base}:{quant}"


def stop_tokens(tokenizer: Any) -> list[str]:
    """The end-of-turn tokens tunesmith's own decoding stops on (eos and the template's markers)."""
    from tunesmith.models.chat import end_of_turn_ids

    return [tokenizer.convert_ids_to_tokens(i) for i in sorted(end_of_turn_ids(tokenizer))]


def build_modelfile(gguf_file: Path, tokenizer: Any, *, system_prompt: str | None, system_where: str,
                    add_bos: bool, run_id: str, quant: str) -> Modelfile:
    """The Modelfile for `gguf_file` (not written yet: errors come before any heavy work)."""
    path = modelfile_path(gguf_file)
    notes: list[str] = []
    lines = [f"# Ollama Modelfile for tunesmith run {run_id} ({quant}).",
             f"# Create the model with: ollama create {ollama_name(run_id, quant)} -f {path.name}",
             f"FROM {quote('./' + gguf_file.name, 'the GGUF file name')}"]
    try:
        parts = derive_chat_parts(tokenizer, add_bos=add_bos, with_system=system_prompt is not None)
        lines.append(f"TEMPLATE {quote(parts.go_template(), 'the chat template')}")
    except TemplateNotDerived as exc:
        reason = (f"no TEMPLATE in {path.name}: the chat template cannot be written as an Ollama template ({exc}); "
                  "Ollama then picks one from the GGUF's chat template: compare `ollama show --template` with it")
        notes.append(reason)
        lines.append(f"# {reason}")
    if system_prompt is not None:
        lines.append(f"SYSTEM {quote(system_prompt, system_where)}")
    else:
        notes.append(f"no SYSTEM in {path.name}: the project has no system_prompt (each example brought its own)")
    lines.extend(f"PARAMETER stop {quote(token, 'an end-of-turn token')}" for token in stop_tokens(tokenizer))
    create = f"ollama create {ollama_name(run_id, quant)} -f {shlex.quote(str(path))}"
    return Modelfile(path, "\n".join(lines) + "\n", create, notes)
