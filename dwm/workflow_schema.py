"""Check ComfyUI workflows (UI and API format) against node schemas, without ComfyUI.

The shipped workflows break silently when a node's inputs change, and a user only finds out when the
graph editor shows red nodes. This module catches that in CI. Every schema comes from a recorded
``GET /object_info`` answer: core and VideoHelperSuite nodes from a real ComfyUI 0.8.0 host, our own
V3 nodes (which cannot be imported without ComfyUI) from ``workflows/schemas/`` (one file per model
family), which a host test keeps equal to the live server. UI widget values are mapped to inputs the
way the graph editor (frontend 1.35) does it, so a UI workflow and its API twin can be compared.
"""
from __future__ import annotations

import json

# Nodes that exist only in the graph editor: kept in UI files, never sent to the server.
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
CONTROL = "control_after_generate"
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")
SEED_NAMES = ("seed", "noise_seed")  # the editor adds a control widget to these even without the flag
# Choices that are the model files found on a host: any name is valid offline, whatever was recorded.
FILE_LISTS = {("VAELoader", "vae_name"), ("DWMModelLoader", "model"), ("DWMLoraLoader", "lora"),
              ("DWMWanModelLoader", "model_name"), ("DWMWanLoraLoader", "lora_name")}
# Keys of a served entry that depend on where the host found the pack, not on the node.
HOST_KEYS = ("python_module",)


def recorded_entry(name: str, entry: dict) -> dict:
    """A served ``/object_info`` entry as kept offline: JSON types, no host paths, open file lists."""
    entry = {k: v for k, v in json.loads(json.dumps(entry)).items() if k not in HOST_KEYS}
    for sec in ("required", "optional"):
        for inp, spec in (entry.get("input", {}).get(sec) or {}).items():
            if (name, inp) in FILE_LISTS:
                if isinstance(spec[0], list):
                    spec[0] = []
                else:
                    spec[1]["options"] = []
    return entry


def load_schemas(recorded: str | list[str]) -> dict:
    """Recorded host schemas (one file or several; later files win), as kept offline."""
    schemas = {}
    for path in [recorded] if isinstance(recorded, str) else recorded:
        with open(path, encoding="utf-8") as fh:
            schemas.update(json.load(fh))
    return {name: recorded_entry(name, spec) for name, spec in schemas.items()}


def declared_inputs(spec: dict) -> list[tuple[str, tuple, bool]]:
    """(name, (type, options), required) of the declared inputs, in declaration order."""
    out = []
    for sec in ("required", "optional"):
        declared = spec["input"].get(sec) or {}
        for name in spec.get("input_order", {}).get(sec, declared):
            entry = declared[name]
            out.append((name, (entry[0], entry[1] if len(entry) > 1 else {}), sec == "required"))
    return out


def kind(entry: tuple) -> str:
    """The socket/widget type: lists of choices count as COMBO."""
    return "COMBO" if isinstance(entry[0], list) else entry[0]


def is_widget(entry: tuple) -> bool:
    return kind(entry) in WIDGET_TYPES and not entry[1].get("forceInput")


def choices(entry: tuple) -> list:
    return entry[0] if isinstance(entry[0], list) else entry[1].get("options", [])


def format_widgets(spec: dict, values: dict) -> dict[str, tuple]:
    """Widgets a COMBO adds for its chosen value (VideoHelperSuite's ``formats``)."""
    extra = {}
    for name, entry, _req in declared_inputs(spec):
        chosen = entry[1].get("formats", {}).get(values.get(name)) if kind(entry) == "COMBO" else None
        for item in chosen if isinstance(chosen, list) else []:
            extra[item[0]] = (item[1], item[2] if len(item) > 2 else {})
    return extra


def ui_widget_slots(spec: dict) -> list[str | None]:
    """Input name of each positional ``widgets_values`` slot; None for the editor's extra slots
    (a seed's control_after_generate mode, an upload button)."""
    slots = []
    for name, entry, _req in declared_inputs(spec):
        if not is_widget(entry):
            continue
        slots.append(name)
        opts = entry[1]
        if kind(entry) == "INT" and (opts.get(CONTROL) or name in SEED_NAMES):
            slots.append(None)
        elif kind(entry) == "COMBO" and any(opts.get(f) for f in UPLOAD_FLAGS):
            slots.append(None)
    return slots


def types_match(out_type: str, in_type: str) -> bool:
    """The host's rule: ``*`` takes anything; comma lists match when they share a type."""
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def value_problem(name: str, entry: tuple, value) -> str | None:
    """Why a widget value does not fit its input, or None."""
    k, opts = kind(entry), entry[1]
    if k == "COMBO":
        options = choices(entry)
        # An empty list is a host-dependent file list (input folder, model folders): any name fits.
        if options and value not in options:
            return f"{name}={value!r} is not one of {options}"
        return None if isinstance(value, str) or options else f"{name}={value!r} is not a name"
    expected = {"INT": int, "FLOAT": (int, float), "BOOLEAN": bool, "STRING": str}[k]
    if not isinstance(value, expected) or (k != "BOOLEAN" and isinstance(value, bool)):
        return f"{name}={value!r} is not a {k}"
    if k in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}={value} is below its minimum {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}={value} is above its maximum {opts['max']}"
    return None


def check_api(wf: dict, schemas: dict) -> list[str]:
    """Problems of an API-format workflow; empty when the host would accept it."""
    problems = []
    for nid, node in wf.items():
        cls = node.get("class_type")
        where = f"node {nid} ({cls})"
        if cls not in schemas:
            problems.append(f"{where}: unknown node type {cls!r}")
            continue
        spec, inputs = schemas[cls], node.get("inputs", {})
        declared = {name: (entry, req) for name, entry, req in declared_inputs(spec)}
        declared.update({n: (e, True) for n, e in format_widgets(spec, inputs).items()})
        for name, value in inputs.items():
            if name not in declared:
                problems.append(f"{where}: no input named {name!r}")
            elif isinstance(value, list):
                problems += [f"{where}: {p}" for p in _link_problems(wf, schemas, name, declared[name][0], value)]
            elif is_widget(declared[name][0]):
                problem = value_problem(name, declared[name][0], value)
                problems += [f"{where}: {problem}"] if problem else []
            else:
                problems.append(f"{where}: {name} takes a {kind(declared[name][0])} link, not a value")
        for name, (_entry, req) in declared.items():
            if req and name not in inputs:
                problems.append(f"{where}: required input {name!r} is neither linked nor set")
    return problems


def _link_problems(wf, schemas, name, entry, link) -> list[str]:
    src, slot = (str(link[0]), link[1]) if len(link) == 2 else (None, None)
    if src not in wf:
        return [f"{name} is linked to missing node {link[0]!r}"]
    if wf[src].get("class_type") not in schemas:
        return []  # the unknown source is reported on its own
    outputs = schemas[wf[src]["class_type"]]["output"]
    if not isinstance(slot, int) or not 0 <= slot < len(outputs):
        return [f"{name} is linked to output {slot} of node {src}, which has {len(outputs)} outputs"]
    out_type = kind((outputs[slot], {}))
    if not types_match(out_type, kind(entry)):
        return [f"{name} takes {kind(entry)} but is linked to node {src} output {slot} ({out_type})"]
    return []


def ui_to_api(ui: dict, schemas: dict) -> tuple[dict, list[str]]:
    """The API prompt the editor would make from a UI workflow, and the problems met on the way."""
    problems, api = [], {}
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui.get("links", [])}
    for lid, (_id, src, src_slot, dst, dst_slot, ltype) in links.items():
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid} joins missing node {src if src not in nodes else dst}")
            continue
        outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if src_slot >= len(outs) or lid not in (outs[src_slot].get("links") or []):
            problems.append(f"link {lid}: node {src} output {src_slot} does not list it")
        if dst_slot >= len(ins) or ins[dst_slot].get("link") != lid:
            problems.append(f"link {lid}: node {dst} input {dst_slot} does not point back to it")
    for nid, node in nodes.items():
        cls = node["type"]
        if cls in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        if cls not in schemas:
            problems.append(f"node {nid}: unknown node type {cls!r}")
            continue
        inputs = _ui_widget_values(node, schemas[cls], problems)
        for slot in node.get("inputs", []):
            lk = links.get(slot.get("link"))
            if lk is not None and lk[1] in nodes:
                inputs[slot["name"]] = [str(lk[1]), lk[2]]
        title = node.get("title") or schemas[cls].get("display_name", cls)
        api[str(nid)] = {"inputs": inputs, "class_type": cls, "_meta": {"title": title}}
    ids = [n["id"] for n in ui["nodes"]]
    if ids and ui.get("last_node_id", 0) < max(ids):
        problems.append(f"last_node_id {ui.get('last_node_id')} is below the highest node id {max(ids)}")
    if links and ui.get("last_link_id", 0) < max(links):
        problems.append(f"last_link_id {ui.get('last_link_id')} is below the highest link id {max(links)}")
    return api, problems


def _ui_widget_values(node: dict, spec: dict, problems: list) -> dict:
    values, where = node.get("widgets_values"), f"node {node['id']} ({node['type']})"
    if isinstance(values, dict):  # VideoHelperSuite saves widgets by name
        known = {n for n, e, _r in declared_inputs(spec) if is_widget(e)} | set(format_widgets(spec, values))
        return {k: v for k, v in values.items() if k in known}
    slots, values = ui_widget_slots(spec), values or []
    if len(values) != len(slots):
        problems.append(f"{where}: {len(values)} widget values for {len(slots)} widget slots")
    out = {}
    for slot, value in zip(slots, values):
        if slot is not None:
            out[slot] = value
        elif isinstance(value, str) and value in CONTROL_VALUES + ("image",):
            continue
        else:
            problems.append(f"{where}: {value!r} is not a control/upload value")
    return out


def graph_differences(a: dict, b: dict) -> list[str]:
    """How two API prompts differ (node ids, types, titles, inputs); empty when they match."""
    diffs = [f"node {n} only in the first" for n in sorted(set(a) - set(b))]
    diffs += [f"node {n} only in the second" for n in sorted(set(b) - set(a))]
    for nid in sorted(set(a) & set(b)):
        x, y = a[nid], b[nid]
        for key in ("class_type", "inputs"):
            if x.get(key) != y.get(key):
                diffs.append(f"node {nid} {key}: {x.get(key)!r} != {y.get(key)!r}")
        tx, ty = x.get("_meta", {}).get("title"), y.get("_meta", {}).get("title")
        if tx != ty:
            diffs.append(f"node {nid} title: {tx!r} != {ty!r}")
    return diffs


def check_pair(ui: dict, api: dict, schemas: dict) -> list[str]:
    """Problems of a UI workflow, of its API twin, and where the two describe different graphs."""
    from_ui, ui_problems = ui_to_api(ui, schemas)
    problems = [f"UI: {p}" for p in ui_problems + check_api(from_ui, schemas)]
    problems += [f"API: {p}" for p in check_api(api, schemas)]
    problems += [f"UI vs API: {d}" for d in graph_differences(from_ui, api)]
    return problems
