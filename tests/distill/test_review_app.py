"""The review app on a real uvicorn server on 127.0.0.1, driven with httpx."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib.resources import files

import httpx
import pytest

from tunesmith.distill.review import open_review


@pytest.fixture
def served(review_files, review_server):
    store = open_review(review_files.generated)
    server = review_server(store)
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=10) as client:
        yield review_files, store, server, client


def test_the_page_is_self_contained_with_a_script_hash_csp(served):
    _, _, server, client = served
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1 and page.count("<script") == 1
    digest = "sha256-" + base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    meta = html.unescape(re.search(r'Content-Security-Policy" content="([^"]+)"', page)[1])
    for csp in (r.headers["content-security-policy"], meta):
        assert f"script-src '{digest}'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"https?://", page)  # nothing external
    assert not re.search(r"autotest|test.?hook", page, flags=re.IGNORECASE)  # no test hook ships
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    # rendered through the shared page shell, from the stylesheet and script shipped as package files
    shipped = files("tunesmith.distill")
    assert scripts[0] == shipped.joinpath("review.js").read_text(encoding="utf-8")
    assert re.search(r"<style>(.*?)</style>", page, flags=re.S)[1] == shipped.joinpath("review.css").read_text(
        encoding="utf-8")


def test_state_validate_and_decision(served):
    files, store, _, client = served
    state = client.get("/api/state").json()
    assert state["file"] == "generated.jsonl" and state["version"] == store.version and not state["disk_changed"]
    assert state["contract"] == "one JSON value that validates against the JSON Schema given"
    assert state["progress"]["text"] == "0 of 50 reviewed, 0 rejected" and state["progress"]["rows"] == 60
    assert len(state["rows"]) == 60 and [r["rank"] for r in state["rows"]] == list(range(1, 61))
    row = state["rows"][0]
    assert row["turns"][row["answer_index"]]["content"] == row["answer"] and row["status"] == "unreviewed"
    assert row["provenance"]["teacher_model"] == "teacher-x"

    ok = client.post("/api/validate", json={"answer": '{"name": "a", "score": 1}'}).json()
    assert ok == {"ok": True, "problems": []}
    bad = client.post("/api/validate", json={"answer": '{"name": "a"}'}).json()
    assert bad["ok"] is False and "'score' is a required property" in bad["problems"][0]

    r = client.post("/api/decision", json={"id": row["id"], "action": "reject", "reason": "off topic",
                                           "version": state["version"]})
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["row"]["status"] == "rejected" and saved["row"]["reason"] == "off topic"
    assert saved["progress"]["text"] == "1 of 50 reviewed, 1 rejected" and saved["version"] != state["version"]
    assert files.by_line()[row["line"]]["review"]["reason"] == "off topic"

    r = client.post("/api/decision", json={"id": row["id"], "action": "edit", "answer": '{"name": "b", "score": 2}',
                                           "version": saved["version"]})
    assert r.status_code == 200 and r.json()["row"]["original"] == row["answer"]
    assert client.get("/api/state").json()["progress"]["edited"] == 1


def test_409_on_a_stale_version_and_on_a_hand_edit_then_reload(served):
    files, store, _, client = served
    version = client.get("/api/state").json()["version"]
    assert client.post("/api/decision", json={"id": 1, "action": "accept", "version": version}).status_code == 200
    before = files.generated.read_bytes()
    r = client.post("/api/decision", json={"id": 2, "action": "accept", "version": version})  # the old version
    assert r.status_code == 409 and r.json()["error"]["conflict"] == "stale"
    assert files.generated.read_bytes() == before

    files.generated.write_bytes(before.replace(b"Rate item 5:", b"Rate item 5 (by hand):"))
    hand = files.generated.read_bytes()
    r = client.post("/api/decision", json={"id": 2, "action": "accept", "version": store.version})
    assert r.status_code == 409 and r.json()["error"]["conflict"] == "changed_on_disk"
    assert "changed on disk" in r.json()["error"]["message"]
    assert files.generated.read_bytes() == hand
    assert client.get("/api/state").json()["disk_changed"] is True

    files.generated.write_bytes(hand + b"{broken\n")  # a hand edit that breaks the file: reload says where
    r = client.post("/api/reload", json={})
    assert r.status_code == 422 and r.json()["error"]["details"][0].startswith(f"{files.generated}:61: ")
    files.generated.write_bytes(hand)

    state = client.post("/api/reload", json={}).json()
    assert state["disk_changed"] is False and state["progress"]["accepted"] == 1
    r = client.post("/api/decision", json={"id": 2, "action": "accept", "version": state["version"]})
    assert r.status_code == 200
    recs = files.by_line()
    assert "(by hand)" in recs[6]["messages"][1]["content"] and recs[2]["review"]["status"] == "accepted"


def test_422_on_an_invalid_edit_and_400_404_on_bad_requests(served):
    files, store, _, client = served
    before = files.generated.read_bytes()
    r = client.post("/api/decision", json={"id": 3, "action": "edit", "answer": '{"name": 7, "score": 1}',
                                           "version": store.version})
    assert r.status_code == 422 and "breaks the schema at $.name" in r.json()["problems"][0]
    assert client.post("/api/decision", json={"id": 3, "action": "edit", "answer": "", "version": store.version}
                       ).status_code == 422
    assert client.post("/api/decision", json={"id": 999, "action": "accept", "version": store.version}).status_code == 404
    assert client.post("/api/decision", json={"id": 3, "action": "delete", "version": store.version}).status_code == 400
    assert client.post("/api/decision", json={"id": "3", "action": "accept", "version": store.version}).status_code == 400
    assert client.post("/api/decision", json={"id": 3, "action": "edit", "version": store.version}).status_code == 400
    assert client.post("/api/decision", content=b"{not json", headers={"Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/api/validate", json=["a"]).status_code == 400
    assert files.generated.read_bytes() == before


def test_foreign_hosts_other_origins_and_non_json_bodies_are_refused(served):
    files, store, server, client = served
    before = files.generated.read_bytes()
    body = {"id": 1, "action": "accept", "version": store.version}
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 reads nothing, saves nothing
    for host in ("evil.example", f"evil.example:{server.port}", ""):
        for path in ("/", "/api/state", "/missing"):
            r = client.get(path, headers={"Host": host})
            assert r.status_code == 403, (host, path)
            assert "is not served here" in r.json()["error"]["message"]
        assert client.post("/api/decision", json=body, headers={"Host": host}).status_code == 403
    r = client.get("/api/state", headers={"Host": "evil.example:80"})
    assert r.json()["error"]["message"].startswith("host 'evil.example' is not served here; use one of ")
    assert r.json()["error"]["hint"].startswith("open the page at the address `tunesmith review` printed")
    assert client.get("/", headers={"Host": f"localhost:{server.port}"}).status_code == 200

    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", f"http://localhost:{server.port}",
                   "null"):  # the Host is 127.0.0.1:PORT, so localhost:PORT is another origin
        for path in ("/api/decision", "/api/validate", "/api/reload"):
            r = client.post(path, json=body, headers={"Origin": origin})
            assert r.status_code == 403, (origin, path)
            assert f"cross-origin request from '{origin}' refused" in r.json()["error"]["message"]
    assert client.post("/api/decision", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403

    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        for path in ("/api/decision", "/api/validate", "/api/reload"):
            r = client.post(path, content=json.dumps(body), headers={"Content-Type": ctype})
            assert r.status_code == 415, (ctype, path)
            assert f"content type '{ctype}' is not accepted" in r.json()["error"]["message"]
            assert r.json()["error"]["hint"] == "send a JSON object"
    assert client.post("/api/validate", json={"answer": "x" * (2 << 20)}).status_code == 413
    assert files.generated.read_bytes() == before

    r = client.post("/api/decision", json=body, headers={"Origin": f"http://localhost:{server.port}",
                                                         "Host": f"localhost:{server.port}"})
    assert r.status_code == 200  # the page's own origin (either name) is fine
