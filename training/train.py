"""Train a DWM LoRA: ``accelerate launch -m comfyui_dwm.training.train --config FILE [--key value ...]``.

One process per GPU (or ``--cpu``); accelerate shards the data, seeds each rank (``seed + rank`` for the
training generator, the same ``seed`` for the shared data order) and averages gradients. Only the main
process writes exports, logs and validation videos. Inputs are checked before the model loads;
SIGINT/SIGTERM finish the current step, save it and exit with 130/143. One loop for every family: model
assembly, loss, export and validation sampling come from ``training/families`` (picked from the base's
configs). See docs/training.md.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration,
                              gather_object, set_seed)
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from comfyui_dwm.atomic import atomic_dir
from comfyui_dwm.errors import DWMCancelled, DWMError
from comfyui_dwm.metrics import all_metrics
from comfyui_dwm.precision import resolve_dtype
from comfyui_dwm.safety import Interrupted, SignalStop, stop_on_signals, worker_signals, write_error

from . import checkpointing, engines, throughput
from .config import TrainConfig, parse_args
from .data import CarryErrors, collate, raise_item_errors
from .families import for_model
from .plot import FIELDS, LOSS_CSV, plot_loss
from .preflight import check_inputs
from .validate import validate

PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class RunResult:
    step: int
    output_dir: str
    final_lora: str  # export of the last step: CogVideoX's single file, Wan's release folder
    losses: list[float]


class LossLog:
    """``logs/loss.csv`` on the main process; on resume rows after the resumed step are dropped."""

    def __init__(self, output_dir: str, resumed_step: int):
        self.path = os.path.join(output_dir, LOSS_CSV)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        rows = []
        if resumed_step and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if float(r["step"]) <= resumed_step]
        with open(self.path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            csv.DictWriter(fh, fieldnames=FIELDS).writerow(row)


def check_extras(cfg: TrainConfig) -> None:
    """Fail before hours of training, not at its end, when the ``train`` extra is missing."""
    needed = ["matplotlib"] + (["tensorboard"] if cfg.report_to == "tensorboard" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise DWMError("training", f"{', '.join(missing)} not installed (the loss curve and the "
                       "TensorBoard log need them)", "pip install -e '.[train]' (or --report_to none)")


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    plugin = GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False)
    try:
        return Accelerator(
            mixed_precision=cfg.mixed_precision, gradient_accumulation_plugin=plugin,
            log_with=None if cfg.report_to in ("", "none") else cfg.report_to,
            project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                                logging_dir=os.path.join(cfg.output_dir, "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
            **engines.accelerator_kwargs(cfg))
    except ValueError as err:  # e.g. bf16 (the recipe) on a GPU without bf16 support
        raise DWMError("accelerate", str(err).splitlines()[0],
                       "check --mixed_precision and the accelerate config against this machine") from None


class Trainer:
    """Holds the run's objects; ``run()`` is the loop. Inputs and the checkpoint to resume from are
    checked before the model loads; ``stop`` (see ``dwm.safety``) asks the loop to save and stop."""

    def __init__(self, cfg: TrainConfig, stop: SignalStop | None = None):
        check_extras(cfg)
        self.family = for_model(cfg.model)
        inputs = check_inputs(cfg, self.family)
        self.cfg, self.stop = cfg, stop or SignalStop()
        self.acc = make_accelerator(cfg)
        engines.check_engine(self.acc)
        self.resume_from = checkpointing.resolve_resume(cfg.resume, cfg.output_dir, self.acc.print)
        set_seed(cfg.seed)  # identical LoRA init on every rank
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.dtype = resolve_dtype(PRECISION[cfg.mixed_precision])
        with engines.loading(self.acc):  # the text encoders load whole under ZeRO-3
            transformer = self.family.load(cfg, self.dtype, self.acc.device)
        throughput.place_encoders(self.family, inputs.dataset, self.acc.device)  # VAE/T5 only if steps need them
        self.params = self.family.make_trainable(cfg)
        self.acc.register_save_state_pre_hook(checkpointing.trainable_only(transformer))
        loader = DataLoader(CarryErrors(inputs.dataset), batch_size=cfg.train_batch_size, shuffle=True,
                            collate_fn=collate, num_workers=cfg.dataloader_num_workers,
                            worker_init_fn=worker_signals)
        optimizer = throughput.make_optimizer(self.params, cfg)
        # Stepped by hand once per optimizer step (accelerate would step it once per process).
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_train_steps, num_cycles=cfg.lr_num_cycles)
        # The lr scheduler is not registered with accelerate: its state travels as JSON (checkpointing.py).
        self.model, self.optimizer, self.loader = self.acc.prepare(transformer, optimizer, loader)
        engines.prepared(self.acc, self.model)
        self.transformer = transformer
        self.generator = torch.Generator().manual_seed(cfg.seed + self.acc.process_index)
        self.validation = engines.validation_samples(self.acc, inputs.validation)
        self.name = os.path.basename(os.path.normpath(cfg.output_dir))
        self.step = 0

    # -- exports ---------------------------------------------------------------------------------
    def export(self, folder: str | None) -> str:
        """The family's release files into ``folder``; returns what to load, relative to it. Every rank
        calls it (gathering the weights may be a collective, e.g. under FSDP); only the main process writes."""
        state = engines.trainable_state(self.acc, self.model, self.transformer)
        if not self.acc.is_main_process:
            return ""
        return self.family.export(state, self.cfg, folder, f"{self.name}-step{self.step}",
                                  f"{self.cfg.output_dir} step {self.step}", self.dtype)

    def save_checkpoint(self) -> str:
        return checkpointing.save(self.acc, self.cfg.output_dir, self.step, self.generator, self.export,
                                  self.cfg.checkpoints_total_limit, {"lr_scheduler": self.lr_scheduler.state_dict()})

    def resume(self) -> None:
        folder = self.resume_from
        if folder is None:
            if self.cfg.resume:
                self.acc.print(f"--resume {self.cfg.resume}: no checkpoint in {self.cfg.output_dir}, starting fresh")
            return
        state = checkpointing.load(self.acc, folder)
        self.generator.set_state(state["generator"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step = int(state["step"])
        self.acc.print(f"resumed from {folder} at step {self.step}")

    # -- loop ------------------------------------------------------------------------------------
    def batches(self):
        """Micro-batches forever, continuing the data order exactly where ``self.step`` left it."""
        consumed = self.step * self.cfg.gradient_accumulation_steps
        while True:
            epoch, skip = divmod(consumed, len(self.loader))
            self.loader.set_epoch(epoch)
            loader = self.acc.skip_first_batches(self.loader, skip) if skip else self.loader
            for items in loader:
                consumed += 1
                yield raise_item_errors(items)

    def micro_step(self, items: list[dict]) -> torch.Tensor:
        cfg = self.cfg
        with self.acc.accumulate(self.model):
            loss = self.family.loss(self.model, items, self.generator, self.acc.device, self.dtype, cfg)
            self.acc.backward(loss)
            if self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def next_group(self, batches) -> list[list[dict]] | None:
        """The micro-batches of one optimizer step, all fetched before any is used, so that a stop
        always falls on a step boundary. None once a stop was asked for: the signal may have ended
        the data-loader workers too, and torch then fails the fetch."""
        try:
            return None if self.stop.requested else [next(batches) for _ in range(self.cfg.gradient_accumulation_steps)]
        except RuntimeError:
            if self.stop.requested:
                return None
            raise

    def agree_to_stop(self, local: bool) -> bool:
        """A signal may reach only some ranks; every rank must stop at the same step."""
        flag = torch.tensor(float(local or self.stop.requested), device=self.acc.device)
        return self.acc.reduce(flag, reduction="sum").item() > 0

    def stopped(self) -> Interrupted:
        """Save the current step (unless an intact checkpoint of it exists), end the trackers; the
        error to raise."""
        folder = os.path.join(self.cfg.output_dir, f"checkpoint-{self.step}")
        if checkpointing.problem(folder) is not None:
            folder = self.save_checkpoint()
        self.acc.end_training()
        return self.stop.interrupted(f"{self.stop.name or 'a signal on another rank'} at step {self.step}: "
                                     f"saved {folder}; continue with --resume latest")

    def check_finite(self, loss: float) -> None:
        if torch.isfinite(torch.tensor(loss)):
            return
        done = checkpointing.list_checkpoints(self.cfg.output_dir)
        last = done[-1][1] if done else "none (no checkpoint was written yet)"
        raise DWMError("training", f"the loss became {loss} at step {self.step}; stopped without saving. "
                       f"Last good checkpoint: {last}",
                       "check the data of this run (NaN/inf in latents or videos), or lower --learning_rate; "
                       "then continue with --resume latest")

    def run_validation(self) -> None:
        if not self.validation or not self.acc.is_main_process:
            return
        cfg = self.cfg
        folder = os.path.join(cfg.output_dir, "validation", f"step-{self.step}")
        with self.acc.autocast(), throughput.encoders_on(self.family, self.acc.device):
            scores = validate(self.family.generator(cfg), self.transformer, self.validation, self.metrics, folder,
                              cfg.width, cfg.height, cfg.num_frames, cfg.validation_fps)
        self.acc.log({f"val/{k}": v for k, v in scores.items()}, step=self.step)
        self.acc.print(f"validation step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    def check_ranks_in_sync(self) -> str:
        """Every rank must end with the same weights; a mismatch means a broken distributed setup."""
        state = engines.replicated_state(self.acc, self.model, self.transformer)
        if state is None:  # FSDP: each rank holds its own shard
            return f"{self.acc.num_processes} rank(s) hold shards of the trained weights (FSDP)"
        digest = hashlib.sha256()
        for _, p in sorted(state.items()):
            digest.update(p.detach().float().cpu().numpy().tobytes())
        digests = gather_object([digest.hexdigest()])
        if len(set(digests)) != 1:
            raise DWMError("training", f"the {len(digests)} ranks ended with different weights {digests}",
                           "check the accelerate config (every rank must run the same code and data sharding)")
        return f"trained weights identical on {len(digests)} rank(s) (sha256 {digests[0][:12]})"

    def run(self) -> RunResult:
        cfg, acc = self.cfg, self.acc
        self.resume()
        main = acc.is_main_process
        if main:
            checkpointing.remove_partial(cfg.output_dir)
        log = LossLog(cfg.output_dir, self.step) if main else None
        if main:
            acc.init_trackers(self.name, config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})
        self.metrics = all_metrics(cfg.dreamsim_cache, acc.print) if self.validation and main else {}
        self.model.train()
        losses = []
        meter = throughput.Throughput(self.transformer.config, cfg, acc.num_processes, acc.device)
        samples_per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        bar = tqdm(total=cfg.max_train_steps, initial=self.step, desc="training", disable=not main, dynamic_ncols=True)
        batches = self.batches()
        notice = "finishing this step, saving a checkpoint, then stopping (again: stop now)"
        with self.stop.deferred(notice), contextlib.closing(bar):  # the bar's line ends before any message
            while self.step < cfg.max_train_steps:
                meter.start()
                group = self.next_group(batches)
                if self.agree_to_stop(group is None):
                    raise self.stopped()
                pending = [self.micro_step(items) for items in group]
                self.lr_scheduler.step()
                self.step += 1
                loss = acc.reduce(torch.stack(pending).mean(), reduction="mean").item()
                self.log_step(loss, meter.stop(samples_per_step), log, bar)
                losses.append(loss)
                if self.step % cfg.checkpointing_steps == 0 or self.step == cfg.max_train_steps:
                    self.save_checkpoint()
                if self.validation and self.step % cfg.validation_steps == 0:
                    self.run_validation()
        return self.finish(losses)

    def log_step(self, loss: float, rates: dict, log: LossLog | None, bar) -> None:
        self.check_finite(loss)
        row = {"step": self.step, "loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
               "samples_per_s": rates["samples_per_s"]}
        self.acc.log({**{k: v for k, v in row.items() if k != "step"}, **rates}, step=self.step)
        if log is not None:
            log.append(row)
        bar.set_postfix(loss=f"{loss:.4g}", lr=f"{row['lr']:.2e}")
        bar.update(1)

    def finish(self, losses: list[float]) -> RunResult:
        cfg, acc = self.cfg, self.acc
        acc.print(self.check_ranks_in_sync())
        final = os.path.join(cfg.output_dir, "final")
        with atomic_dir(final) if acc.is_main_process else contextlib.nullcontext() as tmp:
            name = self.export(tmp)
        if self.step % cfg.validation_steps:
            self.run_validation()
        lora = os.path.normpath(os.path.join(final, name))
        if acc.is_main_process:
            png = plot_loss(cfg.output_dir)
            acc.print(f"done at step {self.step}. LoRA for ComfyUI/models/loras/: {lora}"
                      + (f"; loss curve: {png}" if png else ""))
        acc.wait_for_everyone()
        acc.end_training()
        return RunResult(self.step, cfg.output_dir, lora, losses)


def run(cfg: TrainConfig, stop: SignalStop | None = None) -> RunResult:
    """Train; a write that fails in the output folder (full disk, permissions) becomes a DWMError."""
    try:
        return Trainer(cfg, stop).run()
    except (DWMError, DWMCancelled):
        raise
    except Exception as err:
        error = write_error(err, "output_dir", cfg.output_dir, "continue with --resume latest")
        if error is None:
            raise
        raise error from err


def main(argv: list[str] | None = None) -> int:
    """The command line: one line on stderr for bad input (1) or a stop by signal (128 + signal)."""
    with stop_on_signals() as stop:
        try:
            run(parse_args(argv), stop)
        except DWMError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except Interrupted as err:
            print(f"stopped: {err}", file=sys.stderr)
            return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
