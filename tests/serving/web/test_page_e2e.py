"""The page in a real headless Chromium (Debian's, driven by playwright) against the live service on ml-100k.

A warm and a cold user show recommendations; "watched it" on the top item sends a
real event through POST /v1/events and the list changes (that item is now seen).
Screenshots go to the test's tmp dir (warm.png, cold.png, after_event.png).
"""

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#recs tbody tr", "rows => rows.map(r => ({id: r.dataset.itemId, title: r.children[1].textContent}))"
    )


def _show(page, user_id: str) -> list[dict]:
    # what the previous user left on the page goes first, so every wait below waits for this user's answer
    page.evaluate("['#recs tbody', '#state', '#history'].forEach(s => document.querySelector(s).replaceChildren())")
    page.fill("#user", user_id)
    with page.expect_response(lambda r: r.url.endswith("/v1/recommend")) as response:
        page.click("#go")
    assert response.value.status == 200
    page.wait_for_function("document.querySelectorAll('#recs tbody tr').length > 0")
    page.wait_for_function("document.querySelector('#state').textContent.length > 0")
    page.wait_for_function("document.querySelectorAll('#history li').length > 0")
    return _rows(page)


@pytest.mark.e2e
def test_page_in_headless_chromium(pipeline_run, tmp_path):
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from tests.serving.experiments.live_service import live_service, prepare_run

    config, _, _ = pipeline_run
    run_dir, serving_root = prepare_run(config, tmp_path)
    with live_service(run_dir, serving_root, tmp_path / "service") as service, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)  # a loaded 2-core machine: the first lists take seconds
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(service.url + "/")
            page.fill("#token", service.token)
            page.wait_for_function("document.querySelectorAll('#examples a').length > 0")
            page.wait_for_function("document.querySelector('#lineage strong') !== null")
            examples = page.eval_on_selector_all("#examples a", "links => links.map(a => [a.textContent, a.title])")
            warm = next(user for user, note in examples if note.startswith("warm"))
            cold = next(user for user, note in examples if note.startswith("cold"))

            rows = _show(page, warm)
            assert len(rows) == 10 and all(r["title"] for r in rows)
            assert page.inner_text("#state").startswith("warm")
            assert "no fallback" in page.inner_text("#state")
            assert "retrieval" in page.inner_text("#timings") and "ranking" in page.inner_text("#recs")
            lineage = page.inner_text("#lineage")
            assert "two_tower v" in lineage and "split cut-offs" in lineage and "blessing metrics" in lineage
            page.screenshot(path=str(tmp_path / "warm.png"), full_page=True)

            top = rows[0]
            with page.expect_response(lambda r: r.url.endswith("/v1/events")) as event:
                page.click("#recs tbody tr:first-child button.watch")
            assert event.value.status == 200, event.value.text()
            page.wait_for_function(
                "id => !document.querySelector(`#recs tbody tr[data-item-id='${id}']`)", arg=top["id"]
            )
            page.wait_for_function(
                "t => (document.querySelector('#history li')?.textContent ?? '').includes(t)", arg=top["title"]
            )
            after = _rows(page)
            assert top["id"] not in [r["id"] for r in after] and [r["id"] for r in after] != [r["id"] for r in rows]
            assert "Recorded" in page.inner_text("#event-note")
            page.screenshot(path=str(tmp_path / "after_event.png"), full_page=True)

            rows = _show(page, cold)
            assert len(rows) == 10
            assert page.inner_text("#state").startswith("cold")
            page.screenshot(path=str(tmp_path / "cold.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    for name in ("warm.png", "after_event.png", "cold.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")
