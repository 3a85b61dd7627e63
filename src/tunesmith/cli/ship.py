"""Shipping commands: merge (adapter folded into the base), export (GGUF for llama.cpp, Ollama's Modelfile) and
push (to the Hugging Face Hub with a model card)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console, generation_progress, print_json

PROJECT = typer.Option(Path("."), "--project", "-p", help="Project directory.")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")
VERIFY_N = typer.Option(None, "--verify-n", help="Check greedy outputs on the first N sealed test prompts (default: all; 0 skips the check).")
ALLOW_MISMATCH = typer.Option(False, "--allow-mismatch", help="Keep the result even when its greedy outputs differ.")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


@app.command()
@handle_errors
def merge(
    run: str = typer.Argument(..., help="Run id (or prefix, or 'latest') whose LoRA adapter to merge."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the merged checkpoint (new or empty)."),
    project: Path = PROJECT,
    verify_n: Optional[int] = VERIFY_N,
    allow_mismatch: bool = ALLOW_MISMATCH,
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory (once the merge is verified)."),
    dtype: str = typer.Option("auto", "--dtype", help="Saved precision: auto (that of the merge: exact), stored (the base's own), float32, bfloat16, float16."),
    json_out: bool = JSON_OPT,
) -> None:
    """Fold a run's adapter into its base model: a plain checkpoint any transformers server can load."""
    from tunesmith.ship.merge import merge_run

    with generation_progress(not json_out, "verifying") as progress:
        outcome = merge_run(project, run, output, force=force, verify_n=verify_n, allow_mismatch=allow_mismatch,
                            say=_say, save_dtype=dtype, progress=progress)
    if json_out:
        print_json(outcome.to_dict())
        return
    out = console()
    out.print(f"merged run {outcome.run_id} ({outcome.method}) into {outcome.base_model} -> {outcome.output} "
              f"({outcome.dtype}, {outcome.seconds} s)")
    v = outcome.verification
    if v is None:
        out.print("greedy outputs: not checked (--verify-n 0)")
        return
    out.print(v.summary())
    if not v.ok:
        out.print(f"[yellow]warning:[/] kept although outputs differ (--allow-mismatch) on {v.shown_ids()}")


@app.command()
@handle_errors
def export(
    run: str = typer.Argument(..., help="Run id (or prefix, or 'latest') to export."),
    fmt: str = typer.Option("gguf", "--format", help="gguf (model + Ollama Modelfile), ollama (the same, printing the `ollama create` line) or lora-gguf (the adapter alone, for llama.cpp --lora)."),
    quant: str = typer.Option("f16", "--quant", help="f16, bf16 or f32 (exact); q8_0, q5_0 or q4_0 (smaller, lossy: greedy agreement is reported)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: <run dir>/export/model-<quant>.gguf, or adapter-<quant>.gguf)."),
    project: Path = PROJECT,
    verify_n: Optional[int] = VERIFY_N,
    allow_mismatch: bool = ALLOW_MISMATCH,
    force: bool = typer.Option(False, "--force", help="Replace an existing file that is not an earlier export."),
    json_out: bool = JSON_OPT,
) -> None:
    """Merge a run in memory and write one GGUF file (and its Ollama Modelfile) that llama.cpp and Ollama
    load, then verify it; or write the run's adapter alone as a llama.cpp LoRA GGUF."""
    from tunesmith.ship.gguf_export import export_run, record_path

    with generation_progress(not json_out, "verifying") as progress:
        outcome = export_run(project, run, fmt=fmt, quant=quant, out=output, verify_n=verify_n,
                             allow_mismatch=allow_mismatch, force=force, say=_say, progress=progress)
    if json_out:
        print_json(outcome.to_dict())
        return
    out = console()
    types = ", ".join(f"{n} {t}" for t, n in sorted(outcome.tensors.items()))
    out.print(f"wrote {outcome.path} ({outcome.size_bytes / 1e6:.1f} MB; {outcome.architecture} as llama.cpp "
              f"{outcome.gguf_architecture}; tensors: {types}; {outcome.seconds} s)")
    for note in outcome.notes:
        out.print(f"note: {note}", markup=False)
    if outcome.modelfile is not None:
        out.print(f"Ollama Modelfile: {outcome.modelfile}", markup=False)
    if outcome.fmt == "ollama":
        out.print(f"create the Ollama model with:\n  {outcome.ollama_create}", markup=False)
    if outcome.fmt == "lora-gguf":
        out.print(f"record: {record_path(outcome.path)}", markup=False)
        return
    if outcome.template is None or outcome.outputs is None:
        out.print("not verified (--verify-n 0)")
        return
    out.print(outcome.template.summary("template token ids"))
    out.print(outcome.outputs.summary())
    if outcome.quant not in ("f16", "bf16", "f32") and not outcome.outputs.ok:
        out.print(f"({outcome.quant} is lossy: answers may change where two tokens are nearly tied; not an error)")
    elif not (outcome.template.ok and outcome.outputs.ok):
        out.print("[yellow]warning:[/] kept although it differs (--allow-mismatch)")
    out.print(f"record: {record_path(outcome.path)}")


@app.command()
@handle_errors
def push(
    run: str = typer.Argument(..., help="Run id (or prefix, or 'latest') to push."),
    repo: str = typer.Option(..., "--repo", help="Hub repository ORG/NAME (created if it does not exist)."),
    adapter: bool = typer.Option(False, "--adapter", help="Push the LoRA adapter (the default)."),
    merged: bool = typer.Option(False, "--merged", help="Push the full model: the adapter merged into its base, verified."),
    gguf: bool = typer.Option(False, "--gguf", help="Push the f16 GGUF file for llama.cpp and Ollama."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the folder it would upload, print it, upload nothing."),
    project: Path = PROJECT,
    json_out: bool = JSON_OPT,
) -> None:
    """Upload a run to the Hugging Face Hub with a model card (base model, data, plan, test metrics)."""
    from tunesmith.ship.hub import pick_kind, push_run

    kind = pick_kind(adapter=adapter, merged=merged, gguf=gguf)
    outcome = push_run(project, run, repo, kind=kind, private=private, dry_run=dry_run, say=_say)
    if json_out:
        print_json(outcome.to_dict())
        return
    out = console()
    if outcome.dry_run:
        out.print(f"staged {outcome.folder} (--dry-run: nothing uploaded)", markup=False)
    else:
        out.print(f"pushed run {outcome.run_id} ({outcome.kind}) to {outcome.url}"
                  + (" (private)" if outcome.private else ""), markup=False)
    for name, size in outcome.files:
        out.print(f"  {name}  {size:,} bytes", markup=False)
    if outcome.commit_url:
        out.print(f"commit: {outcome.commit_url}", markup=False)
