"""The Ollama Modelfile beside a GGUF export: parsed the way Ollama parses it, its TEMPLATE filled the
way Ollama fills it, and compared with the tokenizer's own chat template."""

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl, write_project_file
from fixtures.tiny_models import build_tiny_tokenizer
from tunesmith.cli import app
from tunesmith.data.split import split_file
from tunesmith.errors import ExportError
from tunesmith.models.chat import render
from tunesmith.ship.modelfile import TemplateNotDerived, build_modelfile, derive_chat_parts, quote

runner = CliRunner()
TRAINED = 'Answer with "only" JSON.\nNo prose, no "quotes" around it.'
NOW = "A system prompt edited after training."


# --- Ollama's Modelfile parser (parser/parser.go ParseFile), ported line by line --------------


def _unquote(s):
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _next(r, state):
    if state == "nil":
        return ("comment", None) if r == "#" else ("nil", None) if r in " \t\r\n" else ("name", r)
    if state == "name":
        if r.isascii() and r.isalpha():
            return "name", r
        assert r in " \t", "invalid command"
        return "value", None
    if state == "parameter":
        if (r.isascii() and r.isalnum()) or r == "_":
            return "parameter", r
        assert r in " \t", "unexpected EOF"
        return "value", None
    if state == "value":
        return ("nil", r) if r in " \t\r\n" else ("value", r)
    return ("nil", None) if r in "\r\n" else ("comment", None)


def parse_modelfile(text):
    commands, state, buf, name = [], "nil", "", ""
    for r in text:
        nxt, r = _next(r, state)
        if nxt != state:
            if state == "name":
                lower = buf.lower()
                if lower == "parameter":
                    nxt = "parameter"
                else:
                    name = "model" if lower == "from" else lower
            elif state == "parameter":
                name = buf
            elif state == "value":
                value, ok = _unquote(buf.strip())
                if not ok or r in (" ", "\t"):
                    buf += r
                    continue
                commands.append((name, value))
            buf, state = "", nxt
        if r is not None and r.isprintable():
            buf += r
    if state == "value":
        value, ok = _unquote(buf.strip())
        assert ok, "unexpected EOF"
        commands.append((name, value))
    return commands


# --- Ollama's template filling, for the Go-template subset the exporter writes ----------------


def fill_template(template, *, system, messages, prompt=""):
    """Go text/template for {{ if .System }}, {{ .System }}, {{ range .Messages }}, {{ .Role }},
    {{ .Content }}, {{ .Prompt }} and {{ end }}, with Ollama's values: the Modelfile's SYSTEM is the
    first message, and .System is every system message joined."""
    parts = re.split(r"({{-?\s*.*?\s*-?}})", template)
    tokens = []
    for i, part in enumerate(parts):
        if not part.startswith("{{"):
            tokens.append(("text", part))
            continue
        action = part.strip("{}").strip("-").strip()
        if part.startswith("{{-") and tokens and tokens[-1][0] == "text":
            tokens[-1] = ("text", tokens[-1][1].rstrip())
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()
        tokens.append(("action", action))
    chat = [{"role": "system", "content": system}, *messages] if system else list(messages)
    values = {".System": "\n\n".join(m["content"] for m in chat if m["role"] == "system"), ".Prompt": prompt}

    def run(pos, scope, out):
        while pos < len(tokens):
            kind, value = tokens[pos]
            if kind == "text":
                out.append(value)
            elif value == "end":
                return pos
            elif value.startswith("if "):
                inner = []
                pos = run(pos + 1, scope, inner)
                if scope.get(value[3:].strip()) or values.get(value[3:].strip()):
                    out.extend(inner)
            elif value == "range .Messages":
                body_end = pos
                for message in chat:
                    inner = []
                    body_end = run(pos + 1, {".Role": message["role"], ".Content": message["content"]}, inner)
                    out.extend(inner)
                pos = body_end if chat else _skip(pos + 1)
            elif value in scope or value in values:
                out.append(scope.get(value, values.get(value)))
            else:
                raise AssertionError(f"the exporter wrote {{{{ {value} }}}}, outside the subset")
            pos += 1
        return pos

    def _skip(pos):
        depth = 0
        while True:
            kind, value = tokens[pos]
            if kind == "action" and (value.startswith(("if ", "range "))):
                depth += 1
            if kind == "action" and value == "end":
                if depth == 0:
                    return pos
                depth -= 1
            pos += 1

    out = []
    run(0, {}, out)
    return "".join(out)


def commands_of(text):
    commands = parse_modelfile(text)
    return {name: [v for n, v in commands if n == name] for name, _ in commands}


# --- deriving the template ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_derived_template_fills_to_the_chat_templates_text(kind, tmp_path):
    tok = build_tiny_tokenizer(kind)
    add_bos = kind == "llama3"  # llama.cpp adds the BOS the Llama 3 template writes itself
    mf = build_modelfile(tmp_path / "m-f16.gguf", tok, system_prompt=TRAINED, system_where="system_prompt",
                         add_bos=add_bos, run_id="r1", quant="f16")
    cmds = commands_of(mf.text)
    assert cmds["model"] == ["./m-f16.gguf"] and cmds["system"] == [TRAINED]
    user = [{"role": "user", "content": 'Extract {"a": 1} from "x"'}]
    filled = fill_template(cmds["template"][0], system=cmds["system"][0], messages=user)
    expected = render(tok, [{"role": "system", "content": TRAINED}, *user], add_generation_prompt=True)
    assert (tok.bos_token if add_bos else "") + filled == expected


def test_a_template_with_role_specific_markers_gets_no_template_and_says_why(tmp_path):
    tok = build_tiny_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
                         "\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>model\n{% endif %}")  # Gemma-style role name
    with pytest.raises(TemplateNotDerived, match="does not write the role name between the same fixed text"):
        derive_chat_parts(tok, add_bos=False)
    mf = build_modelfile(tmp_path / "m.gguf", tok, system_prompt="S", system_where="x", add_bos=False,
                         run_id="r1", quant="q8_0")
    assert "template" not in commands_of(mf.text) and commands_of(mf.text)["system"] == ["S"]
    assert mf.notes[0].startswith("no TEMPLATE in m.Modelfile: the chat template cannot be written as an Ollama "
                                  "template (it does not write the role name between the same fixed text")
    assert f"# {mf.notes[0]}" in mf.text


def test_a_default_system_prompt_in_the_template_is_caught_when_the_run_has_none():
    tok = build_tiny_tokenizer("chatml")
    tok.chat_template = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful<|im_end|>\n"
                         "{% endif %}" + tok.chat_template)
    assert derive_chat_parts(tok, add_bos=False, with_system=True).end == "<|im_end|>\n"
    with pytest.raises(TemplateNotDerived, match="differs from it on a user chat"):
        derive_chat_parts(tok, add_bos=False, with_system=False)


# --- quoting --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["plain", "two words", " padded ", '"quoted"', 'say "hi"', "",
                                   'line one\nline "two"', 'ends in a quote"\nnext', "a\n\nb\ttab", '"\n"'])
def test_values_read_back_exactly_through_ollamas_parser(value):
    commands = parse_modelfile(f"FROM ./x.gguf\nSYSTEM {quote(value, 'v')}\nPARAMETER stop {quote(value, 'v')}\n")
    assert commands == [("model", "./x.gguf"), ("system", value), ("stop", value)]


def test_values_ollama_would_cut_short_or_change_are_refused():
    with pytest.raises(ExportError) as exc:
        quote('Rules:\nend with """\nthen stop', "system_prompt in tunesmith.yaml")
    assert exc.value.message == ('system_prompt in tunesmith.yaml cannot be written to an Ollama Modelfile: its '
                                 'line 2 ends with """, where Ollama would end the value')
    assert exc.value.hint == "remove the quotes at the end of line 2 of system_prompt in tunesmith.yaml"
    with pytest.raises(ExportError) as exc:
        quote("bell \x07 here", "system_prompt in tunesmith.yaml")
    assert exc.value.message == ("system_prompt in tunesmith.yaml cannot be written to an Ollama Modelfile: it "
                                 "contains the control character U+0007, which Ollama's Modelfile parser drops")
    assert exc.value.hint == "remove that character from system_prompt in tunesmith.yaml"


# --- the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_project(ship, tmp_path_factory):
    """A project whose system_prompt changed after its run was trained with TRAINED."""
    root = tmp_path_factory.mktemp("ollama-project")
    write_project_file(root, ship["base"], eval={"max_new_tokens": ship["max_new"]}, system_prompt=NOW)
    write_jsonl(root / "data.jsonl", clean_examples(24))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    run_id = "20250102-000001-aaaa-prompted"
    ship["add_run"](root, run_id, method="lora", base_model=ship["base"], adapter=ship["adapter"],
            config={"project": {"system_prompt": TRAINED}})
    return root, run_id


def test_ollama_export_writes_the_runs_prompt_stops_and_template(prompt_project, tmp_path):
    root, run_id = prompt_project
    result = runner.invoke(app, ["export", run_id, "--format", "ollama", "-p", str(root), "--json",
                                 "--verify-n", "2", "-o", str(tmp_path / "tiny.gguf")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    path = tmp_path / "tiny.Modelfile"
    assert out["format"] == "ollama" and out["modelfile"] == str(path)
    assert out["ollama_create"] == f"ollama create tunesmith-{run_id}:f16 -f {path}"
    assert "has the one it was trained with" in result.stderr
    cmds = commands_of(path.read_text())
    assert cmds["model"] == ["./tiny.gguf"] and (tmp_path / "tiny.gguf").is_file()
    assert cmds["system"] == [TRAINED]  # the prompt the run was trained with, not the project's new one
    assert sorted(cmds["stop"]) == ["<|endoftext|>", "<|im_end|>"]  # eos and the end-of-turn markers
    tok = build_tiny_tokenizer("chatml")
    user = [{"role": "user", "content": "Give me the total."}]
    assert fill_template(cmds["template"][0], system=cmds["system"][0], messages=user) == render(
        tok, [{"role": "system", "content": TRAINED}, *user], add_generation_prompt=True)
    human = runner.invoke(app, ["export", run_id, "--format", "ollama", "-p", str(root), "--verify-n", "0",
                                "-o", str(tmp_path / "tiny.gguf")])
    assert human.exit_code == 0, human.output
    assert f"create the Ollama model with:\n  ollama create tunesmith-{run_id}:f16 -f {path}" in human.stdout


def test_a_system_prompt_ollama_cannot_read_stops_the_export_before_any_work(ship, tmp_path):
    root = tmp_path / "p"
    write_project_file(root, ship["base"], system_prompt='Rules:\nend with """\nthen stop')
    shutil.copytree(ship["root"] / "data", root / "data")
    ship["add_run"](root, "20250102-000002-bbbb-bad", method="lora", base_model=ship["base"], adapter=ship["adapter"])
    result = runner.invoke(app, ["export", "20250102-000002-bbbb-bad", "-p", str(root), "-o", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2
    assert (f"error: system_prompt in {root.resolve() / 'tunesmith.yaml'} cannot be written to an Ollama Modelfile: "
            'its line 2 ends with """') in result.stderr
    assert not (tmp_path / "x.gguf").exists()
