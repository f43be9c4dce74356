import argparse
import json

import pytest
import torch

from videostate.vlm import VLM2ForConditionalGeneration
from videostate.vlm.cli import add_vlm_arguments
from videostate.vlm.demo import random_llava, vlm_streaming_demo

from .test_vsibench import QUESTIONS, _write_videos
from .tiny import char_tokenizer, tiny_base, tiny_vlm2_config


def _run(argv):
    parser = argparse.ArgumentParser(prog="videostate vlm")
    add_vlm_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("with_vlm2", [False, True])
def test_eval_and_score_commands(tmp_path, capsys, with_vlm2):
    base = tiny_base("nextvideo")
    base.save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    _write_videos(tmp_path / "videos")
    (tmp_path / "q.json").write_text(json.dumps(QUESTIONS))
    argv = [
        "eval",
        "--base",
        str(tmp_path / "base"),
        "--questions",
        str(tmp_path / "q.json"),
        "--videos",
        str(tmp_path / "videos"),
        "--frames",
        "2",
        "--limit",
        "2",
        "--output",
        str(tmp_path / "out"),
    ]
    if with_vlm2:
        VLM2ForConditionalGeneration(base, tiny_vlm2_config(use_spatial_fusion=False)).save_pretrained(tmp_path / "m")
        argv += ["--vlm2", str(tmp_path / "m")]
    assert _run(argv) == 0
    table = capsys.readouterr().out
    assert "| **overall** |" in table
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert _run(["score", str(tmp_path / "out" / "results.jsonl")]) == 0
    assert capsys.readouterr().out.strip() == table.strip()


@pytest.mark.parametrize("sample", [True, False])
def test_demo_streams_the_memory_exactly(monkeypatch, tmp_path, sample):
    if not sample:  # the synthetic path, as on a machine without the sample data
        monkeypatch.setattr("videostate.vlm.demo.RGBD_SAMPLE", tmp_path / "absent")
    rows = vlm_streaming_demo(frames=3, chunk=2)
    assert [r["mode"] for r in rows] == ["offline", "chunks of 2", "frame by frame"]
    assert all(r["max_abs_diff"] < 1e-5 for r in rows)
    assert rows[1]["memory_bytes"] == rows[2]["memory_bytes"] > 0


def test_random_llava_kinds():
    assert random_llava("nextvideo").config.model_type == "llava_next_video"
    with pytest.raises(ValueError, match="kind must be"):
        random_llava("qwen")
    model = VLM2ForConditionalGeneration(random_llava(), tiny_vlm2_config(memory_feature_dim=64))
    assert torch.isfinite(model.encode_video(torch.rand(1, 2, 3, 64, 64), _spatial())).all()


def _spatial():
    from videostate.vlm import SpatialFeatures

    return SpatialFeatures(torch.randn(1, 2, 1, 24), torch.randn(1, 2, 64, 24), torch.randn(1, 2, 64, 64, 3))
