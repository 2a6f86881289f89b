"""The web UI in a real browser: Debian's headless Chromium (/usr/bin/chromium) driven by
Playwright for Python, against a live local stack on free loopback ports: `fissure serve
--runtime inprocess` with two tiny models (tests/serving/_models.py) and a `fissure api`
subprocess in front of it.

The main story is the issue's: upload -> prediction visible -> mask corrected with the brush (a
mouse drag on the canvas) -> feedback saved -> visible in history and in the export. Each step
saves a screenshot to .fissure/screenshots/ui/ (git-ignored) that a person can open. The other
tests cover the label correction by keyboard alone and the messages a person meets: a file that
is not an image (415), a wrong token (401), a token whose role is too low (403), the model
server down (503) and the API itself gone (network error).

`make test` installs Chromium (mk/browser.mk); without it these tests skip with a message.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ..conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / ".fissure" / "screenshots" / "ui"
FISSURE = str(Path(sys.executable).with_name("fissure"))

pytestmark = pytest.mark.slow
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = playwright_api.expect
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: `make chromium` (apt-get install chromium) for the browser tests",
                allow_module_level=True)


def crack_y(fx: float) -> float:
    """Where crack_png's crack is (as a fraction of the height) at a fraction ``fx`` of the width."""
    return 0.2 + 0.6 * fx


def crack_png(w: int = 256, h: int = 160, seed: int = 0) -> bytes:
    """A grey surface with a dark wavy crack (the serving tests' image, larger to draw on)."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(150, 20, size=(h, w)).clip(0, 255)
    for x in range(w):
        y = int(h * 0.2 + x * 0.6 * h / w + 3 * np.sin(x / 5 + seed))
        arr[max(0, y - 2): y + 3, x] = 30
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- the live stack
# `serving` (two tiny models behind `fissure serve --runtime inprocess`) and `start` come from conftest.py.

def make_token(env: dict, role: str, name: str) -> str:
    out = subprocess.run([FISSURE, "token", "create", "--role", role, "--name", name], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@dataclass
class Api:
    url: str
    env: dict
    proc: object  # conftest's Proc
    token: str  # annotator "inspector"

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=60)


def start_api(start, home: Path, inference_url: str) -> Api:
    """`fissure api` on a free port over its own SQLite store, with an annotator token made first."""
    env = {**os.environ, "FISSURE_HOME": str(home), "FISSURE_INFERENCE_URL": inference_url,
           "FISSURE_MLFLOW_URL": "http://127.0.0.1:5000", "PYTHONUNBUFFERED": "1"}
    token = make_token(env, "annotator", "inspector")
    port = free_port()
    proc = start([FISSURE, "api", "--port", str(port)], env, home / "api.log", f"http://127.0.0.1:{port}/ping")
    return Api(f"http://127.0.0.1:{port}", env, proc, token)


@pytest.fixture(scope="module")
def stack(serving, start, tmp_path_factory):
    """`fissure api` in front of the live serving front."""
    api = start_api(start, tmp_path_factory.mktemp("ui-api"), serving["url"])
    try:
        yield api
    finally:
        api.proc.stop()


@pytest.fixture(scope="module")
def shots():
    """The screenshot folder, emptied once per run so it shows this run only."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return SHOTS


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (empty localStorage); fails the test on any script error or anything
    the page's Content-Security-Policy blocked (Playwright's own waits run outside it: locators, expect)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not errors, f"script errors in the page: {errors}"


def snap(page, path: Path) -> None:
    """The whole page from its top (a full-page shot keeps sticky parts where the scroll left them)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=path, full_page=True)


def login(page, api: Api, token: str | None = None) -> None:
    page.goto(api.url + "/")
    page.get_by_label("API token").fill(token or api.token)
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_selector(".token-state.ok")


def upload(page, path: Path, model: str, explain: bool = False) -> str:
    page.get_by_label("Model").select_option(model)
    if explain:
        page.get_by_label("With the explanation heatmap").check()
    page.set_input_files("#file", str(path))
    page.wait_for_url(re.compile(r"/p/[^/?]+$"))
    return page.url.rsplit("/", 1)[1]


def drag(page, selector: str, points: list[tuple[float, float]]) -> None:
    """A mouse drag through ``points`` given as fractions of the element's box."""
    box = page.locator(selector).bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=10)
    page.mouse.up()


# ---------------------------------------------------------------------------- the story

def test_upload_correct_mask_history_export(stack, page, shots, tmp_path):
    """Upload -> prediction visible -> mask corrected with the brush -> saved -> history -> export."""
    image = tmp_path / "crack.png"
    image.write_bytes(crack_png())
    W, H = 256, 160

    login(page, stack)
    page.screenshot(path=shots / "01-token-saved.png")

    pid = upload(page, image, "crack-segmenter")
    page.wait_for_selector("#crack-ratio")
    page.wait_for_selector("#view[data-ready='1']", state="attached")
    pred = stack.get(f"/predictions/{pid}").json()
    assert page.inner_text("#crack-ratio") == f"{100 * pred['output']['crack_ratio']:.2f}%"
    assert pred["model_version"] in page.inner_text("#meta")
    expect(page.locator("#boxes")).to_be_hidden()  # a hundred boxes of an untrained model: off at first
    page.get_by_label("Boxes").check()
    expect(page.locator("#boxes")).to_be_visible()
    page.get_by_label("Boxes").uncheck()
    snap(page, shots / "02-prediction.png")

    # the tiny untrained model's mask is noise: clear it, brush the crack in, erase a stretch of it
    page.get_by_label("Mask opacity").fill("70")
    page.get_by_role("button", name="Clear mask").click()
    page.get_by_role("button", name="Brush").click()
    drag(page, "#mask", [(x, crack_y(x)) for x in np.linspace(0.01, 0.99, 9)])
    page.keyboard.press("e")
    for _ in range(4):
        page.keyboard.press("]")  # a wider eraser
    drag(page, "#mask", [(0.5, crack_y(0.5) - 0.15), (0.5, crack_y(0.5) + 0.15)])
    assert page.get_by_role("button", name="Wrong").get_attribute("aria-pressed") == "true"
    snap(page, shots / "03-mask-brushed.png")

    page.get_by_label("Note").fill("the crack, not the noise")
    page.get_by_role("button", name="Save feedback").click()
    page.wait_for_selector("#given li")
    assert "Saved" in page.inner_text("#save-state")
    snap(page, shots / "04-feedback-saved.png")

    fb = stack.get(f"/predictions/{pid}").json()["feedback"]
    assert [(f["verdict"], f["user"], f["note"]) for f in fb] == [
        ("wrong", "inspector", "the crack, not the noise")]
    assert fb[0]["mask_sha256"]

    page.get_by_role("link", name="History").click()
    page.get_by_label("Model").select_option("crack-segmenter")
    page.get_by_label("Verdict").select_option("wrong")
    today = datetime.date.today().isoformat()  # the browser's calendar day: same machine, same zone
    page.get_by_label("From", exact=True).fill(today)
    page.get_by_label("To", exact=True).fill(today)
    page.get_by_role("button", name="Filter").click()
    row = page.locator("#rows tr").first
    row.wait_for()
    assert page.locator("#rows tr").count() == 1
    assert "wrong" in row.inner_text() and f"v{pred['model_version']}" in row.inner_text()
    expect(row.locator("img.thumb")).to_have_attribute("src", re.compile(r"^blob:"))
    page.screenshot(path=shots / "05-history.png")

    with page.expect_download() as dl:
        page.get_by_role("button", name=re.compile("feedback export")).click()
    archive = shots / "06-export.zip"
    dl.value.save_as(archive)
    page.screenshot(path=shots / "06-export.png")
    with zipfile.ZipFile(archive) as z:
        masks = [n for n in z.namelist() if "/masks/" in f"/{n}" and n.endswith(".png")]
        assert len(masks) == 1, z.namelist()
        mask = np.asarray(Image.open(io.BytesIO(z.read(masks[0]))))
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    on_crack = [(int(crack_y(fx) * H), int(fx * W)) for fx in np.linspace(0.05, 0.95, 19) if abs(fx - 0.5) > 0.08]
    assert all(mask[y, x] == 255 for y, x in on_crack)  # brushed
    assert mask[int(crack_y(0.5) * H), W // 2] == 0  # erased again
    assert (mask[int(0.8 * H):, : W // 3] == 0).all() and (mask[: int(0.15 * H), W // 2:] == 0).all()  # cleared
    assert 0.01 < (mask == 255).mean() < 0.2  # a brushed line, not the model's noise


def test_classifier_label_by_keyboard(stack, page, shots, tmp_path):
    """Wrong label fixed with the keyboard alone: W, a digit, Ctrl+Enter; history shows it."""
    image = tmp_path / "plain.png"
    image.write_bytes(crack_png(seed=3))
    login(page, stack)
    pid = upload(page, image, "crack-classifier", explain=True)
    page.wait_for_selector("#label")
    predicted = page.inner_text("#label")
    snap(page, shots / "07-classifier.png")

    page.locator("body").focus()
    page.keyboard.press("w")
    choices = page.locator('input[name="label"]')
    offered = [choices.nth(i).get_attribute("value") for i in range(choices.count())]
    assert offered and predicted not in offered, offered  # the predicted label is no correction
    other = 0
    page.keyboard.press(str(other + 1))
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#given li")
    snap(page, shots / "08-classifier-corrected.png")
    fb = stack.get(f"/predictions/{pid}").json()["feedback"]
    assert [(f["verdict"], f["label"]) for f in fb] == [("wrong", choices.nth(other).get_attribute("value"))]

    # a resubmission updates the same row: C marks it right
    page.keyboard.press("c")
    expect(page.locator("#given")).to_contain_text("right")
    fb = stack.get(f"/predictions/{pid}").json()["feedback"]
    assert [f["verdict"] for f in fb] == ["correct"]


def test_review_queue_least_certain_first(stack, page, shots):
    """The queue lists what nobody judged, least certain first; judging from it moves to the next."""
    for seed in (11, 12, 13):
        r = httpx.post(stack.url + "/predict", headers={"Authorization": f"Bearer {stack.token}"},
                       files={"file": ("c.png", crack_png(seed=seed), "image/png")}, data={"model": "crack-classifier"},
                       timeout=60)
        assert r.status_code == 201, r.text
    login(page, stack)
    page.get_by_role("link", name="Review queue").click()
    page.get_by_label("Model").select_option("crack-classifier")
    page.get_by_role("button", name="Show").click()
    queue = [p["id"] for p in stack.get("/review-queue?model=crack-classifier&limit=50").json()["items"]]
    assert len(queue) >= 3
    expect(page.locator("#queue li")).to_have_count(len(queue))
    expect(page.locator("#queue li a").first).to_have_attribute("href", re.compile(queue[0]))
    snap(page, shots / "09-review-queue.png")

    page.get_by_role("link", name="Start reviewing").click()
    page.wait_for_url(re.compile(f"/p/{queue[0]}"))
    page.wait_for_selector("#label")
    page.keyboard.press("c")  # right: saved, and on to the next one
    page.wait_for_url(re.compile(f"/p/{queue[1]}\\?queue=crack-classifier"))
    assert [f["verdict"] for f in stack.get(f"/predictions/{queue[0]}").json()["feedback"]] == ["correct"]


def test_messages_for_what_goes_wrong(stack, start, page, shots, tmp_path, tmp_path_factory):
    """A non-image (415), a wrong token (401), a viewer judging (403), the model server down (503),
    the API gone (network error): each one a sentence on the page, never a silent failure."""
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    image = tmp_path / "crack.png"
    image.write_bytes(crack_png(seed=5))

    login(page, stack)
    page.set_input_files("#file", str(text))
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "not an image" in alert.inner_text()
    page.screenshot(path=shots / "10-not-an-image.png")

    page.get_by_label("API token").fill("fst_wrong")
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_selector(".token-state.bad")
    assert "token is missing, wrong or expired" in alert.inner_text()
    expect(page.get_by_label("API token")).to_be_focused()
    page.screenshot(path=shots / "11-wrong-token.png")

    viewer = make_token(stack.env, "viewer", "visitor")
    login(page, stack, viewer)
    upload(page, image, "crack-classifier")
    page.wait_for_selector("#label")
    page.keyboard.press("c")
    page.get_by_role("alert").wait_for()
    assert "role" in page.get_by_role("alert").inner_text()
    page.screenshot(path=shots / "12-role-too-low.png")

    # an API whose model server is not there, and then the API itself gone
    down = start_api(start, tmp_path_factory.mktemp("ui-down"), f"http://127.0.0.1:{free_port()}")
    try:
        login(page, down)
        page.set_input_files("#file", str(image))
        page.get_by_role("alert").wait_for()
        assert "model server is down" in page.get_by_role("alert").inner_text()
        page.screenshot(path=shots / "13-model-server-down.png")
    finally:
        down.proc.stop()
    page.set_input_files("#file", str(image))
    expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
    page.screenshot(path=shots / "14-api-gone.png")


def test_pages_need_no_token_and_ship_a_strict_csp(stack):
    for path in ("/", "/history?verdict=bogus&model=nope", "/review", "/p/not-an-id"):
        r = httpx.get(stack.url + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert 'href="http://127.0.0.1:5000"' in r.text  # FISSURE_MLFLOW_URL set: the header links to it
        assert "Grafana" not in r.text  # not set: no link
    assert httpx.get(stack.url + "/static/app.js", timeout=30).status_code == 200
    for bad in ("/static/ui.py", "/static/..%2Fui.py", "/static/nothing.js"):
        r = httpx.get(stack.url + bad, timeout=30)
        assert r.status_code == 404 and "error" in r.json(), bad
