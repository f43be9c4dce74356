import pytest
import torch

from videostate.training import TrainLogger


def test_logger_writes_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TrainLogger(tmp_path, total_steps=3, progress=False)
    logger.scalars(1, {"train/loss": 0.5})
    logger.images(1, "train/pred", torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        logger.images(1, "bad", torch.rand(3, 8, 8))
    logger.close()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 0.5)]
    assert len(events.Images("train/pred")) == 1


def test_disabled_logger_writes_nothing(tmp_path, capsys):
    logger = TrainLogger(tmp_path / "tb", total_steps=3, enabled=False)
    logger.scalars(1, {"train/loss": 0.5})
    logger.images(1, "x", torch.rand(1, 3, 4, 4))
    logger.advance()
    logger.close()
    assert not (tmp_path / "tb").exists()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
