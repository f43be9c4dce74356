import dataclasses
from types import SimpleNamespace

import pytest
import torch

from tests.backbones.helpers import TINY
from videostate.backbones.videomamba import VideoMambaConfig, VideoMambaEncoder, build_videomamba

SEED_FIELDS = dict(
    TINY,
    drop_path_rate=0.1,
    ssm_cfg={"d_state": 8, "use_fast_path": False},
    norm_epsilon=1e-6,
    fused_add_norm=False,
    rms_norm=True,
    residual_in_fp32=True,
    bimamba=True,
    pool_type="avg",
    kernel_size=2,
    use_checkpoint=True,
    checkpoint_num=1,
    pretrained=None,
    add_pool_norm=True,
    keep_temporal=True,
)


def check_model(model):
    assert isinstance(model, VideoMambaEncoder)
    assert model.pool_type == "avg" and model.keep_temporal and model.patch_embed.tubelet_size == 2
    assert model.layers[0].mixer.d_state == 8 and not model.layers[0].mixer.use_fast_path
    assert isinstance(model.layers[1].drop_path, torch.nn.Identity) and model.drop_path.drop_prob == 0.1
    assert model.layers[0].norm.eps == 1e-6 and not model.fused_add_norm
    assert model.use_checkpoint and model.checkpoint_num == 1
    assert model.temporal_pos_embedding.shape == (1, 2, 16)


@pytest.mark.parametrize(
    "make",
    [
        lambda f: SimpleNamespace(vision_encoder=SimpleNamespace(**f)),
        lambda f: {"vision_encoder": f},
        lambda f: f,
        lambda f: VideoMambaConfig(**f),
        lambda f: SimpleNamespace(vision_encoder=VideoMambaConfig(**f)),
    ],
    ids=["namespace", "dict", "section-dict", "dataclass", "namespace-of-dataclass"],
)
def test_build_from_every_config_form(make):
    check_model(build_videomamba(make(SEED_FIELDS)))


def test_config_errors():
    fields = {k: v for k, v in SEED_FIELDS.items() if k != "channels"}
    with pytest.raises(ValueError, match=r"channels is required.*in_chans. is not read"):
        build_videomamba({**fields, "in_chans": 3})
    with pytest.raises(ValueError, match=r"unknown vision_encoder fields \['bimamba_type'\]"):
        build_videomamba({**SEED_FIELDS, "bimamba_type": "v2"})
    with pytest.raises(ValueError, match=r"ckpt_num_frame is required when vision_encoder.pretrained"):
        build_videomamba({**SEED_FIELDS, "pretrained": "weights.pth"})
    with pytest.raises(ValueError, match="pool_type must be one of"):
        VideoMambaConfig(channels=3, pool_type="cls_cat_avg")
    with pytest.raises(TypeError, match="SimpleNamespace, a mapping or a dataclass"):
        build_videomamba(["channels", 3])


def test_model_kwargs_cover_the_encoder_constructor():
    fields = {f.name for f in dataclasses.fields(VideoMambaConfig)}
    kwargs = VideoMambaConfig(channels=3).model_kwargs()
    assert set(kwargs) == fields - {"pretrained", "ckpt_num_frame"}
    assert VideoMambaEncoder(**{**kwargs, **TINY}).config["channels"] == 3
