"""End-to-end check of VideoMambaDepth on the ICL-NUIM RGB-D sample: does the pipeline learn?

Both models start from one randomly initialised Depth Anything V2 (frozen encoder; the student decoder is its
copy) and learn the ground-truth depth of the 60-frame sequence (``configs/depth_rgbd_check.yaml``):

1. ``temporal``: VideoMambaDepth with its temporal Mamba blocks;
2. ``baseline``: the same recipe with ``model.temporal.use_temporal=false`` (the same decoder, frame by frame).

Each trains for at most ``--train-seconds`` of wall-clock time or ``trainer.max_steps`` steps after a warm-up
outside the budget (steps until a clip step and a single-frame step have both run, so that the GPU kernels'
compilation, recorded apart as ``warmup_seconds``, costs neither run training time), is exported with
``videostate depth-export`` and streamed frame by frame over the whole sequence. The table compares them with the
untrained start (``teacher``: at initialisation the student reproduces it exactly) against the ground truth: train
AbsRel and delta1, flicker and temporal variance on static pixels, and TAE with the sequence's poses and intrinsics.
The JSON result also holds every training step's losses and time.

    python benchmarks/depth_rgbd_check.py --data DIR --train-seconds 110   # GPU: under 6 min in all
    python benchmarks/depth_rgbd_check.py --data DIR --train-seconds 60 --eval-frames 12 --device cpu \\
        --set model.input_size=56 data.crop_size=[56,70] data.clip_length=4 data.chunk_size=2 trainer.batch_size=1 \\
              trainer.num_workers=0                                  # CPU dry run

``DIR`` holds ``image/`` (frames), ``depth/`` (16-bit PNG, millimetres) and ``trajectory.log`` (Open3D poses).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
import torch
from common import describe_device, write_result

from videostate.cli import main as videostate_main
from videostate.data.video import VideoReader, frame_files
from videostate.depth import VideoMambaDepth
from videostate.depth.data import read_depth_png
from videostate.depth.evaluation import evaluate_sequence, load_trajectory_log, plot_curves, predict_sequence
from videostate.training import Trainer, latest_checkpoint
from videostate.training.cli import add_overrides_argument
from videostate.training.recipe import get_task, load_recipe, recipe_to_dict

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"temporal": [], "baseline": ["model.temporal.use_temporal=false"]}
TABLE_KEYS = ("abs_rel_gt", "delta1_gt", "flicker", "temporal_variance", "tae")


def log(message: str) -> None:
    print(message, flush=True)


def recorded(train_step, record: list, start: list, print_first: int, print_every: int):
    """``train_step`` that appends each step's losses and the wall time since training began to ``record``."""

    def step(model, batch, backward):
        logs = train_step(model, batch, backward)
        entry = {k: float(logs[k]) for k in ("loss", "se", "tgm", "state", "anchor", "single_frame")}
        entry["seconds"] = time.perf_counter() - start[0]
        record.append(entry)
        n = len(record)
        if n <= print_first or n % print_every == 0:
            previous = record[-2]["seconds"] if n > 1 else 0.0
            log(
                f"  step {n}: loss {entry['loss']:.4f} se {entry['se']:.4f} "
                f"({entry['seconds'] - previous:.2f} s this step, {entry['seconds']:.1f} s in all)"
            )
        return logs

    return step


def summarise_losses(record: list) -> dict:
    """First and last values of the loss and of the SE term (over multi-frame steps, whose loss has every term),
    and the means over the first and last tenth of the run."""
    multi = [r for r in record if not r["single_frame"]] or record
    k = max(1, min(20, len(multi) // 10))
    return {
        "first_loss": record[0]["loss"],
        "last_loss": record[-1]["loss"],
        "first_se": multi[0]["se"],
        "last_se": multi[-1]["se"],
        "mean_se_first_tenth": float(np.mean([r["se"] for r in multi[:k]])),
        "mean_se_last_tenth": float(np.mean([r["se"] for r in multi[-k:]])),
        "steps_averaged": k,
    }


def train_one(name: str, overrides: list[str], args, work: Path) -> tuple[dict, Path]:
    """Train one model within the time budget and export it with ``videostate depth-export``: the run's summary
    and the exported folder."""
    recorded_overrides = [*overrides, "trainer.progress=false"]  # the scratch output folder is not recorded
    overrides = [*recorded_overrides, f"trainer.output_dir={json.dumps(str(work / name))}"]
    recipe = load_recipe(args.recipe, overrides)
    log(f"[{name}] building the model and data")
    setup = get_task(recipe.task).build(recipe.model, recipe.data)
    record: list[dict] = []
    start = [time.perf_counter()]
    train_step = recorded(setup.train_step, record, start, args.print_first, recipe.trainer.log_every)
    groups = setup.param_groups(recipe.optim)
    trainer = Trainer(
        setup.model,
        train_step,
        setup.dataset,
        recipe.trainer,
        recipe.optim,
        collate_fn=setup.collate_fn,
        groups=groups,
    )
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    log(f"[{name}] {trainable / 1e6:.2f} M trainable parameters on {trainer.device}, precision {trainer.precision}")
    # Warm-up outside the budget: one step at a time until a step of every kind the recipe draws (clips and single
    # frames, whose shapes differ) has run, so the kernels' compilation (tens of seconds on a GPU for the temporal
    # scans, nothing for the baseline) does not eat the budget. The warm-up steps train like any other.
    start[0] = time.perf_counter()
    kinds = {k for k, p in ((0.0, 1 - recipe.data.p_single_frame), (1.0, recipe.data.p_single_frame)) if p > 0}
    while len(record) < args.max_warmup_steps and trainer.step < recipe.trainer.max_steps:
        trainer.fit(steps=1)
        if kinds <= {r["single_frame"] for r in record}:
            break
    warmup = {"steps": trainer.step, "seconds": time.perf_counter() - start[0]}
    log(f"[{name}] warm-up: {warmup['steps']} steps in {warmup['seconds']:.1f} s (outside the time budget)")
    # Segments of steps sized by the measured step time, so the run ends near the time budget; each ends with a
    # checkpoint.
    begin = time.perf_counter()
    segment = args.print_first
    for _ in range(args.max_segments):
        if trainer.step >= recipe.trainer.max_steps:
            break
        trainer.fit(steps=segment)
        elapsed = time.perf_counter() - begin
        if trainer.step >= recipe.trainer.max_steps:
            break
        window = [r["seconds"] for r in record[max(warmup["steps"] - 1, len(record) - 11) :]]
        per_step = (window[-1] - window[0]) / (len(window) - 1) if len(window) > 1 else window[0]
        segment = math.floor((args.train_seconds - elapsed) / max(per_step, 1e-3))
        if segment < 1:
            break
    seconds = time.perf_counter() - begin
    log(f"[{name}] {trainer.step - warmup['steps']} steps in {seconds:.1f} s after the warm-up")
    checkpoint = latest_checkpoint(work / name / "checkpoints")
    export = work / f"{name}_model"
    status = videostate_main(
        ["depth-export", str(args.recipe), str(checkpoint), "-o", str(export), "--set", *overrides]
    )
    if status != 0:
        raise RuntimeError(f"videostate depth-export exited with {status}")
    steady = [r["seconds"] for r in record[warmup["steps"] :]]
    return {
        "overrides": recorded_overrides,
        "recipe": recipe_to_dict(load_recipe(args.recipe, recorded_overrides)),
        "trainable_parameters": trainable,
        "steps": trainer.step,
        "warmup_steps": warmup["steps"],
        "warmup_seconds": warmup["seconds"],
        "steps_in_budget": trainer.step - warmup["steps"],
        "train_seconds": seconds,
        "seconds_per_step_after_warmup": (steady[-1] - steady[0]) / (len(steady) - 1) if len(steady) > 1 else None,
        "losses": summarise_losses(record),
        "record": record,
    }, export


def load_sequence(args) -> dict:
    data = Path(args.data)
    with VideoReader(data / "image") as source:
        count = len(source) if args.eval_frames is None else min(args.eval_frames, len(source))
        frames = source.read_clip(range(count))
    files = frame_files(data / "depth")[:count]
    if len(files) != count:
        raise ValueError(f"{data / 'depth'} has {len(files)} depth images; {count} frames are evaluated")
    gt = torch.stack([torch.from_numpy(read_depth_png(f, args.depth_scale)) for f in files])
    poses = load_trajectory_log(data / "trajectory.log")[:count]
    fx, fy, cx, cy = args.intrinsics
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    return {"frames": frames, "gt": gt, "poses": poses, "K": K}


def evaluate(exports: dict[str, Path], sequence: dict, args, device: torch.device) -> dict:
    """Stream each exported model over the sequence and compare all, with their common teacher, to the ground
    truth."""
    predictions, teachers = {}, {}
    for name, export in exports.items():
        model = VideoMambaDepth.from_pretrained(export, device=device).eval()
        begin = time.perf_counter()
        out = predict_sequence(model, sequence["frames"])
        log(f"[eval] {name}: {len(sequence['frames'])} frames streamed in {time.perf_counter() - begin:.1f} s")
        predictions[name], teachers[name] = out["model"], out["teacher"]
        del model
    reference = next(iter(teachers.values()))
    teacher_difference = {n: float((t - reference).abs().max()) for n, t in teachers.items()}
    predictions = {"teacher": reference, **predictions}
    begin = time.perf_counter()
    result = evaluate_sequence(
        predictions,
        sequence["frames"],
        sequence["gt"],
        sequence["poses"],
        sequence["K"],
        max_depth=args.max_depth,
        flow_preset=args.flow_preset,
    )
    log(f"[eval] metrics in {time.perf_counter() - begin:.1f} s")
    if args.out_dir:
        plot_curves(result, Path(args.out_dir) / "depth_rgbd_check_plots")
    return {
        "frames": len(sequence["frames"]),
        "metrics": result.metrics,
        "curves": result.curves,
        "teacher_max_difference_between_runs": teacher_difference,
    }


def table(payload: dict) -> str:
    lines = []
    runs = payload.get("runs", {})
    if runs:
        lines.append(
            f"{'run':<10}{'warm-up':>9}{'steps':>7}{'s/step':>9}{'first SE':>10}{'last SE':>10}{'first loss':>12}"
            f"{'last loss':>11}"
        )
        for name, run in runs.items():
            loss, per_step = run["losses"], run["seconds_per_step_after_warmup"]
            lines.append(
                f"{name:<10}{run['warmup_seconds']:>8.1f}s{run['steps']:>7}{per_step or float('nan'):>9.3f}"
                f"{loss['mean_se_first_tenth']:>10.4f}{loss['mean_se_last_tenth']:>10.4f}{loss['first_loss']:>12.4f}{loss['last_loss']:>11.4f}"
            )
    metrics = payload.get("evaluation", {}).get("metrics")
    if metrics:
        names = list(metrics)
        lines.append("")
        lines.append(f"{'vs ground truth':<20}" + "".join(f"{n:>12}" for n in names))
        for key in TABLE_KEYS:
            lines.append(f"{key:<20}" + "".join(f"{metrics[n].get(key, float('nan')):>12.5f}" for n in names))
        lines.append("(teacher = the untrained start: random Depth Anything V2, which the fresh student reproduces)")
    for part, error in payload.get("errors", {}).items():
        lines.append(f"FAILED {part}: {error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with image/, depth/ and trajectory.log")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "depth_rgbd_check.yaml"))
    add_overrides_argument(parser, "recipe overrides for both runs (e.g. a smaller model.input_size for a CPU dry run)")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="wall-clock budget of each training")
    parser.add_argument("--max-segments", type=int, default=4, help="fit calls per training (step-time re-estimates)")
    parser.add_argument("--print-first", type=int, default=5, help="steps printed one by one (the step-time check)")
    parser.add_argument(
        "--max-warmup-steps",
        type=int,
        default=8,
        help="at most this many warm-up steps (kernel compilation) before the budget's clock starts",
    )
    parser.add_argument("--eval-frames", type=int, help="evaluate the first frames only (default: all)")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre")
    parser.add_argument("--max-depth", type=float, default=10.0)
    parser.add_argument(
        "--intrinsics", type=float, nargs=4, default=[525.0, 525.0, 319.5, 239.5], metavar=("FX", "FY", "CX", "CY")
    )
    parser.add_argument("--flow-preset", default="fast", help="DIS preset of the evaluation's static masks")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", help="keep checkpoints and exported models here (default: a temporary folder)")
    parser.add_argument("--out-dir", help="also write the JSON result and the curve plots here")
    args = parser.parse_args()
    if args.train_seconds <= 0 or args.max_segments < 1 or args.print_first < 1 or args.max_warmup_steps < 1:
        parser.error("--train-seconds must be > 0, --max-segments, --print-first and --max-warmup-steps >= 1")
    data = Path(args.data)
    for part in ("image", "depth", "trajectory.log"):
        if not (data / part).exists():
            parser.error(f"--data {data} must hold image/, depth/ and trajectory.log; {part} is missing")
    device = torch.device(args.device)
    cv2.setNumThreads(1)  # the data workers (forked after this) compute flow in parallel already
    args.overrides = [
        f"data.sources={json.dumps([str(data / 'image')])}",
        f"data.depth_sources={json.dumps([str(data / 'depth')])}",
        f"trainer.device={device}",
        *args.overrides,
    ]
    payload = {**describe_device(device), "data": str(data), "train_seconds_budget": args.train_seconds}
    payload["runs"], payload["errors"] = {}, {}
    name = f"depth_rgbd_check_{device.type}.json"

    def save() -> None:
        path = write_result(name, payload)
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(args.out_dir) / name)

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="depth_rgbd_check_"))
    begin = time.perf_counter()
    exports = {}
    try:
        for run_name, extra in RUNS.items():
            try:
                payload["runs"][run_name], exports[run_name] = train_one(
                    run_name, [*args.overrides, *extra], args, work
                )
            except Exception:
                payload["errors"][f"train {run_name}"] = traceback.format_exc()
                log(payload["errors"][f"train {run_name}"])
            save()
        if exports:
            try:
                payload["evaluation"] = evaluate(exports, load_sequence(args), args, device)
            except Exception:
                payload["errors"]["evaluation"] = traceback.format_exc()
                log(payload["errors"]["evaluation"])
        payload["total_seconds"] = time.perf_counter() - begin
        save()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    log(table(payload))
    log(f"wrote benchmarks/results/{name} in {payload['total_seconds']:.0f} s")
    return 1 if payload["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
