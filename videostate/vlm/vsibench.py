"""VSI-Bench and VSTI-Bench evaluation, scored as the official lmms-eval task code does.

Scoring (``thinking-in-space/lmms_eval/tasks/vsibench/utils.py``):

- multiple choice: the first space-separated word of the answer, trailing ``.`` removed, equal to the
  ground truth ignoring case (``accuracy``);
- numerical: Mean Relative Accuracy over thresholds θ ∈ {0.50, 0.55, …, 0.95},
  ``MRA = mean_θ 1(|ŷ − y| / y <= 1 − θ)`` (``<=`` as the code has it; the paper writes ``<``); an
  answer that is not a number scores 0;
- VSI-Bench overall: mean of the 8 task scores, the three ``object_rel_direction_*`` subsets averaged
  into one task first; VSTI-Bench overall: mean of all its question types (no merging), as its code does,
  plus the 5-category table of the VLM-3R paper (:data:`VSTIBENCH_CATEGORIES`, subsets averaged first).

The harness reads the benchmark's local files (JSON, JSONL or parquet with the fields ``dataset``,
``scene_name``, ``question``, ``question_type``, ``options``, ``ground_truth``), samples frames uniformly
from ``{video_dir}/{dataset}/{scene_name}.mp4``, asks any answer function (a transformers video LLM with
or without the VLM² modules, see :class:`TransformersVideoQA`), and writes per-question results and a table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .inputs import VideoPromptEncoder, sample_frame_indices
from .spatial import SpatialFeatures, load_vlm3r_features

VSIBENCH_MCA = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "object_rel_distance",
    "route_planning",
    "obj_appearance_order",
)
VSIBENCH_NA = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSTIBENCH_MCA = (
    "obj_obj_relative_pos_nf",
    "obj_obj_relative_pos_ud",
    "obj_obj_relative_pos_lr",
    "camera_obj_rel_dist_v1",
    "camera_obj_rel_dist_v2",
    "camera_obj_rel_dist_v3",
    "camera_movement_direction",
)
VSTIBENCH_NA = ("camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change")
MRA_KEY = "MRA:.5:.95:.05"
# the five columns of VLM-3R's VSTI-Bench table, each the mean of its subsets' scores (subsets averaged
# first, as VSI-Bench merges its direction subsets). camera_obj_dist_change has no column in that table: it
# is scored and listed per type, outside the five categories.
VSTIBENCH_CATEGORIES = {
    "camera_object_absolute_distance": (f"camera_obj_abs_dist_{MRA_KEY}",),
    "camera_displacement": (f"camera_displacement_{MRA_KEY}",),
    "camera_movement_direction": ("camera_movement_direction_accuracy",),
    "object_object_relative_position": tuple(f"obj_obj_relative_pos_{s}_accuracy" for s in ("nf", "ud", "lr")),
    "camera_object_relative_distance": tuple(f"camera_obj_rel_dist_v{i}_accuracy" for i in (1, 2, 3)),
}
PRE_PROMPT = "These are frames of a video."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
BENCHMARKS = {"vsibench": (VSIBENCH_MCA, VSIBENCH_NA), "vstibench": (VSTIBENCH_MCA, VSTIBENCH_NA)}


# ---------------------------------------------------------------------------------------------- scoring


def fuzzy_matching(pred: str) -> str:
    """The answer's first space-separated word without a trailing full stop."""
    return pred.split(" ")[0].rstrip(".").strip()


def exact_match(pred: str, target: str) -> float:
    return 1.0 if pred.lower() == target.lower() else 0.0


def to_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def mean_relative_accuracy(pred, target, start: float = 0.5, end: float = 0.95, interval: float = 0.05) -> float:
    """MRA of one numerical answer: the share of thresholds θ in ``start, start + interval, …, end`` with
    ``|pred − target| / target <= 1 − θ``. ``None`` (no number) scores 0."""
    if pred is None:
        return 0.0
    target = float(target)
    if target == 0:
        raise ValueError("mean_relative_accuracy needs a nonzero target (it divides by it); got 0")
    thresholds = np.linspace(start, end, int((end - start) / interval + 2))
    relative_error = abs(float(pred) - target) / target
    return float((relative_error <= 1 - thresholds).mean())


def _types(benchmark: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}; got {benchmark!r}")
    return BENCHMARKS[benchmark]


def score_record(record: dict, benchmark: str = "vsibench") -> dict:
    """A copy of ``record`` (``question_type``, ``prediction``, ``ground_truth``) with its score under
    ``accuracy`` (multiple choice) or ``"MRA:.5:.95:.05"`` (numerical)."""
    mca, na = _types(benchmark)
    out = dict(record)
    qtype, prediction = record["question_type"], record["prediction"]
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be the model's answer text; got {type(prediction).__name__}")
    if qtype in mca:
        out["accuracy"] = exact_match(fuzzy_matching(prediction), str(record["ground_truth"]))
    elif qtype in na:
        out[MRA_KEY] = mean_relative_accuracy(to_float(fuzzy_matching(prediction)), to_float(record["ground_truth"]))
    else:
        raise ValueError(f"unknown {benchmark} question_type {qtype!r}; expected one of {mca + na}")
    return out


def _per_type(records: Iterable[dict], benchmark: str) -> tuple[dict[str, float], list[dict]]:
    mca, _ = _types(benchmark)
    scored = [score_record(r, benchmark) for r in records]
    if not scored:
        raise ValueError(f"no records to score for {benchmark}")
    sums: dict[str, list[float]] = {}
    for r in scored:
        key = "accuracy" if r["question_type"] in mca else MRA_KEY
        sums.setdefault(f"{r['question_type']}_{key}", []).append(r[key])
    return {k: sum(v) / len(v) for k, v in sums.items()}, scored


def score_vsibench(records: Iterable[dict]) -> dict:
    """VSI-Bench scores: ``{"<type>_<metric>": mean in [0, 1], ..., "object_rel_direction_accuracy",
    "overall": mean of the task scores × 100, "records": the scored records}``.

    All three relative-direction subsets must be present (they are merged), as in the official code.
    """
    output, scored = _per_type(records, "vsibench")
    subsets = [f"object_rel_direction_{level}_accuracy" for level in ("easy", "medium", "hard")]
    missing = [s for s in subsets if s not in output]
    present = [s for s in subsets if s in output]
    if present and missing:
        raise ValueError(f"the relative-direction subsets are averaged together; missing {missing}")
    if present:
        output["object_rel_direction_accuracy"] = sum(output.pop(s) for s in subsets) / 3.0
    output["overall"] = 100.0 * sum(output.values()) / len(output)
    output["records"] = scored
    return output


def score_vstibench(records: Iterable[dict]) -> dict:
    """VSTI-Bench scores: per question type means and ``overall`` = their mean × 100 (no merging, as the
    official code), ``"categories"``: the paper's 5-category table (:func:`vstibench_categories`) and
    ``"categories_overall"``: the mean of those categories × 100."""
    output, scored = _per_type(records, "vstibench")
    output["overall"] = 100.0 * sum(output.values()) / len(output)
    output["categories"] = vstibench_categories(output)
    present = list(output["categories"].values())
    output["categories_overall"] = 100.0 * sum(present) / len(present) if present else float("nan")
    output["records"] = scored
    return output


def vstibench_categories(per_type: dict[str, float]) -> dict[str, float]:
    """The five VSTI-Bench categories from per-type scores (``"<type>_<metric>"`` in [0, 1]): each is the
    mean of its subsets present in ``per_type``; a category with no subset present is left out."""
    out = {}
    for category, subsets in VSTIBENCH_CATEGORIES.items():
        values = [per_type[s] for s in subsets if s in per_type]
        if values:
            out[category] = sum(values) / len(values)
    return out


def format_table(scores: dict, title: str = "") -> str:
    """A markdown table of the scores (percent)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| task | score |", "| --- | ---: |"]
    for key, value in scores.items():
        if key in ("overall", "records", "categories", "categories_overall"):
            continue
        lines.append(f"| {key} | {100 * value:.2f} |")
    lines.append(f"| **overall** | **{scores['overall']:.2f}** |")
    if scores.get("categories"):
        lines += ["", "| category | score |", "| --- | ---: |"]
        lines += [f"| {key} | {100 * value:.2f} |" for key, value in scores["categories"].items()]
        lines.append(f"| **overall of the categories** | **{scores['categories_overall']:.2f}** |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- data


def load_questions(path: str | Path) -> list[dict]:
    """Questions from a ``.json`` (a list), ``.jsonl`` or ``.parquet`` file (parquet needs pyarrow)."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of questions; got {type(data).__name__}")
        rows = data
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path}: expected a .json, .jsonl or .parquet file; got {path.suffix!r}")
    required = ("question", "question_type", "ground_truth")
    for i, row in enumerate(rows):
        missing = [k for k in required if k not in row]
        if missing:
            raise KeyError(f"{path}: question {i} lacks fields {missing}")
    return rows


def build_prompt(record: dict, pre_prompt: str = PRE_PROMPT, benchmark: str = "vsibench") -> str:
    """The official question text: pre-prompt, question, options (multiple choice) and instruction."""
    mca, na = _types(benchmark)
    qtype = record["question_type"]
    if qtype in na:
        return f"{pre_prompt}\n{record['question']}\n{NA_POST_PROMPT}"
    if qtype in mca:
        options = "Options:\n" + "\n".join(record["options"])
        return "\n".join([pre_prompt, record["question"], options, MCA_POST_PROMPT])
    raise ValueError(f"unknown {benchmark} question_type {qtype!r}")


def video_path(record: dict, video_dir: str | Path) -> Path:
    return Path(video_dir) / record["dataset"] / f"{record['scene_name']}.mp4"


# ---------------------------------------------------------------------------------------------- harness

AnswerFn = Callable[[torch.Tensor, str, SpatialFeatures | None], str]


class TransformersVideoQA:
    """Answers a question about frames with a transformers LLaVA video model, greedy decoding.

    Args:
        model: a ``VLM2ForConditionalGeneration`` or a plain transformers LLaVA-OneVision / NeXT-Video model.
        encoder: the :class:`VideoPromptEncoder` of its tokenizer and config.
        max_new_tokens: generation length (16 in the official evaluation).
    """

    def __init__(self, model, encoder: VideoPromptEncoder, max_new_tokens: int = 16):
        self.model = model
        self.encoder = encoder
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompt: str, spatial: SpatialFeatures | None = None) -> str:
        inputs = self.encoder(frames, prompt)
        param = next(self.model.parameters())
        inputs = {k: v.to(param.device) for k, v in inputs.items()}
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(param.dtype)
        extra = {} if spatial is None else {"spatial_features": spatial.to(param.device)}
        tokenizer = self.encoder.tokenizer
        out = self.model.generate(
            **inputs,
            **extra,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        )
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def evaluate(
    questions: list[dict],
    answer: AnswerFn,
    video_dir: str | Path,
    num_frames: int = 32,
    benchmark: str = "vsibench",
    spatial_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """Answer and score every question; write ``results.jsonl`` and ``scores.md`` to ``output_dir``.

    Args:
        questions: records from :func:`load_questions`.
        answer: ``answer(frames (T, 3, H, W) in [0, 1], prompt, spatial or None) -> text``.
        video_dir: folder with ``{dataset}/{scene_name}.mp4``.
        num_frames: frames sampled uniformly per video.
        spatial_dir: folder with VLM-3R-format ``{dataset}/{scene_name}.pt`` spatial features, or ``None``.
        limit: score only the first ``limit`` questions.
    """
    from ..data.video import VideoReader

    scorer = score_vsibench if benchmark == "vsibench" else score_vstibench
    _types(benchmark)
    selected = questions if limit is None else questions[:limit]
    iterator = selected
    if progress:
        from tqdm import tqdm

        iterator = tqdm(selected, desc=benchmark)
    records = []
    for record in iterator:
        with VideoReader(video_path(record, video_dir), format="tensor") as reader:
            indices = sample_frame_indices(len(reader), num_frames)
            frames = reader.read_clip(indices)
        spatial = None
        if spatial_dir is not None:
            spatial = load_vlm3r_features(Path(spatial_dir) / record["dataset"] / f"{record['scene_name']}.pt", indices)
        prediction = answer(frames, build_prompt(record, benchmark=benchmark), spatial)
        records.append({**record, "prediction": prediction})
    scores = scorer(records)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "results.jsonl").open("w") as f:
            for r in scores["records"]:
                f.write(json.dumps(r, default=_json_default) + "\n")
        (out / "scores.md").write_text(format_table(scores, benchmark) + "\n")
    return scores


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
