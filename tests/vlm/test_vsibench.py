import json

import pytest
import torch

from videostate.vlm import VLM2ForConditionalGeneration
from videostate.vlm.inputs import VideoPromptEncoder
from videostate.vlm.vsibench import (
    MRA_KEY,
    TransformersVideoQA,
    build_prompt,
    evaluate,
    format_table,
    load_questions,
    mean_relative_accuracy,
    score_record,
    score_vsibench,
    score_vstibench,
)

from .tiny import char_tokenizer, tiny_base, tiny_vlm2_config


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        (10, 10, 1.0),  # exact: every threshold
        (11.8, 10, 0.7),  # error 0.18 <= 1 - θ for θ in 0.50 … 0.80: 7 of 10
        (12, 10, 0.6),  # error 0.2 at θ = 0.80 fails in floats (1 - 0.8 < 0.2), as in the official code
        (15, 10, 0.1),  # error 0.5: only θ = 0.50 passes, because the code uses <= (the paper's < gives 0)
        (4.5, 10, 0.0),  # error 0.55 > 0.5
        (None, 10, 0.0),  # not a number
        (3.02, 3.0, 1.0),  # error 0.0067 <= 0.05
        (3.25, 3.0, 0.9),  # error 0.083: θ in 0.50 … 0.90
    ],
)
def test_mean_relative_accuracy_hand_values(pred, target, expected):
    assert mean_relative_accuracy(pred, target) == pytest.approx(expected)


def test_mean_relative_accuracy_zero_target():
    with pytest.raises(ValueError, match="nonzero target"):
        mean_relative_accuracy(1.0, 0)


@pytest.mark.parametrize(
    "prediction, ground_truth, expected",
    [("B", "B", 1.0), ("b.", "B", 1.0), ("B. the chair", "B", 1.0), ("C", "B", 0.0), (" B", "B", 0.0)],
)
def test_multiple_choice_first_word_exact_match(prediction, ground_truth, expected):
    record = {"question_type": "route_planning", "prediction": prediction, "ground_truth": ground_truth}
    assert score_record(record)["accuracy"] == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [("3", 1.0), ("3.", 1.0), ("3 chairs", 1.0), ("three", 0.0), ("", 0.0), ("4", 0.4), ("7", 0.0)],
)
def test_numerical_answer_parsing(prediction, expected):
    record = {"question_type": "object_counting", "prediction": prediction, "ground_truth": "3"}
    assert score_record(record)[MRA_KEY] == expected


def test_score_record_errors():
    with pytest.raises(ValueError, match="unknown vsibench question_type 'count'"):
        score_record({"question_type": "count", "prediction": "1", "ground_truth": "1"})
    with pytest.raises(TypeError, match="prediction must be the model's answer text"):
        score_record({"question_type": "object_counting", "prediction": 1, "ground_truth": "1"})
    with pytest.raises(ValueError, match="benchmark must be one of"):
        score_record({"question_type": "object_counting", "prediction": "1", "ground_truth": "1"}, "scanqa")


def _mca(qtype, correct):
    return {"question_type": qtype, "prediction": "A" if correct else "B", "ground_truth": "A"}


def _na(qtype, pred, gt):
    return {"question_type": qtype, "prediction": str(pred), "ground_truth": str(gt)}


def test_vsibench_overall_averages_the_direction_subsets_first():
    records = [
        _mca("object_rel_direction_easy", True),  # easy 1.0
        _mca("object_rel_direction_medium", False),
        _mca("object_rel_direction_medium", False),  # medium 0.0
        _mca("object_rel_direction_hard", True),
        _mca("object_rel_direction_hard", False),  # hard 0.5 -> direction (1 + 0 + 0.5) / 3 = 0.5 (pooled: 0.4)
        _mca("object_rel_distance", True),  # 1.0
        _mca("route_planning", False),  # 0.0
        _mca("obj_appearance_order", True),
        _mca("obj_appearance_order", False),  # 0.5
        _na("object_counting", 11.8, 10),  # 0.7
        _na("object_abs_distance", 15, 10),  # 0.1
        _na("object_size_estimation", 10, 10),
        _na("object_size_estimation", "n/a", 10),  # (1 + 0) / 2 = 0.5
        _na("room_size_estimation", 3.25, 3.0),  # 0.9
    ]
    scores = score_vsibench(records)
    expected = {
        "object_rel_direction_accuracy": 0.5,
        "object_rel_distance_accuracy": 1.0,
        "route_planning_accuracy": 0.0,
        "obj_appearance_order_accuracy": 0.5,
        f"object_counting_{MRA_KEY}": 0.7,
        f"object_abs_distance_{MRA_KEY}": 0.1,
        f"object_size_estimation_{MRA_KEY}": 0.5,
        f"room_size_estimation_{MRA_KEY}": 0.9,
    }
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key
    assert scores["overall"] == pytest.approx(100 * (0.5 + 1 + 0 + 0.5 + 0.7 + 0.1 + 0.5 + 0.9) / 8)
    assert len(scores["records"]) == len(records)
    table = format_table(scores, "VSI-Bench")
    assert "| object_counting_MRA:.5:.95:.05 | 70.00 |" in table and f"**{scores['overall']:.2f}**" in table
    with pytest.raises(ValueError, match="missing"):
        score_vsibench(records[:1])


def test_vstibench_overall_is_the_plain_mean_of_its_types():
    records = [
        _mca("obj_obj_relative_pos_nf", True),
        _mca("obj_obj_relative_pos_ud", False),
        _mca("camera_movement_direction", True),
        _mca("camera_movement_direction", False),
        _na("camera_displacement", 11.8, 10),
    ]
    scores = score_vstibench(records)
    assert scores["overall"] == pytest.approx(100 * (1 + 0 + 0.5 + 0.7) / 4)
    with pytest.raises(ValueError, match="unknown vstibench question_type"):
        score_vstibench([_mca("route_planning", True)])


def test_vstibench_five_category_table():
    records = [
        _na("camera_obj_abs_dist", 11.8, 10),  # 0.7
        _na("camera_obj_abs_dist", 10, 10),  # (0.7 + 1) / 2 = 0.85
        _na("camera_displacement", 15, 10),  # 0.1
        _mca("camera_movement_direction", True),
        _mca("camera_movement_direction", True),
        _mca("camera_movement_direction", False),  # 2/3
        _mca("obj_obj_relative_pos_nf", True),  # nf 1.0
        _mca("obj_obj_relative_pos_ud", False),  # ud 0.0
        _mca("obj_obj_relative_pos_lr", True),
        _mca("obj_obj_relative_pos_lr", True),
        _mca("obj_obj_relative_pos_lr", True),
        _mca("obj_obj_relative_pos_lr", False),  # lr 0.75 -> (1 + 0 + 0.75) / 3 (pooled: 4/6)
        _mca("camera_obj_rel_dist_v1", False),  # v1 0.0
        _mca("camera_obj_rel_dist_v2", True),  # v2 1.0; v3 absent -> 0.5
        _na("camera_obj_dist_change", 3.25, 3.0),  # 0.9: per type only, no category
    ]
    scores = score_vstibench(records)
    expected = {
        "camera_object_absolute_distance": 0.85,
        "camera_displacement": 0.1,
        "camera_movement_direction": 2 / 3,
        "object_object_relative_position": 1.75 / 3,
        "camera_object_relative_distance": 0.5,
    }
    assert scores["categories"].keys() == expected.keys()
    for key, value in expected.items():
        assert scores["categories"][key] == pytest.approx(value), key
    assert scores["categories_overall"] == pytest.approx(100 * sum(expected.values()) / 5)
    per_type = [0.85, 0.1, 2 / 3, 1.0, 0.0, 0.75, 0.0, 1.0, 0.9]  # the code's overall: all 9 types present
    assert scores["overall"] == pytest.approx(100 * sum(per_type) / len(per_type))
    table = format_table(scores, "VSTI-Bench")
    assert "| camera_displacement | 10.00 |" in table
    assert f"| **overall of the categories** | **{scores['categories_overall']:.2f}** |" in table
    only_distance = score_vstibench([_na("camera_displacement", 10, 10)])
    assert only_distance["categories"] == {"camera_displacement": 1.0}


def test_prompts_follow_the_official_text():
    na = {"question_type": "object_counting", "question": "How many chairs?"}
    assert build_prompt(na) == (
        "These are frames of a video.\nHow many chairs?\nPlease answer the question using a single word or phrase."
    )
    mca = {"question_type": "route_planning", "question": "Which way?", "options": ["A. left", "B. right"]}
    assert build_prompt(mca) == (
        "These are frames of a video.\nWhich way?\nOptions:\nA. left\nB. right\n"
        "Answer with the option's letter from the given choices directly."
    )


QUESTIONS = [
    {
        "dataset": "scannet",
        "scene_name": "scene0",
        "question": "How many chairs?",
        "question_type": "object_counting",
        "options": None,
        "ground_truth": "4",
    },
    {
        "dataset": "scannet",
        "scene_name": "scene0",
        "question": "Which way?",
        "question_type": "route_planning",
        "options": ["A. left", "B. right"],
        "ground_truth": "B",
    },
    {
        "dataset": "arkitscenes",
        "scene_name": "room1",
        "question": "Room size?",
        "question_type": "room_size_estimation",
        "options": None,
        "ground_truth": "20.0",
    },
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_load_questions_formats(tmp_path, suffix):
    path = tmp_path / f"test{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(QUESTIONS))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(QUESTIONS), path)
    assert load_questions(path) == QUESTIONS
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(KeyError, match=r"lacks fields \['question_type', 'ground_truth'\]"):
        load_questions(bad)


def _write_videos(root, frames=7):
    from videostate.data.video import VideoWriter

    for dataset, scene in {(q["dataset"], q["scene_name"]) for q in QUESTIONS}:
        (root / dataset).mkdir(parents=True, exist_ok=True)
        with VideoWriter(root / dataset / f"{scene}.mp4", fps=5) as writer:
            for i in range(frames):
                writer.write(torch.full((3, 32, 32), i / frames))


def test_evaluate_samples_frames_asks_and_scores(tmp_path):
    _write_videos(tmp_path / "videos")
    seen = []

    def answer(frames, prompt, spatial):
        seen.append((frames.shape, prompt, spatial))
        return {"How many chairs?": "4.3", "Which way?": "B.", "Room size?": "20"}[prompt.split("\n")[1]]

    scores = evaluate(QUESTIONS, answer, tmp_path / "videos", num_frames=4, output_dir=tmp_path / "out")
    assert all(shape == (4, 3, 32, 32) for shape, _, _ in seen) and all(s is None for *_, s in seen)
    assert scores[f"object_counting_{MRA_KEY}"] == pytest.approx(0.9)  # error 0.075: θ 0.50 … 0.90
    assert scores["route_planning_accuracy"] == 1.0 and scores[f"room_size_estimation_{MRA_KEY}"] == 1.0
    assert scores["overall"] == pytest.approx(100 * (0.9 + 1 + 1) / 3)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["prediction"] for line in lines] == ["4.3", "B.", "20"]
    assert "**96.67**" in (tmp_path / "out" / "scores.md").read_text()


def test_evaluate_with_a_tiny_vlm2_model_and_spatial_features(tmp_path):
    _write_videos(tmp_path / "videos")
    for q in QUESTIONS:  # VLM-3R-format spatial features: 7 frames of tokens and point maps
        (tmp_path / "spatial" / q["dataset"]).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "camera_tokens": torch.randn(7, 1, 24),
                "patch_tokens": torch.randn(7, 16, 24),
                "pts3d": torch.randn(7, 8, 8, 3),
                "conf": torch.rand(7, 8, 8),
            },
            tmp_path / "spatial" / q["dataset"] / f"{q['scene_name']}.pt",
        )
    base = tiny_base("onevision")
    model = VLM2ForConditionalGeneration(base, tiny_vlm2_config()).eval()
    qa = TransformersVideoQA(model, VideoPromptEncoder(char_tokenizer(), base.config), max_new_tokens=3)
    scores = evaluate(QUESTIONS[:2], qa, tmp_path / "videos", num_frames=3, spatial_dir=tmp_path / "spatial")
    for record in scores["records"]:
        assert isinstance(record["prediction"], str) and len(record["prediction"]) <= 3
        assert score_record({k: record[k] for k in ("question_type", "prediction", "ground_truth")}) == {
            k: record[k] for k in ("question_type", "prediction", "ground_truth", "accuracy", MRA_KEY) if k in record
        }
