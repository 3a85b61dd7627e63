"""The exported f16 file loaded by llama.cpp itself (llama-cpp-python): same tokens for the rendered
chat, same greedy answers as the merged model. Skipped where the package is not installed."""

import itertools
import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source; "
                                "`make test-llamacpp` installs it and runs this test)")


def test_llama_cpp_tokenises_and_answers_like_the_merged_model(ship, tmp_path):
    from tunesmith.evaluate.items import test_items
    from tunesmith.models.chat import render
    from tunesmith.project import load_project
    from tunesmith.ship.merge import load_merged, locate_run

    path = tmp_path / "m.gguf"
    result = CliRunner().invoke(app, ["export", ship["runs"]["lora"], "-p", str(ship["root"]), "--json",
                                      "--verify-n", "0", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quant"] == "f16"
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    project = load_project(ship["root"])
    run = locate_run(project, ship["runs"]["lora"])
    model, _ = load_merged(run, device="cpu")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run.tokenizer_dir))
    for item in test_items(project)[:3]:
        text = render(tok, item.chat, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        import torch

        want = model.generate(torch.tensor([ids]), max_new_tokens=ship["max_new"], do_sample=False)[0][len(ids):]
        # llm.generate never ends by itself: take as many tokens as the reference wrote
        got = list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1), len(want)))
        assert got == want.tolist()[: len(got)]
