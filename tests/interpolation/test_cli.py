import argparse

import torch

from videostate.interpolation import HybridVFI
from videostate.interpolation.cli import add_bench_arguments, add_train_arguments, train_config_from_args

from .synthetic import write_vimeo
from .tiny import tiny_config


def parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_train_flags_are_the_seeds():
    args = parse(
        add_train_arguments,
        ["--phase", "2", "--data_path", "vimeo", "--no-use_ecab", "--freeze_backbone", "50", "--resume", "p1_best"],
    )
    config = train_config_from_args(args)
    assert (config.phase, config.use_ecab, config.freeze_backbone, config.batch_size) == (2, False, 50, 8)
    assert config.model_config().use_ecab is False
    assert config.data_config().resume.endswith("p1_best")


def test_bench_command_prints_model_and_frame_averaging(tmp_path, capsys):
    root = write_vimeo(tmp_path / "vimeo", count=0, size=16, test_count=1)
    torch.manual_seed(0)
    HybridVFI(tiny_config()).save_pretrained(tmp_path / "m")
    args = parse(add_bench_arguments, ["vimeo90k", str(root), "--model", str(tmp_path / "m"), "--device", "cpu"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "model" in lines[0] and "frame averaging" in lines[1] and "psnr" in lines[0]
