"""The review page in real headless Chromium, driven from the keyboard with Playwright."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.browser import chromium_path
from tunesmith.distill.review import open_review

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def need_chromium() -> str:
    """Browser tests fail (never skip) without Chromium."""
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed (/usr/bin/chromium): run `bash scripts/install-browser.sh` first")
    return path


@pytest.fixture
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = need_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # a refused save (409) is logged by Chromium as a failed load: expected; anything else is not
        page.on("console", lambda m: errors.append(m.text) if m.type == "error"
                and "responded with a status of 409" not in m.text else None)
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
    assert page.locator("body").get_attribute("data-saves") == "1"
    assert review_files.generated.read_bytes() == data  # never clobbered

    page.click("#reload")
    page.wait_for_selector("#save-status:text('read again from disk')")
    assert page.locator("#conflict").is_hidden()
    assert page.locator("#row-8 .prompt").nth(1).inner_text().startswith("Rate item 7 (edited by hand):")
    page.keyboard.press("a")
    wait_saves(page, 2)
    recs = review_files.by_line()
    assert "(edited by hand)" in recs[8]["messages"][1]["content"]
    assert [recs[line]["review"]["status"] for line in order[:2]] == ["accepted", "accepted"]
    assert json.loads(review_files.generated.read_text().splitlines()[7])["messages"][1]["content"].startswith(
        "Rate item 7 (edited by hand):")
