"""The review page in real headless Chromium, driven from the keyboard with Playwright."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.browser import chromium_path
from tunesmith.distill.review import ReviewStore, open_review
from tunesmith.errors import OutputError

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def need_chromium() -> str:
    """Browser tests fail (never skip) without Chromium."""
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed (/usr/bin/chromium): run `bash scripts/install-browser.sh` first")
    return path


@pytest.fixture
def expected_failures() -> list[str]:
    """HTTP statuses a test makes the server answer on purpose (Chromium logs each as a console error)."""
    return ["409"]


@pytest.fixture
def browser_page(expected_failures) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = need_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # a refused save (409) is logged by Chromium as a failed load: expected; anything else is not
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not any(
            f"responded with a status of {code}" in m.text for code in expected_failures) else None)
        try:
            yield page
        finally:
            browser.close()
        assert errors == [], errors  # no script error, no CSP violation


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")


def current_id(page: Any) -> int:
    return int(page.locator("article.row.current").get_attribute("data-id"))


def wait_saves(page: Any, n: int) -> None:
    page.wait_for_selector(f"body[data-saves='{n}']")


def test_accept_edit_reject_from_the_keyboard_survive_a_reload_and_reach_the_file(review_files, review_server, browser_page):
    store = open_review(review_files.generated)
    order = [store.rows[i].line for i in store.order]
    original_second = store.rows[store.order[1]].answer
    server = review_server(store)
    page = browser_page
    open_page(page, server.url)
    assert page.locator("#progress").inner_text() == "0 of 50 reviewed, 0 rejected"
    assert page.locator("article.row").count() == 60 and page.locator("article.row.beyond").count() == 10
    assert current_id(page) == order[0]

    page.keyboard.press("a")  # accept the most diverse row
    wait_saves(page, 1)
    assert current_id(page) == order[1]  # the next undecided row is current

    page.keyboard.press("e")
    editor = page.locator("article.row.current textarea.answer-input")
    assert editor.is_visible() and editor.evaluate("el => el === document.activeElement")
    save = page.locator("article.row.current button.save")
    page.keyboard.press("Control+A")
    page.keyboard.type('{"name": 5, "score": 1}')  # 'a' and 'e' typed here are text, not shortcuts
    page.wait_for_selector("article.row.current .editor[data-state='invalid']")
    assert "breaks the schema at $.name" in page.locator("article.row.current .problems").inner_text()
    assert save.is_disabled()
    page.keyboard.press("Control+Enter")  # refused while invalid: nothing is sent
    assert page.locator("#save-status").inner_text() == "fix the problems shown before saving"
    page.keyboard.press("Control+A")
    page.keyboard.type('{"name":"edited by a person","score":6}')
    page.wait_for_selector("article.row.current .editor[data-state='valid']")
    assert save.is_enabled() and page.locator("article.row.current .problems li").count() == 0
    assert page.locator("article.row.current .valid").inner_text() == "meets the contract"
    page.keyboard.press("Control+Enter")
    wait_saves(page, 2)
    assert current_id(page) == order[2]

    page.keyboard.press("j")
    page.keyboard.press("k")  # next, previous: back on the third row
    assert current_id(page) == order[2]
    page.keyboard.press("r")
    page.keyboard.type("made-up facts, and a wrong score")
    page.keyboard.press("Enter")
    wait_saves(page, 3)
    assert page.locator("#progress").inner_text() == "3 of 50 reviewed, 1 rejected"
    assert page.locator("#save-status").inner_text() == "saved"

    page.keyboard.press("e")
    page.keyboard.press("Escape")  # an edit cancelled saves nothing
    assert page.locator("textarea.answer-input").count() == 0

    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#progress").inner_text() == "3 of 50 reviewed, 1 rejected"
    statuses = [page.locator(f"#row-{line}").get_attribute("data-status") for line in order[:4]]
    assert statuses == ["accepted", "edited", "rejected", "unreviewed"]
    second = page.locator(f"#row-{order[1]}")
    assert second.locator("pre.answer").inner_text() == '{"name":"edited by a person","score":6}'
    assert second.locator("pre.original").inner_text() == original_second
    assert page.locator(f"#row-{order[2]} .reason").inner_text() == "rejected: made-up facts, and a wrong score"

    recs = review_files.by_line()
    assert recs[order[0]]["review"]["status"] == "accepted"
    assert recs[order[1]]["review"]["status"] == "edited"
    assert recs[order[1]]["review"]["original"] == original_second
    assert recs[order[1]]["messages"][-1]["content"] == '{"name":"edited by a person","score":6}'
    assert recs[order[2]]["review"]["status"] == "rejected"
    assert recs[order[2]]["review"]["reason"] == "made-up facts, and a wrong score"
    assert sum(r["review"]["status"] != "unreviewed" for r in recs.values()) == 3


def slow_saves(store: ReviewStore, seconds: float, fail_line: int | None = None) -> list[int]:
    """Make every save take `seconds` (and the one for `fail_line` fail with a 500); returns the lines saved, in order."""
    calls: list[int] = []

    def slow(line: int, action: str, version: str, **kw: Any) -> Any:
        calls.append(line)
        time.sleep(seconds)
        if line == fail_line:
            raise OutputError(f"cannot write {store.path}: No space left on device", "free some disk space")
        return ReviewStore.decide(store, line, action, version, **kw)

    store.decide = slow  # type: ignore[method-assign]
    return calls


def test_keys_pressed_faster_than_the_saves_each_decide_the_next_row(review_files, review_server, browser_page):
    store = open_review(review_files.generated)
    order = [store.rows[i].line for i in store.order]
    calls = slow_saves(store, 0.3)  # no save can come back before the last key is pressed
    server = review_server(store)
    page = browser_page
    open_page(page, server.url)

    for _ in range(3):
        page.keyboard.press("a")  # back to back, like a key held down
    assert current_id(page) == order[3]  # the current row moved on with each decision, not with each save
    assert page.locator(f"#row-{order[0]}").get_attribute("data-pending") == "accepted"
    wait_saves(page, 3)
    assert calls == order[:3]  # one decision per row, sent in the order made

    recs = review_files.by_line()
    accepted = [line for line, rec in recs.items() if rec["review"]["status"] == "accepted"]
    assert sorted(accepted) == sorted(order[:3])
    assert sum(r["review"]["status"] != "unreviewed" for r in recs.values()) == 3
    assert page.locator("#progress").inner_text() == "3 of 50 reviewed, 0 rejected"
    assert page.locator("#save-status").inner_text() == "saved"
    assert page.locator("article.row.pending").count() == 0
    assert current_id(page) == order[3]


def test_a_save_that_fails_among_fast_decisions_is_shown_and_its_row_marked(review_files, review_server, browser_page,
                                                                           expected_failures):
    expected_failures.append("500")
    store = open_review(review_files.generated)
    order = [store.rows[i].line for i in store.order]
    slow_saves(store, 0.2, fail_line=order[1])
    server = review_server(store)
    page = browser_page
    open_page(page, server.url)

    for _ in range(3):
        page.keyboard.press("a")
    page.wait_for_selector("#save-status:has-text('not saved')")
    wait_saves(page, 2)  # the rows before and after the failed one are saved
    failed = page.locator(f"#row-{order[1]}")
    assert failed.get_attribute("data-unsaved") == "accept" and failed.get_attribute("data-status") == "unreviewed"
    assert "not saved: accept: cannot write" in failed.locator(".unsaved").inner_text()
    assert page.locator("#save-status").inner_text() == "1 decision not saved (marked on the row)"
    assert page.locator("article.row.not-saved").count() == 1
    recs = review_files.by_line()
    assert [recs[line]["review"]["status"] for line in order[:4]] == ["accepted", "unreviewed", "accepted", "unreviewed"]
    assert page.locator("#progress").inner_text() == "2 of 50 reviewed, 0 rejected"
    assert current_id(page) == order[3]

    slow_saves(store, 0)  # the disk has room again: the row is decided again from its own button
    failed.locator("button[data-act='accept']").click()
    wait_saves(page, 3)
    assert failed.get_attribute("data-unsaved") is None and failed.get_attribute("data-status") == "accepted"
    assert page.locator("#save-status").inner_text() == "saved"
    assert review_files.by_line()[order[1]]["review"]["status"] == "accepted"


def test_a_hand_edit_while_the_page_is_open_is_reported_and_kept(review_files, review_server, browser_page):
    store = open_review(review_files.generated)
    order = [store.rows[i].line for i in store.order]
    server = review_server(store)
    page = browser_page
    open_page(page, server.url)
    page.keyboard.press("a")
    wait_saves(page, 1)

    data = review_files.generated.read_bytes().replace(b"Rate item 7:", b"Rate item 7 (edited by hand):")
    review_files.generated.write_bytes(data)
    page.keyboard.press("a")
    page.wait_for_selector("#conflict:not([hidden])")
    assert "changed on disk" in page.locator("#conflict-text").inner_text()
    assert page.locator("#save-status").inner_text().startswith("not saved:")
    assert page.locator(f"#row-{order[1]}").get_attribute("data-unsaved") == "accept"
    assert current_id(page) == order[2]
    assert page.locator("body").get_attribute("data-saves") == "1"
    assert review_files.generated.read_bytes() == data  # never clobbered

    page.click("#reload")
    page.wait_for_selector("#save-status:text('read again from disk')")
    assert page.locator("#conflict").is_hidden()
    assert page.locator("#row-8 .prompt").nth(1).inner_text().startswith("Rate item 7 (edited by hand):")
    assert current_id(page) == order[1]  # the row whose decision was not saved, to decide again
    page.keyboard.press("a")
    wait_saves(page, 2)
    recs = review_files.by_line()
    assert "(edited by hand)" in recs[8]["messages"][1]["content"]
    assert [recs[line]["review"]["status"] for line in order[:2]] == ["accepted", "accepted"]
    assert json.loads(review_files.generated.read_text().splitlines()[7])["messages"][1]["content"].startswith(
        "Rate item 7 (edited by hand):")
