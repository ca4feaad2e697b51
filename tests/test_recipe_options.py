"""The recipe options of issue 20: balanced crops, rare-class frame sampling, aspect change,
rotation, gamma, blur and noise. Each is checked against hand-computed results, and all of
them off must reproduce the transform as it was before they existed."""

from __future__ import annotations

import math
import re

import cv2
import numpy as np
import pytest

from ddrnet.config import ConfigError, load_config
from ddrnet.data.sampling import (
    WeightedFrameSampler,
    frame_class_pixels,
    rare_class_weights,
)
from ddrnet.data.transforms import (
    CAT_MAX_TRIES,
    TrainTransform,
    crop_matrix,
    dominant_fraction,
    photometric_distortion,
    photometric_extras,
)
from ddrnet.engine.config import Config


class Draws:
    """A stand-in for numpy's Generator: ``uniform`` and ``integers`` return the listed values
    in turn, ``random`` returns ``coin`` (0.0: every probability-0.5 option fires)."""

    def __init__(self, uniform=(), integers=(), coin: float = 1.0) -> None:
        self.uniforms, self.ints, self.coin = list(uniform), list(integers), coin

    def uniform(self, low: float, high: float) -> float:
        return self.uniforms.pop(0)

    def integers(self, low: int, high: int) -> int:
        return self.ints.pop(0)

    def random(self) -> float:
        return self.coin


def reference_transform(image, label, rng, crop=(352, 480), scale_range=(0.5, 2.0)):
    """TrainTransform as it was before the options (commit 17ebb56), flip and photometric on."""
    height, width = image.shape[:2]
    crop_h, crop_w = crop
    factor = rng.uniform(*scale_range)
    scaled_h, scaled_w = max(1, round(height * factor)), max(1, round(width * factor))
    scale_y, scale_x = scaled_h / height, scaled_w / width
    top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
    left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
    flip = rng.random() < 0.5
    tx, ty = 0.5 * scale_x - 0.5 - left, 0.5 * scale_y - 0.5 - top
    if flip:
        matrix = np.array([[-scale_x, 0, crop_w - 1 - tx], [0, scale_y, ty]], np.float64)
    else:
        matrix = np.array([[scale_x, 0, tx], [0, scale_y, ty]], np.float64)
    image = cv2.warpAffine(image, matrix, (crop_w, crop_h), borderMode=cv2.BORDER_REPLICATE)
    label = cv2.warpAffine(
        label, matrix, (crop_w, crop_h), flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT, borderValue=255,
    )  # fmt: skip
    return photometric_distortion(image, rng), label


def test_options_off_give_todays_output_byte_for_byte(camvid_sample) -> None:
    image, label = camvid_sample
    transform = TrainTransform((352, 480))
    for seed in range(6):
        rng, reference_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        out_image, out_label = transform(image, label, rng)
        ref_image, ref_label = reference_transform(image, label, reference_rng)
        assert np.array_equal(out_image, ref_image) and np.array_equal(out_label, ref_label)
        # The same number of draws: what follows in the stream is unchanged too.
        assert rng.bit_generator.state == reference_rng.bit_generator.state


def balanced_only_on_the_right() -> np.ndarray:
    """100x200 label: columns 0-99 class 0, columns 100-199 alternate classes 1 and 2. A
    100x100 crop at ``left`` has dominant fraction ``(100 - left) / 100`` for left <= 66, so
    it passes a ratio of 0.75 exactly when left >= 25."""
    label = np.zeros((100, 200), np.uint8)
    label[:, 100:] = 1 + np.arange(100) % 2
    return label


def test_cat_max_ratio_redraws_until_no_class_dominates() -> None:
    label = balanced_only_on_the_right()
    image = np.zeros((100, 200, 3), np.uint8)
    balanced = TrainTransform((100, 100), (1.0, 1.0), photometric=False, cat_max_ratio=0.75)
    plain = TrainTransform((100, 100), (1.0, 1.0), photometric=False)
    fractions = [
        dominant_fraction(balanced(image, label, np.random.default_rng(s))[1]) for s in range(40)
    ]
    assert max(fractions) <= 0.75
    plain_fractions = [
        dominant_fraction(plain(image, label, np.random.default_rng(s))[1]) for s in range(40)
    ]
    assert max(plain_fractions) > 0.75  # without the option some crops are dominated


def test_cat_max_ratio_keeps_the_first_crop_that_passes_and_the_best_of_failures() -> None:
    label = balanced_only_on_the_right()
    image = np.zeros((100, 200, 3), np.uint8)
    transform = TrainTransform((100, 100), (1.0, 1.0), photometric=False, cat_max_ratio=0.75)
    # Crop positions (top, left): 0,0 (fraction 1.0), then 0,40 (0.6) passes; 0,90 unused.
    draws = Draws([1.0], [0, 0, 0, 40, 0, 90])
    _, out = transform.scale_crop_flip(image, label, draws)
    assert np.array_equal(out, label[:, 40:140]) and draws.ints == [0, 90]
    # No crop passes 0.55 among lefts 0, 10, 30, 20, ...: the 30 (fraction 0.7) is kept.
    strict = TrainTransform((100, 100), (1.0, 1.0), photometric=False, cat_max_ratio=0.55)
    lefts = [0, 10, 30, 20] + [5] * (CAT_MAX_TRIES - 4)
    draws = Draws([1.0], [v for left in lefts for v in (0, left)])
    _, out = strict.scale_crop_flip(image, label, draws)
    assert np.array_equal(out, label[:, 30:130]) and draws.ints == []


def test_rotation_by_90_degrees_moves_pixels_where_computed_by_hand() -> None:
    label = np.arange(9, dtype=np.uint8).reshape(3, 3)  # asymmetric: every value once
    # Counter-clockwise as displayed, about the centre: (x, y) -> (y, 2 - x), np.rot90.
    matrix = crop_matrix((1.0, 1.0), (0, 0), 3, flip=False, angle=90.0, pivot=(1.0, 1.0))
    out = cv2.warpAffine(label, matrix, (3, 3), flags=cv2.INTER_NEAREST)
    assert out.tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    # Through the transform (scale 1, angle drawn as 90, flip on): rotated, then mirrored.
    transform = TrainTransform((3, 3), (1.0, 1.0), photometric=False, rotate_degrees=90)
    image = np.repeat(label[..., None] * 20, 3, axis=2)
    out_image, out = transform.scale_crop_flip(image, label, Draws([1.0, 90.0], [0, 0], 0.0))
    assert out.tolist() == [[8, 5, 2], [7, 4, 1], [6, 3, 0]]
    assert np.array_equal(out_image[..., 0], out * 20)


def test_rotation_pads_the_label_with_ignore() -> None:
    label = np.zeros((41, 41), np.uint8)
    transform = TrainTransform((41, 41), (1.0, 1.0), photometric=False, rotate_degrees=45)
    _, out = transform.scale_crop_flip(
        np.zeros((41, 41, 3), np.uint8), label, Draws([1.0, 45.0], [0, 0])
    )
    # The corners of the square turned by 45 degrees lie outside the original: ignore there.
    assert (out[:3, :3] == 255).all() and (out[-3:, -3:] == 255).all()
    assert (out[18:23, 18:23] == 0).all() and out[20, 0] == 0  # the diagonal reaches the edge


def test_aspect_change_scales_width_and_height_by_the_drawn_stretch(camvid_sample) -> None:
    image, label = camvid_sample
    transform = TrainTransform((352, 480), (2.0, 2.0), photometric=False, aspect_range=(0.25, 4.0))
    # Scale 2 and the log-uniform draw log(4): the width is scaled by 2 * sqrt(4) = 4, the
    # height by 2 / sqrt(4) = 1. (Upscaling only: at exact halving nearest-neighbour ties
    # break differently in cv2.resize and warpAffine.)
    draws = Draws([2.0, math.log(4.0)], [4, 100])
    _, out = transform.scale_crop_flip(image, label, draws)
    expected = cv2.resize(label, (1920, 360), interpolation=cv2.INTER_NEAREST)[4:356, 100:580]
    assert np.array_equal(out, expected)


def test_gamma_blur_and_noise_do_what_they_say() -> None:
    image = np.full((64, 64, 3), 64, np.uint8)
    image[:, 32:] = 200
    gamma = photometric_extras(image, Draws([math.log(2.0)], coin=0.0), gamma_range=(0.5, 2.0))
    assert gamma[0, 0, 0] == round(255 * (64 / 255) ** 2)  # 16
    blurred = photometric_extras(image, Draws([1.5], coin=0.0), blur_sigma=2.0)
    assert np.array_equal(blurred, cv2.GaussianBlur(image, (0, 0), 1.5))
    noisy = photometric_extras(image, Draws([6.0], [7], coin=0.0), noise_std=8.0)
    difference = noisy.astype(float) - image
    assert abs(difference.mean()) < 0.3 and all(5.5 < s < 6.5 for s in difference.std((0, 1)))
    # Off, or on but not drawn (coin >= 0.5): the image and the stream are untouched.
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert photometric_extras(image, rng) is image and rng.bit_generator.state == state
    assert photometric_extras(image, Draws(coin=0.9), (0.5, 2.0), 2.0, 8.0) is image


class TinyLabels:
    """Three 2x2 labels: [3 of class 0, 1 of class 1], [4 of class 0], [all ignore]."""

    labels = [np.array([[0, 0], [0, 1]]), np.zeros((2, 2)), np.full((2, 2), 255)]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        return None, self.labels[index].astype(np.uint8)


def test_rare_class_weights_equal_hand_computed_values() -> None:
    counts = frame_class_pixels(TinyLabels(), num_classes=2)
    assert counts.tolist() == [[3, 1], [4, 0], [0, 0]]
    # f = (7/8, 1/8); rarity f^-1 = (8/7, 8); frame 0: 3/4 * 8/7 + 1/4 * 8 = 20/7, frame 1:
    # 8/7, frame 2: 0; mean 4/3, so normalised (15/7, 6/7, 0).
    assert np.allclose(rare_class_weights(counts, 1.0), [15 / 7, 6 / 7, 0.0])
    # power 0.5: rarity (sqrt(8/7), sqrt(8)).
    raw = np.array([0.75 * math.sqrt(8 / 7) + 0.25 * math.sqrt(8), math.sqrt(8 / 7), 0.0])
    assert np.allclose(rare_class_weights(counts, 0.5), raw / raw.mean())
    assert np.allclose(rare_class_weights(counts, 0.0), [1.5, 1.5, 0.0])


def test_weighted_sampler_follows_the_weights_and_splits_across_processes() -> None:
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    single = WeightedFrameSampler(weights, seed=5)
    single.set_epoch(2)
    drawn = list(single)
    assert len(drawn) == len(single) == 4 and set(drawn) <= {1, 2}
    ranks = [WeightedFrameSampler(weights, 2, rank, seed=5) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    parts = [list(sampler) for sampler in ranks]
    assert len(ranks[0]) == 2 and [i for pair in zip(*parts) for i in pair] == drawn
    many = WeightedFrameSampler(np.tile(weights, 500), seed=0)
    frames = np.array(list(many)) % 4
    assert 0.70 < np.mean(frames == 2) < 0.80  # 3 / (1 + 3)


def test_options_are_config_overrides_and_bad_values_name_the_key() -> None:
    config = load_config(
        Config, None,
        ["data.cat_max_ratio=0.75", "data.rare_class_sampling=1", "data.aspect_range=[0.8, 1.25]",
         "data.rotate_degrees=10", "data.gamma_range=[0.7, 1.5]", "data.blur_sigma=1.5",
         "data.noise_std=8"],
    )  # fmt: skip
    assert config.data.cat_max_ratio == 0.75 and config.data.aspect_range == (0.8, 1.25)
    defaults = Config().data
    assert all(
        getattr(defaults, key) is None
        for key in ("cat_max_ratio", "rare_class_sampling", "aspect_range", "rotate_degrees",
                    "gamma_range", "blur_sigma", "noise_std")
    )  # fmt: skip
    for override, key in [
        ("data.cat_max_ratio=1", "cat_max_ratio"),
        ("data.rare_class_sampling=-0.5", "rare_class_sampling"),
        ("data.aspect_range=[1.25, 0.8]", "aspect_range"),
        ("data.rotate_degrees=200", "rotate_degrees"),
        ("data.gamma_range=[0, 1]", "gamma_range"),
        ("data.blur_sigma=0", "blur_sigma"),
        ("data.noise_std=-1", "noise_std"),
    ]:
        with pytest.raises(ConfigError, match=f"data: {key} must be"):
            load_config(Config, None, [override])


def test_settings_that_would_do_nothing_or_crash_later_are_refused_by_name() -> None:
    """Each was accepted: some did nothing without a word (distillation settings without a
    teacher, sequence filters of another data set than CamVid, ClassMix on batches of one),
    some failed at the first step with a traceback (nesterov without momentum, an infinite
    warm-up, a seed past 64 bits), some made the first loss infinite."""
    for overrides, message in [
        (["optim.nesterov=true", "optim.momentum=0"], "optim: nesterov must be false unless"),
        (["optim.warmup_epochs=.inf"], "optim: warmup_epochs must be >= 0"),
        (["optim.weight_decay=.inf"], "optim: weight_decay must be >= 0"),
        (["loss.aux_weight=.inf"], "loss: aux_weight must be >= 0"),
        (["train.seed=-1"], "train: seed must be in [0, 2**63)"),
        (["distill.cwd_weight=5"], "distill: cwd_weight must be 0.0 without a teacher"),
        (["distill.teacher_flip=true"], "distill: teacher_flip must be False without a teacher"),
        (["data.dataset=cityscapes", "data.train_sequences=[x]"], "data: train_sequences must"),
        (["data.class_mix=0.5", "data.batch_size=1"], "data: class_mix must be null with batch"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(Config, None, overrides)
    load_config(Config, None, ["optim.nesterov=true", "distill.teacher=x", "distill.cwd_weight=5"])


def test_rare_class_weights_of_a_large_power_stay_finite() -> None:
    """frequency ** -power overflowed (inf / inf: NaN weights) from powers of a few hundred;
    relative to the rarest class the same proportions stay finite: at a large power all the
    weight goes to the frames of the rarest class."""
    counts = frame_class_pixels(TinyLabels(), num_classes=2)
    assert np.allclose(rare_class_weights(counts, 1.0), [15 / 7, 6 / 7, 0.0])  # unchanged
    weights = rare_class_weights(counts, 1000.0)
    assert np.isfinite(weights).all() and np.allclose(weights, [3.0, 0.0, 0.0])
