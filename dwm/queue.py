"""Batch-run a DWM workflow over a dataset on one or more running ComfyUI servers.

Jobs are samples x seeds, spread over the --server URLs: each server runs one job at a time, and the
job of a server that goes away moves to another (dwm.queue_servers). For each job the sample's static
and hand videos are uploaded to the server's input folder (subfolder dwm_queue), its prompt text and
the seed are written into the API workflow, the prompt is queued, progress is followed over the
websocket and the outputs are downloaded into --out. <out>/manifest.jsonl records every job and is
rewritten after each change, so a rerun skips jobs that are done and whose files exist.

Which workflow inputs get substituted is found by node title (`_meta.title`, any case):
  "static video" -> the loader of videos_static/<id>.mp4
  "hand video"   -> the loader of videos_hands/<id>.mp4
  "prompt"       -> the text of prompts/<id>.txt
  "sampler"      -> the seed
Input names come from the node class (LoadVideo.file, VHS_LoadVideo.video, DWMTextEncode.prompt or
CLIPTextEncode.text, DWMSampler.seed or KSampler.seed, see dwm.queue_jobs.ROLE_INPUTS), so the
CogVideoX and the Wan workflows both work; --target ROLE=NODE_ID.INPUT picks another
node, and --set NODE_ID.INPUT=VALUE sets any input for every job (VALUE is JSON if it parses).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from comfyui_dwm.atomic import clean_stale_temporaries
from comfyui_dwm.dataset import read_list
from comfyui_dwm.errors import DWMError
from comfyui_dwm.queue_client import Comfy, ServerDown, check_server
from comfyui_dwm.queue_jobs import (Manifest, Recipe, ROLES, UsageError, find_targets, load_workflow, parse_seeds,
                                    parse_target, parse_value, sample_inputs)
from comfyui_dwm.queue_servers import RETRY_DOWN_S, Pool, Worker
from comfyui_dwm.safety import interrupt_on_signals

DEFAULT_SERVER = "http://127.0.0.1:8188"


def reach_servers(urls: list[str], retries: int, wf: dict) -> list[tuple[Comfy, str | None]]:
    """Each server with why it cannot be reached now (None: up). A server that lacks a node type the
    workflow uses, or no server reachable at all, is a usage error."""
    servers = []
    for url in dict.fromkeys(u.rstrip("/") for u in urls):
        comfy = Comfy(url, retries)
        try:
            check_server(comfy, wf)
            servers.append((comfy, None))
        except ServerDown as e:
            servers.append((comfy, str(e)))
    if all(down for _comfy, down in servers):
        raise UsageError(f"cannot reach ComfyUI at {', '.join(c.url for c, _ in servers)}: start it with "
                         "`python main.py --listen 127.0.0.1 --port 8188` in your ComfyUI folder, or pass --server")
    return servers


EXAMPLE = """example:
  python -m comfyui_dwm.queue --server http://127.0.0.1:8188 --workflow workflows/api/dwm_basic.json \\
      --data-root /data/realworld_dynamic --list ids.txt --seeds 0,1 \\
      --set 10.steps=30 --out runs/batch1
  (repeat --server to spread the jobs over several ComfyUI servers, e.g. one per GPU)

the workflow must be in API format (ComfyUI: Workflow > Export (API)). Title the nodes
"static video", "hand video", "prompt" and "sampler" to mark what each job replaces, or
point at inputs with --target static_video=12.video. Ctrl-C removes our queued prompts
from the servers and keeps the manifest; rerun the same command to resume."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m comfyui_dwm.queue", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action="append", metavar="URL",
                   help=f"ComfyUI base URL; repeat it to spread the jobs over several servers "
                        f"(default {DEFAULT_SERVER})")
    p.add_argument("--workflow", required=True, help="API-format workflow json")
    p.add_argument("--data-root", required=True,
                   help="dataset root with videos_static/, videos_hands/, prompts/")
    p.add_argument("--list", required=True, help="text file of sample ids, one per line")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="set an input in every job; VALUE is JSON if it parses, else a string")
    p.add_argument("--target", action="append", default=[], metavar="ROLE=NODE_ID.INPUT",
                   help=f"input a role writes to, instead of the titled node ({', '.join(ROLES)})")
    p.add_argument("--out", default="dwm_queue_out", help="output folder (default dwm_queue_out)")
    p.add_argument("--max-queued", type=int, default=2,
                   help="most of our prompts in each server's queue at once (default 2)")
    p.add_argument("--retries", type=int, default=4,
                   help="retries of a failed connection, with doubling delays (default 4)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="drop a server after it went away this many times in a row; until then it is "
                        f"tried again every {RETRY_DOWN_S:g} s while another server works (default 3)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    started = time.time()
    args = parse_args(argv)
    try:
        wf = load_workflow(args.workflow)
        targets = find_targets(wf, args.target)
        sets = [(parse_value(v), node, inp) for v, node, inp in
                (parse_target(s, wf, "--set") for s in args.set)]
        samples = read_list(args.data_root, args.list)
        seeds = parse_seeds(args.seeds)
        files = {s.slug: sample_inputs(s, targets) for s in samples}
        servers = reach_servers(args.server or [DEFAULT_SERVER], args.retries, wf)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(str(out), started, suffix=None)  # what a killed run left half-written
    except (UsageError, DWMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = Manifest(out)
    jobs = manifest.plan(list(files), seeds)
    manifest.save()
    pool = Pool(Recipe(wf, targets, sets, files), manifest, jobs)
    workers = [Worker(comfy, pool, args.max_queued, args.max_failures) for comfy, _down in servers]
    for worker, (_comfy, down) in zip(workers, servers):
        if down:
            worker.went_down(down)
    with interrupt_on_signals():
        return pool.run()


if __name__ == "__main__":
    sys.exit(main())
