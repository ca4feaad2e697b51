"""Issue 20's cross-frame mixing (ClassMix, copy-paste of named classes) and the boundary-aware
loss term, against hand-computed values; and both through a real training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddrnet.config import ConfigError, load_config
from ddrnet.data.mixing import ClassMix, class_ids, mix_batch, paste_mask
from ddrnet.engine.config import Config
from ddrnet.engine.losses import CrossEntropy, OhemCrossEntropy, boundary_mask
from ddrnet.engine.train import train

from helpers import straight_and_resumed, tiny_config

VOID = 255


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1x4 'images' (one channel, pixel value = 10 * image + column) and their labels."""
    images = torch.tensor([[[[0, 1, 2, 3]]], [[[10, 11, 12, 13]]]], dtype=torch.uint8)
    labels = torch.tensor([[[0, 0, 1, 1]], [[2, 1, VOID, 2]]])
    return images, labels


def test_copy_paste_moves_the_named_classes_pixels_and_labels_together() -> None:
    images, labels = _batch()
    mixed_images, mixed_labels = mix_batch(images, labels, 1.0, (2,), VOID)
    # Image 0 takes image 1's class-2 pixels (columns 0 and 3); image 1 takes image 0's
    # class-2 pixels: there are none, so it is unchanged. The inputs are left as they were.
    assert mixed_images.flatten().tolist() == [10, 1, 2, 13, 10, 11, 12, 13]
    assert mixed_labels.flatten().tolist() == [2, 0, 1, 2, 2, 1, VOID, 2]
    assert torch.equal(images, _batch()[0]) and torch.equal(labels, _batch()[1])
    # Sources are the batch as drawn: image 1 receives image 0's class 1 (columns 2, 3),
    # not what image 0 became.
    _, both = mix_batch(images, labels, 1.0, (1, 2), VOID)
    assert both.flatten().tolist() == [2, 1, 1, 2, 2, 1, 1, 1]


def test_probability_zero_changes_nothing_and_void_is_never_pasted() -> None:
    images, labels = _batch()
    same_images, same_labels = mix_batch(images, labels, 0.0, None, VOID)
    assert torch.equal(same_images, images) and torch.equal(same_labels, labels)
    assert not paste_mask(torch.full((3, 3), VOID), None, VOID).any()


def test_classmix_pastes_a_random_half_of_the_classes_present() -> None:
    torch.manual_seed(0)
    label = torch.tensor([[0, 1, 2], [VOID, 4, 4]])  # four classes present
    for _ in range(20):
        mask = paste_mask(label, None, VOID)
        pasted = set(label[mask].tolist())
        assert len(pasted) == 2 and VOID not in pasted  # ceil(4 / 2)
        assert torch.equal(mask, torch.isin(label, torch.tensor(sorted(pasted))))
    three = torch.tensor([[0, 1, 2]])
    assert all(int(paste_mask(three, None, VOID).sum()) == 2 for _ in range(10))  # ceil(3 / 2)


def test_classmix_collate_stacks_like_default_collate() -> None:
    images, labels = _batch()
    samples = [(images[i], labels[i]) for i in range(2)]
    stacked_images, stacked_labels = ClassMix(1.0, (0,), VOID)(samples)
    assert stacked_images.shape == (2, 1, 1, 4) and stacked_labels.shape == (2, 1, 4)
    assert stacked_labels.flatten().tolist() == [0, 0, 1, 1, 0, 0, VOID, 2]


def test_class_names_resolve_case_insensitively_and_unknown_ones_are_named() -> None:
    names = ("Sky", "Building", "Pole")
    assert class_ids(["pole", "Sky", "POLE"], names, "data.class_mix_classes") == (0, 2)
    with pytest.raises(ValueError, match=r"data.class_mix_classes: 'Tree' not among"):
        class_ids(["Tree"], names, "data.class_mix_classes")


def test_boundary_mask_matches_a_hand_drawn_label() -> None:
    target = torch.tensor([[[0, 0, 1, 1, VOID, 1, 1]]])
    # Radius 1: a pixel is near a boundary when a neighbour holds another labelled class;
    # class 1 beside void (columns 3 and 5) is no boundary, and void itself never is.
    expected = [False, True, True, False, False, False, False]
    assert boundary_mask(target, 1, VOID).flatten().tolist() == expected
    wide = [True, True, True, True, False, False, False]  # radius 2: columns 0-3 see 0 and 1
    assert boundary_mask(target, 2, VOID).flatten().tolist() == wide
    square = torch.tensor([[[0, 0, 0], [0, 0, 0], [0, 0, 3]]])
    assert boundary_mask(square, 1, VOID).sum() == 4  # the 2x2 corner around the 3


def test_boundary_weight_scales_the_losses_of_boundary_pixels() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 0.5]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, VOID]]])
    losses = [
        math.log(1 + math.exp(-2.0)),  # pixel 0, class 0
        math.log(1 + math.exp(-1.0)),  # pixel 1, class 1
    ]
    # Both labelled pixels touch the other class: weight 1 + 2 = 3 each.
    plain = CrossEntropy(VOID)(logits, target)
    assert float(plain) == pytest.approx(sum(losses) / 2, rel=1e-6)
    weighted = CrossEntropy(VOID, boundary_weight=2.0, boundary_radius=1)(logits, target)
    assert float(weighted) == pytest.approx(3 * sum(losses) / 6, rel=1e-6)  # a weighted mean
    # OHEM (every pixel is hard at threshold 1): the weighted losses over the kept count.
    ohem = OhemCrossEntropy(1.0, 1, VOID, boundary_weight=2.0, boundary_radius=1)
    assert float(ohem(logits, target)) == pytest.approx(3 * sum(losses) / 2, rel=1e-6)
    # Off by default: the same numbers as before the option existed.
    assert float(OhemCrossEntropy(1.0, 1, VOID)(logits, target)) == pytest.approx(
        float(F.cross_entropy(logits, target, ignore_index=VOID)), rel=1e-6
    )


def test_options_are_config_keys_and_bad_values_name_the_key() -> None:
    config = load_config(
        Config, None,
        ["data.class_mix=0.5", "data.class_mix_classes=[Pole, Pedestrian]",
         "loss.boundary_weight=1.0", "loss.boundary_width=4"],
    )  # fmt: skip
    assert config.data.class_mix == 0.5 and config.data.class_mix_classes == ["Pole", "Pedestrian"]
    assert config.loss.boundary_weight == 1.0 and config.loss.boundary_width == 4
    defaults = Config()
    assert defaults.data.class_mix is None and defaults.loss.boundary_weight is None
    for override, key in [
        ("data.class_mix=0", "data: class_mix"),
        ("data.class_mix=1.5", "data: class_mix"),
        ("data.class_mix_classes=[Pole]", "data: class_mix_classes"),  # without class_mix
        ("loss.boundary_weight=0", "loss: boundary_weight"),
        ("loss.boundary_width=0", "loss: boundary_width"),
    ]:
        with pytest.raises(ConfigError, match=f"{key} must be"):
            load_config(Config, None, [override])


def test_training_with_classmix_and_boundary_term_runs_and_resumes_exactly(
    camvid_root, tmp_path
) -> None:
    extra = ["data.class_mix=1.0", "loss.boundary_weight=1.0"]
    straight, split = straight_and_resumed(camvid_root, tmp_path, epochs=2, extra=extra)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    plain = tmp_path / "plain"
    train(tiny_config(camvid_root, plain, epochs=1))
    mixed = tmp_path / "mixed"
    train(tiny_config(camvid_root, mixed, epochs=1, extra=extra))
    assert (
        torch.load(plain / "last.pt", weights_only=True)["history"][0]["train_loss"]
        != (torch.load(mixed / "last.pt", weights_only=True)["history"][0]["train_loss"])
    )


def test_unknown_class_to_paste_is_one_line_naming_the_key(camvid_root, tmp_path) -> None:
    extra = ["data.class_mix=0.5", "data.class_mix_classes=[Pole, Lamppost]"]
    with pytest.raises(ConfigError, match=r"data.class_mix_classes: 'Lamppost' not among"):
        train(tiny_config(camvid_root, tmp_path / "run", epochs=1, extra=extra))
    assert not (tmp_path / "run").exists()
