"""The relevance workbench (service/workbench.py, service/ui/): its routes, the grades it writes in the project's
data format, and the page itself in a real browser (Debian's chromium, headless, through chromedriver and
selenium): loaded from a URL with a query it shows cards with pictures and explanation bars, the comparison marks
the items that moved, and a grade given in the page lands in the judgments file, which the data reader reads."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from index.data.readers import RaiseOnError, scan_judgments, scan_queries
from service.app import create_app
from service.judgments import JudgmentLog

from .clip_fixtures import TinyClip, ingest_config, require_pexels, tiny_clip
from .conftest import TinyPipeline, serving_settings
from .live_service import serve_in_thread
from .toy_artifacts import ToyArtifacts

__all__ = ["tiny_clip"]

ADMIN = "workbench-test-admin-token"
LOCAL = ("127.0.0.1", 50000)  # a loopback caller, as a browser on the serving machine is


def read_back(path: Path) -> tuple[list[Any], list[Any]]:
    """The judgments and queries in `path`'s folder, as `make train` reads them (an error in either raises)."""
    sink = RaiseOnError()
    return scan_judgments(path, sink).records, scan_queries(path.with_name("queries.jsonl"), sink).records


# -- the routes ----------------------------------------------------------------------------------------------------


def test_the_page_is_served_on_loopback_and_off_elsewhere(toy: ToyArtifacts) -> None:
    with TestClient(create_app(serving_settings(toy)), client=LOCAL) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and "Relevance workbench" in page.text
        assert client.get("/ui/static/app.js").status_code == 200
        assert client.get("/ui/static/../settings.py").status_code == 404
        status = client.get("/ui/api/status").json()
        assert status["judging"] is False and status["compare"] == ["zero-shot"] and "glass" in status["filters"]
        # Zero-shot search over the same catalog: dense and BM25, the RRF prior, no model.
        zero_shot = client.post("/ui/api/compare", json={"query": "gin", "top_k": 5, "against": "zero-shot"}).json()
        assert zero_shot["model_version"] == "zero-shot" and len(zero_shot["results"]) == 5
        assert 0.0 <= zero_shot["agreement"]["rbo"] <= 1.0
        assert client.post("/ui/api/compare", json={"query": "gin", "against": "shadow"}).status_code == 409
    with TestClient(create_app(serving_settings(toy, host="0.0.0.0"))) as client:
        assert client.get("/ui").status_code == 404  # not on loopback and not asked for: off


def test_grades_land_in_the_data_format_and_a_regrade_replaces(toy: ToyArtifacts, tmp_path: Path) -> None:
    judgments = tmp_path / "data" / "judgments.jsonl"
    settings = serving_settings(toy, judgments_file=judgments, admin_token=ADMIN)
    with TestClient(create_app(settings), client=LOCAL) as client:
        hits = client.post("/rank", json={"query": "gin", "top_k": 2}).json()["results"]
        assert client.post(
            "/ui/api/judgments", json={"query": " gin ", "item_id": hits[0]["id"], "grade": 2}
        ).json() == {
            "judged_queries": 1,
            "judgments": 1,
        }
        client.post("/ui/api/judgments", json={"query": "gin", "item_id": hits[1]["id"], "grade": 0})
        client.post("/ui/api/judgments", json={"query": "gin", "item_id": hits[0]["id"], "grade": 3})  # a regrade
        bad = client.post("/ui/api/judgments", json={"query": "gin", "item_id": "no-such-item", "grade": 1})
        assert bad.status_code == 422 and bad.json()["field"] == "item_id"
        assert (
            client.post("/ui/api/judgments", json={"query": "gin", "item_id": hits[0]["id"], "grade": 4}).status_code
            == 422
        )
    with TestClient(create_app(settings), client=("10.1.2.3", 40000)) as remote:
        body = {"query": "gin", "item_id": hits[0]["id"], "grade": 1}
        assert remote.post("/ui/api/judgments", json=body).status_code == 403  # not loopback, no token
        assert (
            remote.post("/ui/api/judgments", json=body, headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
        )
    read, queries = read_back(judgments)
    assert [(j.query_id, j.item_id, j.grade) for j in read] == [
        (queries[0].id, hits[0]["id"], 1),
        (queries[0].id, hits[1]["id"], 0),
    ]
    assert [q.text for q in queries] == ["gin"]  # normalised, once
    assert JudgmentLog(judgments).counts().judgments == 2


# -- the page in a browser -----------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) drives the browser")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {check}")


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"))


@pytest.mark.integration
def test_the_page_from_a_url_shows_cards_explanations_and_grades_into_the_file(
    browser: Any, toy: ToyArtifacts, tmp_path: Path
) -> None:
    judgments = tmp_path / "judgments.jsonl"
    with serve_in_thread(create_app(serving_settings(toy, judgments_file=judgments))) as url:
        open_page(browser, f"{url}/ui?q=red%20gin%20drink&k=5&filters=glass:coupe,highball")
        cards = browser.find_elements("css selector", "#served .card")
        assert len(cards) == 5, browser.find_element("id", "message").text + str(browser.get_log("browser"))
        assert browser.find_element("id", "query").get_attribute("value") == "red gin drink"
        assert len(browser.find_elements("css selector", "#served .card .bars .bar")) >= 5 * 2  # at least the sources
        assert browser.find_elements("css selector", '#served .bar[data-kind="evidence"]')
        first = cards[0].get_attribute("data-id")
        cards[0].find_element("css selector", 'button[data-grade="2"]').click()
        wait_for(lambda: judgments.is_file() and judgments.read_text())
        cards[1].click()
        cards[1].send_keys("3")  # a key grades the selected card
        wait_for(lambda: len(judgments.read_text().splitlines()) == 2)
        assert "2 grades" in wait_for(
            lambda: (
                "2 grades" in browser.find_element("id", "status").text and browser.find_element("id", "status").text
            )
        )
    read, queries = read_back(judgments)
    assert [q.text for q in queries] == ["red gin drink"]
    assert [(j.item_id, j.grade) for j in read] == [(first, 2), (cards_id := read[1].item_id, 3)] and cards_id != first


@pytest.mark.integration
def test_the_comparison_with_the_shadow_marks_the_items_that_moved(
    browser: Any, toy: ToyArtifacts, toy_second: tuple[Path, Path]
) -> None:
    model, bundle = toy_second
    with serve_in_thread(create_app(serving_settings(toy, admin_token=ADMIN))) as url:
        import urllib.request

        request = urllib.request.Request(
            f"{url}/admin/shadow",
            data=json.dumps({"share": 0, "model_dir": str(model), "bundle_dir": str(bundle)}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200
        open_page(browser, f"{url}/ui?q=gin%20cocktail&compare=shadow&k=10")
        assert not browser.find_element("id", "other").get_attribute("hidden")
        assert len(browser.find_elements("css selector", "#other .card")) == 10
        agreement = browser.find_element("id", "agreement").text
        assert agreement.startswith("overlap@10 ") and "RBO" in agreement
        moved = browser.find_elements("css selector", "#served [data-moved]")
        assert moved, "the two toy models rank differently: some item must have moved"
        assert browser.current_url.endswith("/ui?q=gin+cocktail&compare=shadow")


@pytest.mark.integration
def test_pictures_show_on_the_pexels_catalog(
    browser: Any, tiny: TinyPipeline, tiny_clip: TinyClip, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from index.offline.ingest import ingest

    source = require_pexels()
    out = tmp_path_factory.mktemp("pexels-ui") / "bundle"
    ingest(ingest_config(tiny, tiny_clip, source, out, chunk_size=128))
    with serve_in_thread(create_app(serving_settings(tiny, bundle_dir=out))) as url:
        open_page(browser, f"{url}/ui?q=a%20cocktail%20with%20a%20lime&k=4")
        images = wait_for(lambda: browser.find_elements("css selector", "#served .card img"))
        assert len(images) == 4
        assert all(
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in images
        )
        # The trained (tiny) fusion ranker: its prior term, residual and attention are drawn too.
        for kind in ("prior", "residual", "attention"):
            assert browser.find_elements("css selector", f'#served .bar[data-kind="{kind}"]'), kind
        if shots := os.environ.get("RANK_UI_SCREENSHOTS"):  # README's picture: RANK_UI_SCREENSHOTS=$PWD/docs/images
            browser.save_screenshot(str(Path(shots) / "workbench-pexels.png"))
