"""The second task of benchmarks/layers_quality.py: a project tunesmith accepts, answers that follow the
emails they come from, and the same rows on every machine."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from layers_quality import ORDERS_SCHEMA, write_orders  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def orders(tmp_path_factory):
    root = tmp_path_factory.mktemp("orders") / "orders"
    write_orders(root, n=80)
    return root


def test_the_orders_project_splits_and_checks_clean(orders, tiny_model_dir):
    assert runner.invoke(app, ["split", "--project", str(orders), "--json"]).exit_code == 0
    result = runner.invoke(app, ["check", str(orders / "data" / "train.jsonl"), "--project", str(orders),
                                 "--model", str(tiny_model_dir), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, [f for f in report["findings"] if f["severity"] == "error"]
    assert report["stats"]["formats"] == {"messages": report["examples"]}


def test_every_answer_fits_the_schema_and_its_email(orders):
    import jsonschema

    rows = [json.loads(line) for line in (orders / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 80
    assert json.loads((orders / "schema.json").read_text(encoding="utf-8")) == ORDERS_SCHEMA
    for row in rows:
        email, answer = row["messages"][1]["content"], json.loads(row["messages"][2]["content"])
        jsonschema.validate(answer, ORDERS_SCHEMA)
        assert answer["order_id"] in email and answer["customer"].split()[0] in email
        assert all(item["sku"] in email for item in answer["items"])
        assert ("xpress" in email) == answer["express"]


def test_the_rows_are_the_same_on_every_call(tmp_path, orders):
    write_orders(tmp_path / "again", n=80)
    assert (tmp_path / "again" / "data.jsonl").read_bytes() == (orders / "data.jsonl").read_bytes()
    assert not (tmp_path / "again.tmp").exists()
