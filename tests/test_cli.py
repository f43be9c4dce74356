import json

import numpy as np
import pytest
import yaml

from tests.data.synthetic import write_video
from videostate.cli import COMMANDS, build_parser, main, register_command
from videostate.data.video import VideoReader
from videostate.metrics import psnr, ssim, ssim_matlab

TASK = "tests.training.tiny_task:TASK"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and {"demo", "train", "info", "metrics"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: videostate {name}") and COMMANDS[name].help in out


def test_unknown_command_and_duplicate_registration(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["nope"])
    assert exit_.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"already registered"):
        register_command("train", "again", "videostate.training.cli:add_arguments")
    with pytest.raises(ValueError, match=r"package.module:function"):
        register_command("other", "x", "no_colon")
    with pytest.raises(SystemExit):  # a command's options load only when that command is chosen
        build_parser().parse_args(["train", "r.yaml", "--print-config"])
    assert "unrecognized arguments: r.yaml --print-config" in capsys.readouterr().err


def _recipe(tmp_path, **sections):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"task": TASK, "trainer": {"batch_size": 2, "progress": False}, **sections}))
    return str(path)


def test_train_print_config_applies_overrides(tmp_path, capsys):
    recipe = _recipe(tmp_path, optim={"lr": 0.1})
    assert (
        main(
            [
                "train",
                recipe,
                "--set",
                "optim.lr=1e-4",
                "trainer.max_steps=7",
                "--set",
                "model.seed=3",
                "--print-config",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-4 and printed["trainer"]["max_steps"] == 7 and printed["model"] == {"seed": 3}
    assert printed["task"] == TASK and printed["data"] == {"num_sequences": 8, "length": 5}


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", r"unknown key(s) ['lrr'] in optim"),
        ("trainer.max_step=1", r"unknown key(s) ['max_step'] in trainer"),
        ("optim.schedule=linear", "optim.schedule must be one of ['cosine', 'poly', 'constant']"),
        ("optim.lr", "override must look like dotted.key=value"),
    ],
)
def test_train_config_errors_exit_2_with_the_key(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", _recipe(tmp_path), "--set", override, "--print-config"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_train_runs_the_recipe_and_resumes(tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, trainer={"batch_size": 2, "progress": False, "max_steps": 4, "output_dir": str(out)})
    assert main(["train", recipe, "--steps", "2"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert main(["train", recipe]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    assert any((out / "tb").iterdir())


def test_info_reports_the_video(tmp_path, capsys):
    video = write_video(tmp_path / "v.mp4", num_frames=9, audio=True)
    assert main(["info", str(video), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (9, 48, 32, 25.0)
    assert info["audio"] == {"codec": "aac", "sample_rate": 16000}
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(tmp_path / "missing.mp4")])
    assert exit_.value.code == 2 and "missing.mp4" in capsys.readouterr().err


def test_metrics_between_two_videos(tmp_path, capsys):
    a = write_video(tmp_path / "a.mp4", num_frames=3)
    frames = [f for f in VideoReader(a)]
    rng = np.random.default_rng(0)
    b = tmp_path / "b"
    b.mkdir()
    import cv2

    for i, f in enumerate(frames):
        noisy = np.clip(f.astype(int) + rng.integers(-20, 21, f.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(b / f"{i}.png"), noisy[..., ::-1])
    assert main(["metrics", str(a), str(b), "--per-frame"]) == 0
    result = json.loads(capsys.readouterr().out)
    pred, target = (
        VideoReader(a, format="tensor").read_clip(range(3)),
        VideoReader(b, format="tensor").read_clip(range(3)),
    )
    assert result["mean"]["psnr"] == pytest.approx(psnr(pred, target).item(), abs=1e-9)
    assert result["mean"]["ssim"] == pytest.approx(ssim(pred, target).item(), abs=1e-9)
    assert result["mean"]["ssim_matlab"] == pytest.approx(ssim_matlab(pred, target).item(), abs=1e-9)
    assert [r["frame"] for r in result["per_frame"]] == [0, 1, 2]
    short = write_video(tmp_path / "short.mp4", num_frames=2)
    with pytest.raises(SystemExit):
        main(["metrics", str(short), str(b)])
    assert "must match in frame count and size" in capsys.readouterr().err


def test_demo_command_parses_into_run_demo():
    from videostate.cli import run_demo

    args = build_parser("demo").parse_args(["demo", "--length", "12", "--chunk", "5", "--layers", "2"])
    assert args.func is run_demo and (args.length, args.chunk, args.layers, args.dim) == (12, 5, 2, 128)
