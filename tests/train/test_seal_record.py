"""Training records the test seal it saw, in data.json and in the run registry."""

from datagen import clean_examples, write_jsonl
from tunesmith.data.split import seal_path_for, split_file
from tunesmith.io import sha256_file
from tunesmith.project import load_project
from tunesmith.train.prepare import guard_data


def test_guard_data_hashes_the_seal_and_the_registry_keeps_it(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one compact JSON object.'\n")
    write_jsonl(tmp_path / "data.jsonl", clean_examples(60))
    test = tmp_path / "data" / "test.jsonl"
    split_file(tmp_path / "data.jsonl", tmp_path / "data" / "train.jsonl", test, test_fraction=0.25)
    project = load_project(tmp_path)
    _, hashes = guard_data(project)
    assert hashes["test_seal_sha256"] == sha256_file(seal_path_for(test))
    reg = project.registry()
    reg.create_run("r1", project_root=str(tmp_path), base_model="m", method="lora", config={}, plan={}, data=hashes)
    assert reg.get("r1").test_seal_sha256 == hashes["test_seal_sha256"]
    # a re-split writes a new seal: the next run records another hash
    write_jsonl(tmp_path / "data.jsonl", clean_examples(80))
    split_file(tmp_path / "data.jsonl", tmp_path / "data" / "train.jsonl", test, test_fraction=0.3, reseal=True)
    assert guard_data(load_project(tmp_path))[1]["test_seal_sha256"] != hashes["test_seal_sha256"]
