import cv2
import numpy as np
import pytest
import torch

from videostate.depth.flow import clip_static_masks, forward_backward_error, static_mask


def textured(rng, h, w):
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (5, 5), 1.5)


def camera_pan_with_moving_object():
    rng = np.random.default_rng(0)
    big = textured(rng, 136, 168)
    f0 = big[20:116, 20:148].copy()
    f1 = big[22:118, 17:145].copy()  # the camera pans: flow (+3, -2) everywhere
    obj = textured(rng, 24, 24)
    f0[30:54, 40:64] = obj
    f1[36:60, 48:72] = obj  # an object moving by (+8, +6) on its own
    return f0, f1


def test_static_mask_removes_camera_motion_and_flags_the_moving_object():
    f0, f1 = camera_pan_with_moving_object()
    mask = static_mask(f0, f1)
    assert mask.shape == f0.shape[:2] and mask.dtype == bool
    assert mask[34:50, 44:60].mean() < 0.05  # the moving object
    assert mask[70:90, 90:120].mean() > 0.95 and mask[5:25, 5:25].mean() > 0.95  # background under a panning camera


def test_forward_backward_error():
    h, w = 6, 8
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = 2.0
    backward = -forward
    error = forward_backward_error(forward, backward)
    assert np.all(error[:, : w - 2] < 1e-6) and np.all(np.isinf(error[:, w - 1 :]))
    error = forward_backward_error(forward, np.zeros_like(forward))
    np.testing.assert_allclose(error[:, : w - 2], 2.0)


def test_clip_static_masks_shapes_and_errors():
    f0, f1 = camera_pan_with_moving_object()
    clip = torch.from_numpy(np.stack([f0, f1, f1])).permute(0, 3, 1, 2).float() / 255
    masks = clip_static_masks(clip, preset="fast")
    assert masks.shape == (2, 96, 128) and masks.dtype == torch.bool
    assert masks[1].float().mean() > 0.9  # identical frames: static
    with pytest.raises(ValueError, match="uint8 RGB"):
        static_mask(f0.astype(np.float32), f1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        clip_static_masks(clip[0])
