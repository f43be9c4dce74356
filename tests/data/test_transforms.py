import pytest
import torch
import torch.nn.functional as F

from videostate.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ResizeToMultiple,
    pad_to_multiple,
    size_to_multiple,
    unpad,
)


def _clip(seed=0, shape=(4, 3, 20, 30)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_random_transforms_are_the_same_on_every_frame():
    clip = _clip()
    same = clip[:1].expand(4, -1, -1, -1).clone()  # four identical frames stay identical
    t = Compose([RandomCrop((11, 13)), RandomHorizontalFlip(0.5), ColorJitter(0.4, 0.4, 0.4)])
    for seed in range(5):
        out = t(same, torch.Generator().manual_seed(seed))
        assert out.shape == (4, 3, 11, 13)
        assert all(torch.equal(out[0], out[i]) for i in range(4))
    # same generator seed -> same result; frames differ from each other as the input frames do
    a = t(clip, torch.Generator().manual_seed(1))
    b = t(clip, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_crop_window_and_flip_match_slicing():
    clip = _clip()
    g = torch.Generator().manual_seed(7)
    top = int(torch.randint(20 - 8 + 1, (), generator=g))
    left = int(torch.randint(30 - 9 + 1, (), generator=g))
    out = RandomCrop((8, 9))(clip, torch.Generator().manual_seed(7))
    assert torch.equal(out, clip[..., top : top + 8, left : left + 9])
    assert torch.equal(CenterCrop(10)(clip), clip[..., 5:15, 10:20])
    assert torch.equal(RandomHorizontalFlip(1.0)(clip), clip.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(clip), clip)
    with pytest.raises(ValueError, match=r"exceeds the clip's frames \(20, 30\)"):
        RandomCrop(25)(clip)


def test_color_jitter_formula():
    clip = _clip(2).double()
    gen = torch.Generator().manual_seed(5)
    b, c, s = (1 + 0.3 * (2 * torch.rand((), generator=gen).item() - 1) for _ in range(3))
    out = ColorJitter(0.3, 0.3, 0.3)(clip, torch.Generator().manual_seed(5))
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    x = clip * b
    for f in range(x.shape[0]):
        grey = (x[f] * w[:, None, None]).sum(0)
        x[f] = grey.mean() + (x[f] - grey.mean()) * c
        grey = (x[f] * w[:, None, None]).sum(0)
        x[f] = grey + (x[f] - grey) * s
    torch.testing.assert_close(out, x.clamp(0, 1))


def test_resize_to_multiple_and_resize():
    assert size_to_multiple(480, 640, 14) == (476, 644)
    assert size_to_multiple(480, 640, 14, short_side=518) == (518, 686)
    assert size_to_multiple(5, 7, 16) == (16, 16)
    out = ResizeToMultiple(14, short_side=28)(_clip())
    assert out.shape == (4, 3, 28, 42)
    up = Resize((40, 60))(_clip())
    torch.testing.assert_close(up, F.interpolate(_clip(), size=(40, 60), mode="bilinear", align_corners=False))
    assert Resize(10)(_clip()).shape == (4, 3, 10, 15)


def test_pad_to_multiple_round_trips_and_replicates():
    x = _clip(3, shape=(2, 4, 3, 17, 30))
    padded, pads = pad_to_multiple(x, 16)
    assert padded.shape == (2, 4, 3, 32, 32) and pads == (1, 1, 7, 8)
    assert torch.equal(unpad(padded, pads), x)
    assert torch.equal(padded[..., 0, 1:-1], x[..., 0, :].expand_as(padded[..., 0, 1:-1]))
    same, none = pad_to_multiple(x[..., :16, :16], 16)
    assert none == (0, 0, 0, 0) and same.shape[-2:] == (16, 16)


def test_normalize():
    clip = _clip()
    out = Normalize()(clip)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(out[2], (clip[2] - mean) / std)
    with pytest.raises(ValueError, match="std > 0"):
        Normalize(std=(1, 0, 1))
    with pytest.raises(ValueError, match=r"\(frames, 3, height, width\)"):
        Normalize()(clip[0])
