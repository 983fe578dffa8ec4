"""The graph editor served by the real host, in headless Chromium: every UI workflow loads with no
missing-node or error dialog, and the editor's own prompt for it equals the shipped API file."""
import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import REPO, api_workflow

pytestmark = pytest.mark.host
CHROMIUM = os.environ.get("DWM_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
UI_NAMES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
# Inputs the editor adds to the prompt for its own preview widgets; the server ignores them.
EDITOR_ONLY_INPUTS = {"video-preview"}
LOAD_JS = """async (wf) => {
  await app.loadGraphData(wf);
  await new Promise(r => setTimeout(r, 1000));
  const shown = [...document.querySelectorAll('.p-dialog, .comfy-modal')]
    .filter(d => getComputedStyle(d).display !== 'none').map(d => d.innerText.slice(0, 300));
  const missing = app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  return {shown, missing, prompt: (await app.graphToPrompt()).output};
}"""


def ui_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def page(comfy):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the browser tests")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DWM_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(comfy.url)
        page.wait_for_function("() => window.app && app.graph && window.LiteGraph", timeout=120_000)
        yield page
        browser.close()


@pytest.mark.parametrize("name", UI_NAMES)
def test_editor_loads_workflow_and_makes_the_api_prompt(page, example_inputs, name):
    result = page.evaluate(LOAD_JS, ui_workflow(name))
    assert result["shown"] == [] and result["missing"] == []
    prompt = result["prompt"]
    for node in prompt.values():
        for key in EDITOR_ONLY_INPUTS & set(node["inputs"]):
            assert node["inputs"].pop(key) == ""
    assert prompt == api_workflow(name)


def test_screenshot_of_dwm_basic(page, example_inputs, tmp_path):
    """Saved for the README when DWM_UPDATE_SCREENSHOT=1; otherwise only checked to be taken."""
    page.evaluate(LOAD_JS, ui_workflow("dwm_basic"))
    page.wait_for_timeout(2000)  # the video previews
    shot = tmp_path / "dwm_basic.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 50_000
    if os.environ.get("DWM_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, REPO / "docs" / "dwm_basic.png")

