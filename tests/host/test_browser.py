"""The graph editor served by the real host, in headless Chromium: every UI workflow loads with no
missing-node or error dialog, the editor's own prompt for it equals the shipped API file, and the
template browser opens our workflows."""
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
UI_NAMES = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
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
    return json.loads((REPO / "example_workflows" / f"{name}.json").read_text(encoding="utf-8"))


# Loads a workflow in a tab of its own name and closes every other tab (the editor's default one).
SHOW_JS = """async ([wf, name]) => {
  await app.loadGraphData(wf, true, true, name);
  const store = app.extensionManager.workflow;
  for (const w of store.openWorkflows.filter(w => w.path !== `workflows/${name}.json`)) await store.closeWorkflow(w);
  return store.openWorkflows.map(w => w.path);
}"""


@pytest.fixture(scope="module")
def browser(comfy):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the browser tests")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DWM_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def open_editor(browser, comfy):
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(comfy.url)
    page.wait_for_function("() => window.app && app.graph && window.LiteGraph", timeout=120_000)
    return page


@pytest.fixture(scope="module")
def page(browser, comfy):
    page = open_editor(browser, comfy)
    yield page
    page.close()


@pytest.mark.parametrize("name", UI_NAMES)
def test_editor_loads_workflow_and_makes_the_api_prompt(page, example_inputs, name):
    result = page.evaluate(LOAD_JS, ui_workflow(name))
    assert result["shown"] == [] and result["missing"] == []
    assert without_editor_inputs(result["prompt"]) == api_workflow(name)


def without_editor_inputs(prompt: dict) -> dict:
    for node in prompt.values():
        for key in EDITOR_ONLY_INPUTS & set(node["inputs"]):
            assert node["inputs"].pop(key) == ""
    return prompt


def test_template_browser_opens_a_workflow(browser, comfy, example_inputs):
    """Templates (side bar) > ComfyUI-DWM > dwm_wan_basic opens the graph as shipped."""
    page = open_editor(browser, comfy)
    try:
        page.get_by_text("Templates", exact=True).first.click()
        page.get_by_text("ComfyUI-DWM", exact=True).click()
        page.get_by_text("dwm_wan_basic", exact=True).first.click()
        page.wait_for_function("() => app.extensionManager.workflow.activeWorkflow.path === "
                               "'workflows/dwm_wan_basic.json'", timeout=30_000)
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    finally:
        page.close()
    assert without_editor_inputs(prompt) == api_workflow("dwm_wan_basic")


@pytest.mark.parametrize("name", ["dwm_basic", "dwm_wan_basic"])
def test_screenshot(browser, comfy, example_inputs, tmp_path, name):
    """A fresh editor with just this workflow's tab, for the docs: saved to docs/<name>.png when
    DWM_UPDATE_SCREENSHOT=1, otherwise only checked to be taken."""
    page = open_editor(browser, comfy)
    try:
        assert page.evaluate(SHOW_JS, [ui_workflow(name), name]) == [f"workflows/{name}.json"]
        page.wait_for_timeout(2000)  # the video previews
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot))
    finally:
        page.close()
    assert shot.stat().st_size > 50_000
    if os.environ.get("DWM_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, REPO / "docs" / f"{name}.png")
