"""Steadier labels in video: class probabilities carried from frame to frame along the optical
flow (``ddrnet predict --smooth``), and the flicker that measures it (``ddrnet eval --flicker``).

A network that segments each frame alone flickers: where the scene stays put, a pixel's class
still changes from one frame to the next wherever the frame's evidence is weak (thin poles,
distant cyclists, the edges of classes). ``TemporalSmoother`` keeps a running estimate of the
class log-probabilities at the network's output resolution (1/8 of the input for DDRNet) and
blends each new frame into it, pixel by pixel,

    share_t = weight * sqrt(1 - p_t)
    state_t = share_t * warp(state_{t-1}, flow_t) + (1 - share_t) * log_softmax(scores_t),

where ``p_t`` is the frame's own winning-class probability at the pixel and ``flow_t``
(OpenCV's DIS optical flow, from the grey frames at up to ``FLOW_SCALE`` times that
resolution) says where each pixel of frame ``t`` was in frame ``t - 1``, so that the past
follows the camera's and the objects' motion instead of smearing them. Where the frame is
sure of itself it stands; where it hesitates, the past decides more, up to ``weight``. The
state takes the logits' place: labels are the arg-max of the upsampled state, probabilities
its softmax (a normalised geometric mean of the frames' probabilities).

Measured on CamVid's 15 Hz validation clip (README, "Steadier video"), each choice against
the one kept: without the flow the blend costs thin and moving classes their IoU; blending
probabilities instead of log-probabilities loses about a point of mIoU (as the arg-max of
upsampled probabilities does against upsampled logits); one share for every pixel (no
``sqrt(1 - p_t)``) loses 0.3 mIoU for the same flicker, most of it on Pole; flow at twice
the resolution, a slower DIS preset or nearest-neighbour warping gain nothing.

``Flicker`` counts, between consecutive frames, the pixels whose true class stays the same
(labelled in both frames): the share of them whose predicted class changes is the flicker.
Pixels whose true class changes (motion) are left out, so a prediction that follows real
motion is not punished.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ddrnet.models.metadata import IGNORE_INDEX

# The flow is computed at this many times the scores' resolution (a DDRNet's 1/8 grid: half
# the input's), at most FLOW_MAX_WIDTH pixels wide and never beyond the frame itself. Half
# the input resolution kept the mIoU gain on CamVid where a quarter lost it.
FLOW_SCALE = 4
FLOW_MAX_WIDTH = 480
# OpenCV's DIS flow refuses frames under 12 pixels a side and crashes the process (a
# segmentation fault) on frames much wider than tall (12x40, 16x1000): it gets its frames at
# least this many pixels a side and at most this wide or tall for their other side, stretched
# where needed (``_warp`` scales the flow back per axis).
FLOW_MIN_SIDE = 32
FLOW_MAX_ASPECT = 4


class TemporalSmoother:
    """The running class probabilities of one video (one per stream: frames in order).

    ``weight`` in (0, 1): the past's share of a pixel of which the new frame is not sure at
    all (its share is ``weight * sqrt(1 - p)`` where the frame's winning probability is
    ``p``). The state starts again at the first frame, at ``reset()``, and whenever the frame
    or score size changes.
    """

    def __init__(self, weight: float) -> None:
        if not 0 < weight < 1:
            raise ValueError(f"the smoothing weight must lie in (0, 1), got {weight}")
        self.weight = weight
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next frame starts a new video."""
        self._state: torch.Tensor | None = None  # (C, h, w) log-probabilities
        self._grey: np.ndarray | None = None  # the last frame, grey, at the flow size

    def __call__(self, images: torch.Tensor, scores: torch.Tensor, logits: bool) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB frames in order (uint8, or float in 0..1) and their ``(N, C,
        h, w)`` class scores (logits with ``logits``, else probabilities) -> ``(N, C, h, w)``
        float32 smoothed log-probabilities (to use as logits), on the scores' device."""
        scores = scores.float()
        log_p = scores.log_softmax(dim=1) if logits else scores.clamp_min(1e-12).log()
        return torch.stack([self._step(i, p) for i, p in zip(images, log_p)])

    def _step(self, image: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        grey = _grey_frame(image, _flow_size(image.shape[-2:], log_p.shape[-2:]))
        state = self._state
        if state is None or state.shape != log_p.shape or grey.shape != self._grey.shape:
            state = log_p
        else:
            flow = self._flow.calc(grey, self._grey, None)  # frame t's pixels in frame t - 1
            sure = log_p.exp().amax(dim=0, keepdim=True)  # the frame's winning probability
            share = self.weight * (1 - sure).clamp_min(0).sqrt()
            state = share * _warp(state, flow) + (1 - share) * log_p
        self._state, self._grey = state, grey
        return state


def _flow_size(frame: tuple[int, int], scores: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the grey frames the flow is computed on."""
    height, width = (min(FLOW_SCALE * s, f) for s, f in zip(scores, frame))
    if width > FLOW_MAX_WIDTH:
        height, width = max(1, round(height * FLOW_MAX_WIDTH / width)), FLOW_MAX_WIDTH
    return (
        max(height, FLOW_MIN_SIDE, math.ceil(width / FLOW_MAX_ASPECT)),
        max(width, FLOW_MIN_SIDE, math.ceil(height / FLOW_MAX_ASPECT)),
    )


def _grey_frame(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A ``(3, H, W)`` RGB frame as ``size`` uint8 grey (area-averaged), for the flow."""
    pixels = image.detach().cpu()
    if pixels.is_floating_point():
        pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())
    small = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def _warp(state: torch.Tensor, flow: np.ndarray) -> torch.Tensor:
    """``(C, h, w)`` state sampled bilinearly where the flow (``(fh, fw, 2)`` pixels of
    the flow's grid, x then y) says each pixel was; beyond the border, the border."""
    _, height, width = state.shape
    scale = torch.tensor([width / flow.shape[1], height / flow.shape[0]], device=state.device)
    resized = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
    shift = torch.from_numpy(resized).to(state.device) * scale
    ys, xs = torch.meshgrid(
        torch.arange(height, device=state.device, dtype=torch.float32),
        torch.arange(width, device=state.device, dtype=torch.float32),
        indexing="ij",
    )
    # grid_sample's coordinates with align_corners=False: pixel centre x at (2x + 1) / w - 1.
    grid = torch.stack(
        [(2 * (xs + shift[..., 0]) + 1) / width - 1, (2 * (ys + shift[..., 1]) + 1) / height - 1],
        dim=-1,
    )
    return F.grid_sample(
        state[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )[0]


class Flicker:
    """Pixels that flicker between consecutive frames of a video, counted frame by frame.

    ``update(predicted, label)`` takes each frame's ``(H, W)`` predicted class ids and its
    label (``ignore_index`` unlabelled); ``start()`` begins a new video. ``stable`` counts
    the pixels labelled in two consecutive frames with one class, ``changed`` those of them
    whose prediction changes.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.stable = 0
        self.changed = 0
        self.start()

    def start(self) -> None:
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, predicted: torch.Tensor, label: torch.Tensor) -> None:
        predicted, label = predicted.cpu(), label.cpu()
        previous = self._previous
        if previous is not None and previous[1].shape == label.shape:
            same = (label == previous[1]) & (label != self.ignore_index)
            self.stable += int(same.sum())
            self.changed += int((same & (predicted != previous[0])).sum())
        self._previous = (predicted, label)

    @property
    def rate(self) -> float:
        """The flicker in percent of the stable pixels (nan before two frames)."""
        return 100.0 * self.changed / self.stable if self.stable else float("nan")

    def describe(self) -> str:
        """One line saying what was measured."""
        if not self.stable:
            return "flicker: not measured (no two consecutive labelled frames of one recording)"
        return (
            f"flicker: {self.rate:.2f}% of the {self.stable:,} pixels whose true class stays "
            "the same from one frame to the next change their predicted class"
        )

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain JSON: the flicker in percent (null when not measured) and its counts."""
        return {
            "flicker": self.rate if self.stable else None,
            "stable_pixels": self.stable,
            "changed_pixels": self.changed,
        }
