"""The blinded spot check: page, private key, answer server, unblinding and the ship rule."""

from __future__ import annotations

import base64
import hashlib
import html
import http.client
import inspect
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fixtures.browser import chromium_page, chromium_path, parse_html
from tunesmith.errors import DataError, UsageError
from tunesmith.evaluate.spotcheck import (
    ANSWERS_NAME,
    KEY_NAME,
    build_spotcheck,
    serve_spotcheck,
    unblind,
)


def need_chromium() -> str:
    """Browser tests fail (never skip) without Chromium."""
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed (/usr/bin/chromium): run `bash scripts/install-browser.sh` first")
    return path


def make_items(count: int = 30) -> list[dict]:
    # outputs are untrusted and must not give the models away: no "base"/"tuned" in any text
    return [
        {"id": f"q{i:02d}", "prompt": f"Summarise ticket #{i} <script>alert({i})</script>",
         "base_output": f"Sure! Here is a summary of ticket {i}.\nIt is about printers.",
         "tuned_output": f"Ticket {i}: printer jams on tray 2; fix: replace roller.", "extra": "ignored"}
        for i in range(count)
    ]


def post(url: str, body: object, *, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + "answers", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# --- the page and the key ----------------------------------------------------------------------


def test_page_is_blinded_and_key_stays_out() -> None:
    items = make_items()
    sc = build_spotcheck(items, n=20, seed=7)
    assert sc.n == 20 and len(set(sc.item_ids)) == 20 and set(sc.key) == set(sc.item_ids)
    assert all(sorted(v.values()) == ["base", "tuned"] for v in sc.key.values())
    # both orders occur (random per item), so position gives nothing away
    assert {v["A"] for v in sc.key.values()} == {"base", "tuned"}

    page = sc.html
    assert not re.search(r"base|tuned", page, flags=re.IGNORECASE), "the page names a model"
    assert json.dumps(sc.key) not in page
    assert "<script>alert(" not in page and page.count("<script") == 1
    assert not re.search(r"https?://(?!www\.w3\.org)", page)  # nothing external

    # each article shows the right outputs under A and B (per the key), in page order
    by_id = {it["id"]: it for it in items}
    arts = parse_html(page).find_all("article", cls="item")
    assert [a.attrs["data-item-id"] for a in arts] == sc.item_ids
    for art in arts:
        item = by_id[art.attrs["data-item-id"]]
        cols = {c.attrs["data-letter"]: c.find("pre", cls="output").text() for c in art.find_all(cls="col")}
        for letter in ("A", "B"):
            assert cols[letter] == item[f"{sc.key[item['id']][letter]}_output"]
        assert len(art.find_all("input")) == 2 + 2 + 3  # ship A yes/no, ship B yes/no, prefer A/B/tie

    # seeded: same seed, same sample and order; another seed, another one
    again = build_spotcheck(items, n=20, seed=7)
    assert again.key == sc.key and again.item_ids == sc.item_ids and again.html == sc.html
    assert build_spotcheck(items, n=20, seed=8).key != sc.key


def test_the_csp_allows_the_shipped_script_and_only_same_origin_requests() -> None:
    from importlib.resources import files

    page = build_spotcheck(make_items(), n=5).html
    script = re.search(r"<script>(.*?)</script>", page, flags=re.DOTALL).group(1)
    assert script == files("tunesmith.evaluate.spotcheck").joinpath("page.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1))
    assert f"script-src 'sha256-{digest}'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp


def test_build_rejects_bad_input_and_uses_all_of_a_small_set() -> None:
    assert build_spotcheck(make_items(5), n=20).n == 5
    with pytest.raises(UsageError):
        build_spotcheck([], n=20)
    with pytest.raises(UsageError):
        build_spotcheck(make_items(5), n=0)
    with pytest.raises(DataError, match="more than once"):
        build_spotcheck(make_items(3) + make_items(1), n=2)
    with pytest.raises(DataError, match="tuned_output"):
        build_spotcheck([{"id": 1, "prompt": "p", "base_output": "x"}])


# --- serving and saving answers -------------------------------------------------------------------


def test_server_saves_every_post_and_never_serves_the_key(tmp_path: Path) -> None:
    sc = build_spotcheck(make_items(), n=20, seed=1)
    d = tmp_path / "spot"
    sc.save(d)
    assert json.loads((d / KEY_NAME).read_text())["key"] == sc.key
    server, url = serve_spotcheck(d)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read().decode() == sc.html
        assert get_status(url + KEY_NAME) == 404 and get_status(url + "spotcheck.json") == 404
        assert get_status(url + "../" + KEY_NAME) == 404
        answers = d / ANSWERS_NAME
        assert not answers.exists()

        first, second = sc.item_ids[:2]
        status, body = post(url, {"id": first, "ship_A": True, "ship_B": False, "preference": "A"})
        assert status == 200 and body["answered"] == 1
        saved = json.loads(answers.read_text())
        assert saved["answers"][first] == {"ship_A": True, "ship_B": False, "preference": "A"}
        assert saved["answers"][second] == {"ship_A": None, "ship_B": None, "preference": None}

        status, _ = post(url, {"id": second, "ship_B": True})  # a partial update
        assert status == 200
        saved = json.loads(answers.read_text())
        assert saved["answers"][second] == {"ship_A": None, "ship_B": True, "preference": None}
        assert saved["answers"][first]["preference"] == "A"

        status, _ = post(url, {"answers": {first: {"preference": "tie"}}})  # bulk form
        assert status == 200 and json.loads(answers.read_text())["answers"][first]["preference"] == "tie"

        # bad posts change nothing
        before = answers.read_text()
        assert post(url, {"id": "nope", "ship_A": True})[0] == 400
        assert post(url, {"id": first, "ship_A": "maybe"})[0] == 400
        assert post(url, {"id": first, "preference": "C"})[0] == 400
        assert post(url, [1, 2])[0] == 400
        assert post(url, {"id": first, "ship_A": False}, headers={"Origin": "http://evil.example"})[0] == 403
        assert answers.read_text() == before
        assert server.posts == 3
        assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        server.close()

    # a new server resumes from answers.json
    server, url = serve_spotcheck(d)
    try:
        with urllib.request.urlopen(url + "answers", timeout=10) as r:
            assert json.loads(r.read())["answers"][second]["ship_B"] is True
    finally:
        server.close()


def expected_hook_answers(ids: list[str]) -> dict[str, dict]:
    """What ANSWER_EVERY_ITEM clicks."""
    return {
        item_id: {"ship_A": True, "ship_B": i % 2 == 0, "preference": ["A", "B", "tie"][i % 3]}
        for i, item_id in enumerate(ids)
    }


#: The test hook, injected by the tests (the page ships none): click the page's real inputs with a
#: fixed pattern, so the page's own change handlers save the answers.
ANSWER_EVERY_ITEM = """() => {
  document.querySelectorAll("article.item").forEach(function (art, i) {
    function click(field, value) {
      art.querySelector('input[data-field="' + field + '"][value="' + value + '"]').click();
    }
    click("ship_A", "yes");
    click("ship_B", i % 2 === 0 ? "yes" : "no");
    click("preference", ["A", "B", "tie"][i % 3]);
  });
}"""


def open_rendered(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-rendered='1']")


def stored_answers(page, page_id: str) -> dict | None:
    raw = page.evaluate("k => localStorage.getItem(k)", f"tunesmith-spotcheck:{page_id}")
    return None if raw is None else json.loads(raw)


def test_answers_from_a_real_browser_reach_answers_json(tmp_path: Path) -> None:
    need_chromium()
    sc = build_spotcheck(make_items(), n=20, seed=3)
    d = tmp_path / "spot"
    sc.save(d)
    server, url = serve_spotcheck(d)
    try:
        with chromium_page() as page:
            posted: list[int] = []
            page.on("response", lambda r: posted.append(r.status) if r.request.method == "POST" else None)
            open_rendered(page, url)
            page.evaluate(ANSWER_EVERY_ITEM)
            deadline = time.monotonic() + 20
            while len(posted) < 60 and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            assert posted == [200] * 60  # one POST per click: 20 items x (ship A, ship B, preference)
            assert server.posts == 60
            assert page.locator("#progress").inner_text() == "20 / 20 answered"
            assert page.locator("#save-status").inner_text() == "saved to answers.json"
    finally:
        server.close()
    saved = json.loads((d / ANSWERS_NAME).read_text())
    expected = expected_hook_answers(sc.item_ids)
    assert saved["answers"] == expected

    result = unblind(sc.key, saved)
    tuned_ship = sum(a[f"ship_{L}"] for i, a in expected.items() for L in "AB" if sc.key[i][L] == "tuned")
    tuned_pref = sum(1 for i, a in expected.items() if a["preference"] in "AB" and sc.key[i][a["preference"]] == "tuned")
    assert result.would_ship_tuned == tuned_ship and result.preferred_tuned == tuned_pref
    assert result.would_ship_tuned + result.would_ship_base == 30 and result.ties == 6
    assert result.complete


def test_opened_as_a_file_answers_stay_in_the_browser_and_download_for_unblinding(tmp_path: Path) -> None:
    need_chromium()
    sc = build_spotcheck(make_items(), n=20, seed=3)
    d = tmp_path / "spot"
    page_path = sc.save(d)
    expected = expected_hook_answers(sc.item_ids)
    with chromium_page() as page:
        open_rendered(page, page_path.as_uri())
        page.evaluate(ANSWER_EVERY_ITEM)
        assert page.locator("#progress").inner_text() == "20 / 20 answered"
        assert "in this browser" in page.locator("#save-status").inner_text()
        assert stored_answers(page, sc.page_id)["answers"] == expected
        with page.expect_download() as download:
            page.click("#download")
        downloaded = json.loads(Path(download.value.path()).read_text())
    assert downloaded["spotcheck"] == sc.page_id and downloaded["answers"] == expected
    assert unblind(sc.key, downloaded).complete  # what `spotcheck --results` reads
    assert not (d / ANSWERS_NAME).exists()


# --- no test hook ships; other web sites are refused -------------------------------------------

HOOK = re.compile(r"autotest|test.?hook", flags=re.IGNORECASE)


def test_the_page_a_user_gets_has_no_test_hook(tmp_path: Path) -> None:
    sc = build_spotcheck(make_items(), n=20, seed=3)
    d = tmp_path / "spot"
    page_path = sc.save(d)
    assert not HOOK.search(sc.html) and not HOOK.search(page_path.read_text())
    assert "test_hooks" not in inspect.signature(serve_spotcheck).parameters
    server, url = serve_spotcheck(d)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert not HOOK.search(r.read().decode())
        with urllib.request.urlopen(url + "answers", timeout=10) as r:
            assert set(json.loads(r.read())) == {"spotcheck", "updated", "answers"}
    finally:
        server.close()


def test_autotest_in_the_address_answers_nothing_from_a_file_or_the_server(tmp_path: Path) -> None:
    need_chromium()
    sc = build_spotcheck(make_items(), n=20, seed=3)
    d = tmp_path / "spot"
    page_path = sc.save(d)
    server, url = serve_spotcheck(d)
    try:
        with chromium_page() as page:
            for address in (page_path.as_uri() + "?autotest=1", url + "?autotest=1"):
                open_rendered(page, address)
                assert page.locator("#progress").inner_text() == "0 / 20 answered", address
                assert page.locator("input:checked").count() == 0, address
                assert stored_answers(page, sc.page_id) is None, address
        assert server.posts == 0
    finally:
        server.close()
    assert not (d / ANSWERS_NAME).exists()


def raw_request(url: str, method: str, path: str, *, host: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request with exactly these headers (urllib would fill in Host and Content-Type)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else parts.netloc)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if r.getheader("Content-Type", "").startswith("application/json") else {}
    finally:
        conn.close()


def test_the_server_refuses_other_web_sites(tmp_path: Path) -> None:
    sc = build_spotcheck(make_items(), n=20, seed=3)
    d = tmp_path / "spot"
    sc.save(d)
    server, url = serve_spotcheck(d)
    port = server.server_address[1]
    answer = json.dumps({"id": sc.item_ids[0], "ship_A": True}).encode()
    as_json = {"Content-Type": "application/json"}
    try:
        # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 reads nothing, saves nothing
        for path in ("/answers", "/", "/missing"):
            status, body = raw_request(url, "GET", path, host=f"evil.example:{port}")
            assert status == 403, path
            assert "host 'evil.example' is not served here" in body["error"], path
        assert raw_request(url, "POST", "/answers", host="evil.example", body=answer, headers=as_json)[0] == 403
        assert raw_request(url, "GET", "/answers", host=f"localhost:{port}")[0] == 200

        for origin in ("http://evil.example", f"http://localhost:{port}", "null"):  # Host is 127.0.0.1:PORT
            status, body = raw_request(url, "POST", "/answers", body=answer, headers={**as_json, "Origin": origin})
            assert status == 403 and f"cross-origin request from '{origin}' refused" in body["error"], origin

        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, body = raw_request(url, "POST", "/answers", body=answer, headers={"Content-Type": ctype})
            assert status == 415 and f"content type '{ctype}' is not accepted" in body["error"], ctype
        assert raw_request(url, "POST", "/answers", body=answer)[0] == 415  # no content type at all
        assert server.posts == 0 and not (d / ANSWERS_NAME).exists()

        # the page's own origin, by either name, and programs (no Origin) still save
        assert raw_request(url, "POST", "/answers", body=answer,
                           headers={**as_json, "Origin": f"http://127.0.0.1:{port}"})[0] == 200
        assert raw_request(url, "POST", "/answers", host=f"localhost:{port}", body=answer,
                           headers={**as_json, "Origin": f"http://localhost:{port}"})[0] == 200
        assert raw_request(url, "POST", "/answers", body=answer, headers=as_json)[0] == 200
        assert server.posts == 3
    finally:
        server.close()


# --- unblinding and the ship rule ---------------------------------------------------------------


def hand_key(n: int = 20) -> dict[str, dict[str, str]]:
    # even items: A is the tuned model; odd items: B is
    return {f"i{k}": ({"A": "tuned", "B": "base"} if k % 2 == 0 else {"A": "base", "B": "tuned"}) for k in range(n)}


def hand_answers(key: dict, *, tuned_no: int, base_no: int, prefer_tuned: int, ties: int) -> dict:
    """The first `tuned_no` tuned outputs 'would not ship', etc., expressed in A/B letters."""
    out = {}
    for k, (item_id, m) in enumerate(key.items()):
        t = "A" if m["A"] == "tuned" else "B"
        b = "B" if t == "A" else "A"
        pref = t if k < prefer_tuned else "tie" if k < prefer_tuned + ties else b
        out[item_id] = {f"ship_{t}": k >= tuned_no, f"ship_{b}": k >= base_no, "preference": pref}
    return {"spotcheck": "x", "answers": out}


def test_unblind_counts_exactly() -> None:
    key = hand_key()
    r = unblind(key, hand_answers(key, tuned_no=2, base_no=9, prefer_tuned=13, ties=3))
    assert (r.n, r.would_ship_tuned, r.would_ship_base) == (20, 18, 11)
    assert (r.would_not_ship_tuned, r.would_not_ship_base) == (2, 9)
    assert (r.preferred_tuned, r.ties, r.preferred_base) == (13, 3, 4)
    assert r.summary.startswith("would ship 18/20 tuned vs 11/20 base, preferred tuned in 13/20")
    assert r.verdict == "ship" and r.complete and r.unanswered == []


def test_ship_rule_three_of_twenty_ships_four_does_not() -> None:
    key = hand_key()
    three = unblind(key, hand_answers(key, tuned_no=3, base_no=0, prefer_tuned=10, ties=0))
    four = unblind(key, hand_answers(key, tuned_no=4, base_no=0, prefer_tuned=10, ties=0))
    assert three.max_would_not_ship == 3
    assert (three.would_not_ship_tuned, three.verdict) == (3, "ship")
    assert (four.would_not_ship_tuned, four.verdict) == (4, "do not ship")
    assert four.summary.endswith("-> do not ship")
    # base answers do not enter the rule
    assert unblind(key, hand_answers(key, tuned_no=0, base_no=20, prefer_tuned=0, ties=0)).verdict == "ship"


def test_ship_rule_scales_with_n() -> None:
    key10 = hand_key(10)  # 15 % of 10 = 1.5: one "no" ships, two do not
    assert unblind(key10, hand_answers(key10, tuned_no=1, base_no=0, prefer_tuned=0, ties=0)).verdict == "ship"
    assert unblind(key10, hand_answers(key10, tuned_no=2, base_no=0, prefer_tuned=0, ties=0)).verdict == "do not ship"
    key40 = hand_key(40)  # 6 of 40 = 15 % ships, 7 does not
    assert unblind(key40, hand_answers(key40, tuned_no=6, base_no=0, prefer_tuned=0, ties=0)).verdict == "ship"
    assert unblind(key40, hand_answers(key40, tuned_no=7, base_no=0, prefer_tuned=0, ties=0)).verdict == "do not ship"


def test_missing_answers_are_counted_and_reported() -> None:
    key = hand_key()
    answers = hand_answers(key, tuned_no=1, base_no=0, prefer_tuned=20, ties=0)["answers"]
    for k in ("i18", "i19"):
        del answers[k]  # never answered
    answers["i17"] = {"ship_A": True, "ship_B": None, "preference": None}  # half answered (i17: B is tuned)
    answers["zzz"] = {"ship_A": True}  # not in the key: ignored, reported
    r = unblind(key, answers)
    assert r.unanswered == ["i17", "i18", "i19"] and not r.complete
    assert (r.unanswered_ship_tuned, r.unanswered_ship_base, r.unanswered_preference) == (3, 2, 3)
    assert (r.would_ship_tuned, r.would_not_ship_tuned, r.preferred_tuned) == (16, 1, 17)
    assert r.unknown_ids == ["zzz"]
    # 1 "no" + 3 unanswered could exceed 3: not decided yet
    assert r.verdict == "incomplete"
    assert "(3 of 20 not fully answered)" in r.summary
    # with only one unanswered, 1 + 1 <= 3: the answer cannot change, so it ships
    del answers["zzz"]
    answers["i17"] = {"ship_A": True, "ship_B": True, "preference": "B"}
    answers["i18"] = {"ship_A": True, "ship_B": True, "preference": "A"}
    assert unblind(key, answers).verdict == "ship"
    # no answers at all
    empty = unblind(key, {})
    assert empty.unanswered_ship_tuned == 20 and empty.verdict == "incomplete"


def test_unblind_accepts_the_saved_key_file_and_rejects_bad_answers(tmp_path: Path) -> None:
    sc = build_spotcheck(make_items(), n=20, seed=5)
    sc.save(tmp_path)
    saved_key = json.loads((tmp_path / KEY_NAME).read_text())
    answers = {i: {"ship_A": True, "ship_B": True, "preference": "tie"} for i in sc.item_ids}
    r = unblind(saved_key, answers)
    assert (r.would_ship_tuned, r.would_ship_base, r.ties, r.verdict) == (20, 20, 20, "ship")
    with pytest.raises(DataError):
        unblind(saved_key, {sc.item_ids[0]: {"ship_A": "yes"}})
    with pytest.raises(DataError):
        unblind({"x": {"A": "tuned", "B": "tuned"}}, {})
