"""The README's depth example (kept identical to the block in the README's depth section)."""

EXAMPLE = """
import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from videostate.depth import DepthAnythingTeacher, VideoMambaDepth, VideoMambaDepthConfig
from videostate.depth.losses import midas_se_loss, temporal_gradient_loss

# A tiny random Depth Anything stands in for depth-anything/Depth-Anything-V2-Small-hf.
backbone = Dinov2Config(image_size=56, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                             neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
DepthAnythingForDepthEstimation(config).save_pretrained("tiny-depth-anything")

teacher = DepthAnythingTeacher.from_pretrained("tiny-depth-anything", input_size=56)  # frozen
model = VideoMambaDepth(teacher, VideoMambaDepthConfig(d_state=8)).eval()

clip = torch.rand(1, 8, 3, 60, 80)  # (batch, frames, 3, height, width), RGB in [0, 1]
with torch.no_grad():
    depth = model(clip)  # (1, 8, 1, 60, 80): offline over the clip
    teacher_depth = torch.stack([teacher.predict_depth(clip[:, t]) for t in range(8)], dim=1)
    print("fresh student == teacher:", torch.allclose(depth, teacher_depth, atol=1e-5))

    states, frames = model.init_states(1), []
    for t in range(8):  # online, frame by frame, bounded memory
        frame_depth, states = model.step(clip[:, t], states)
        frames.append(frame_depth)
    print("streamed == offline:", torch.allclose(torch.stack(frames, dim=1), depth, atol=1e-5))

# Distillation losses (disparity space): MiDaS scale-and-shift-invariant + temporal gradient matching.
loss = midas_se_loss(depth[:, :, 0], teacher_depth[:, :, 0]) + 10 * temporal_gradient_loss(depth, teacher_depth)
model.save_pretrained("tiny-videomamba-depth")  # config.json + model.safetensors
reloaded = VideoMambaDepth.from_pretrained("tiny-videomamba-depth")
"""


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(EXAMPLE, "README depth example", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "fresh student == teacher: True" in out and "streamed == offline: True" in out
