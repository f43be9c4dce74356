from videostate.backbones.videomamba_demo import load_clip, videomamba_streaming_demo


def test_demo_streams_agree_where_they_must():
    rows = videomamba_streaming_demo(frames=3, img_size=32, chunk_frames=1)
    by_mode = {r["mode"]: r for r in rows}
    assert list(by_mode) == [
        "bi: offline",
        "bi: whole clip",
        "bi: 1-frame chunks",
        "fwd: offline",
        "fwd: 1-frame chunks",
    ]
    assert by_mode["bi: whole clip"]["max_abs_diff"] < 1e-5
    assert by_mode["fwd: 1-frame chunks"]["max_abs_diff"] < 1e-4
    assert by_mode["bi: 1-frame chunks"]["max_abs_diff"] > 1e-3  # the backward scan sees one frame only
    assert by_mode["fwd: 1-frame chunks"]["state_bytes"] == 24 * (384 * 4 + 384 * 16) * 4  # Ti, float32
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_synthetic_clip_when_no_video(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no sample data relative to here
    clip, source = load_clip(None, frames=2, img_size=16, seed=0)
    assert source == "synthetic" and clip.shape == (1, 3, 2, 16, 16)
    assert clip.std() > 0.1
