"""``ddrnet eval``: mIoU, per-class IoU and accuracy of a model on a data set."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from ddrnet.atomic import atomic_write_json
from ddrnet.cli.options import (
    OPEN_FRACTION,
    PATH,
    POSITIVE_INT,
    SEVERITY,
    add_amp_option,
    add_device_option,
    add_runtime_option,
    add_scales_option,
    device_and_precision,
    load_model,
    parse_size,
    writable_file,
    writable_folder,
)
from ddrnet.data.corruptions import CORRUPTIONS, SEVERITIES, select_corruptions
from ddrnet.errors import UsageError

logger = logging.getLogger("ddrnet")


# The command's line in ``ddrnet --help``.
HELP = "mIoU, per-class IoU and accuracy of a checkpoint on a data set"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help=HELP,
        description="Evaluate at full label resolution. The data set defaults to the one the "
        "checkpoint was trained on (from its metadata).",
    )
    parser.add_argument(
        "checkpoint", help="model file (.safetensors, .pt or .pth), or an exported .onnx file"
    )
    parser.add_argument("--model", help="architecture, for checkpoints without metadata")
    _add_data_options(parser.add_argument_group("data set"))
    _add_inference_options(parser.add_argument_group("inference"))
    _add_measure_options(
        parser.add_argument_group("also measure (each adds a section to the output and the JSON)")
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=PATH, help="write the metrics (key 'mIoU') to this file")
    output.add_argument(
        "--submission",
        type=PATH,
        help="Cityscapes: write labelId PNGs for the evaluation server here",
    )
    parser.set_defaults(handler=run)


def _add_data_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--dataset", choices=["camvid", "cityscapes", "coco_stuff", "folder"])
    group.add_argument("--root", help="data set folder")
    group.add_argument("--classes-file", help="folder data sets: the classes file")
    group.add_argument("--split", default="val")
    group.add_argument(
        "--sequences", nargs="+", help="CamVid: only frames of these sequences (e.g. 0006R0)"
    )
    group.add_argument("--max-images", type=POSITIVE_INT, help="only the first N images")


def _add_inference_options(group: argparse._ArgumentGroup) -> None:
    add_scales_option(group)
    group.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    group.add_argument("--window", type=parse_size, help="sliding window HEIGHTxWIDTH")
    group.add_argument("--batch-size", type=POSITIVE_INT, default=1)
    add_amp_option(group)
    add_device_option(group)
    add_runtime_option(group)


def _add_measure_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--details",
        action="store_true",
        help="also boundary IoU (the edges alone) and the share of small, medium and large "
        "objects found, per class (about 20 ms more a 480x360 frame on a CPU)",
    )
    group.add_argument(
        "--confidence",
        action="store_true",
        help="also whether the confidence can be trusted: expected calibration error, the "
        "accuracy of the pixels above confidence thresholds, per-class confidence against "
        "precision",
    )
    group.add_argument(
        "--by-recording",
        action="store_true",
        help="also the scores of each recording (CamVid sequence, Cityscapes city): a split "
        "that holds streets the model saw and one it never saw shows both",
    )
    group.add_argument(
        "--flicker",
        action="store_true",
        help="also the flicker: with the frames taken in order as videos (one per CamVid "
        "sequence or Cityscapes city), the share of the pixels whose true class stays the "
        "same between consecutive frames but whose prediction changes (CamVid val is a 15 Hz "
        "clip)",
    )
    group.add_argument(
        "--smooth",
        type=OPEN_FRACTION,
        metavar="WEIGHT",
        help="predict as `ddrnet predict --smooth WEIGHT` does (the frames in order, each "
        "blended with the ones before along the optical flow); implies --flicker",
    )
    group.add_argument(
        "--worst",
        type=POSITIVE_INT,
        metavar="N",
        help="also the N frames of lowest mIoU, each with its weakest classes (--json: every "
        "frame's scores)",
    )
    group.add_argument(
        "--show",
        type=PATH,
        metavar="FOLDER",
        help="with --worst: pictures of those frames in FOLDER: label, prediction, and the "
        "pixels predicted wrong",
    )
    group.add_argument(
        "--ci",
        action="store_true",
        help="also the 95%% bootstrap interval of the mIoU over the frames (--json: with "
        "every frame's counts, for a later --compare)",
    )
    group.add_argument(
        "--compare",
        type=PATH,
        metavar="JSON",
        help="the mIoU difference to the model of this `ddrnet eval --ci --json` report, on "
        "the same frames, with its 95%% paired bootstrap interval; implies --ci",
    )
    group.add_argument(
        "--corruptions",
        nargs="+",
        metavar="NAME",
        help="also the mIoU under camera corruptions (ImageNet-C's, and 'dark'): "
        f"{', '.join(CORRUPTIONS)}, or 'all'; the same corrupted frames for every model",
    )
    group.add_argument(
        "--severities",
        nargs="+",
        type=SEVERITY,
        help="with --corruptions: the severities, 1 (mild) to 5 (default: all five)",
    )


def run(args: argparse.Namespace) -> int:
    from ddrnet.engine.robustness import evaluate_robustness

    _check_outputs(args)
    if args.severities and not args.corruptions:
        raise UsageError("--severities applies to --corruptions, which is not given")
    if args.show and not args.worst:
        raise UsageError("--show draws the frames of --worst N, which is not given")
    corruptions = select_corruptions(args.corruptions)
    model = load_model(args)
    dataset, data_config, labels = _dataset(args, model.metadata)
    other_counts = _check_frame_options(args, dataset, labels)
    score = _scorer(args, model, labels)
    accumulators, new_confidence = _accumulators(args, dataset, labels)
    metrics = score(
        dataset,
        prediction_callback=_submission_writer(args.submission, dataset),
        frame_accumulators=[accumulators[k] for k in _PER_FRAME if accumulators[k] is not None],
        confidence=accumulators["confidence"],
        flicker=accumulators["flicker"],
    )
    names = list(labels.class_names)
    smoothing = f", smoothed over time (weight {args.smooth:g})" if args.smooth else ""
    print(
        f"{data_config.dataset} {args.split}: {len(dataset)} images, "
        f"scales {args.scales}, flip {args.flip}{smoothing}"
    )
    print(metrics.table(names))
    sections = _sections(args, accumulators, names)
    refusal = None
    if args.ci or args.compare:
        intervals, refusal = _intervals(args, accumulators["frame_scores"], other_counts)
        sections.update(intervals)
    if corruptions:
        severities = sorted(set(args.severities or SEVERITIES))
        robustness = evaluate_robustness(
            score, dataset, metrics.miou, corruptions, severities, confidence=new_confidence
        )
        print(f"\n{robustness.table()}")
        sections["corruptions"] = robustness.to_dict()
    if args.json:  # first: the pictures after it cannot lose the scores
        document = {
            "checkpoint": args.checkpoint,
            "dataset": data_config.dataset,
            "split": args.split,
            "images": len(dataset),
            "scales": list(args.scales),
            "flip": args.flip,
            "smooth": args.smooth,
            **metrics.to_dict(names),
            **sections,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(document, Path(args.json))
        print(f"metrics written to {args.json}")
    if args.show:
        from ddrnet.viz.errors import write_worst_pictures

        frames = accumulators["frame_scores"]
        worst = frames.worst(args.worst)
        written = write_worst_pictures(dataset, worst, frames.kept(), args.show, labels)
        print(f"{len(written)} pictures of the worst frames written to {args.show}")
    if refusal:
        raise UsageError(refusal)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, output paths that cannot be written or would replace an
    input (or each other)."""
    reads = {
        "--compare": args.compare,
        "CHECKPOINT": args.checkpoint,
        "--classes-file": args.classes_file,
    }
    writable_file("--json", args.json, (".json",), reads=reads)
    writes = {"--json": args.json, **reads}
    writable_folder("--show", args.show, reads=writes)
    writable_folder("--submission", args.submission, reads={"--show": args.show, **writes})


def _check_frame_options(args: argparse.Namespace, dataset, labels):
    """Refuse, before the evaluation, what --show, --ci and --compare cannot do here; the
    ``--compare`` report's per-frame counts (None without it)."""
    from ddrnet.engine.frame_scores import read_frame_counts
    from ddrnet.engine.recordings import frame_images, frame_recordings

    if (args.flicker or args.smooth) and not any(frame_recordings(dataset)):
        logger.warning(
            "this data set does not say which video its frames come from: --flicker and "
            "--smooth take its %d frames, in order, as one video",
            len(dataset),
        )
    from ddrnet.viz.figure import check_pictures_folder

    for option, folder in (("--show", args.show), ("--submission", args.submission)):
        if folder:
            check_pictures_folder(dataset, folder, option)
    if (args.ci or args.compare) and len(dataset) < 2:
        raise UsageError("--ci and --compare draw the frames again: they take two frames or more")
    if not args.compare:
        return None
    return read_frame_counts(args.compare, list(labels.class_names), frame_images(dataset))


# The accumulators of ``_accumulators`` that take each frame (``evaluate.FrameAccumulator``).
_PER_FRAME = ("details", "by_recording", "frame_scores")


def _accumulators(args: argparse.Namespace, dataset, labels) -> tuple[dict, object]:
    """What the evaluation gathers besides the confusion matrix, by name (None: not asked
    for), and the maker of fresh confidence statistics (one per corrupted evaluation) or
    None."""
    from ddrnet.engine.confidence import ConfidenceMetrics
    from ddrnet.engine.detail_metrics import DetailMetrics
    from ddrnet.engine.frame_scores import FrameScores
    from ddrnet.engine.recordings import RecordingMetrics
    from ddrnet.engine.temporal import Flicker

    count, ignore = labels.num_classes, labels.ignore_index
    new_confidence = (
        functools.partial(ConfidenceMetrics, count, ignore) if args.confidence else None
    )
    per_frame = args.worst or args.ci or args.compare
    accumulators = {
        "details": DetailMetrics(count, ignore) if args.details else None,
        "confidence": new_confidence() if new_confidence else None,
        "flicker": Flicker(ignore) if args.flicker or args.smooth else None,
        "by_recording": (
            RecordingMetrics.of_dataset(dataset, count, ignore) if args.by_recording else None
        ),
        "frame_scores": (
            FrameScores(dataset, count, ignore, keep=args.worst if args.show else 0)
            if per_frame
            else None
        ),
    }
    return accumulators, new_confidence


def _sections(args: argparse.Namespace, accumulators: dict, names: list[str]) -> dict:
    """Print what each requested accumulator found; their JSON sections."""
    sections: dict = {}
    details, confidence = accumulators["details"], accumulators["confidence"]
    by_recording, flicker = accumulators["by_recording"], accumulators["flicker"]
    frames = accumulators["frame_scores"]
    if details is not None:
        result = details.compute()
        print(f"\n{result.table(names)}")
        sections.update(result.to_dict(names))
    if confidence is not None:
        trust = confidence.compute()
        print(f"\n{trust.table(names)}")
        sections["confidence"] = trust.to_dict(names)
    if by_recording is not None:
        print(f"\n{by_recording.table(names)}")
        sections["by_recording"] = by_recording.to_dict(names)
    if flicker is not None:
        print(f"\n{flicker.describe()}")
        sections["temporal"] = {**flicker.to_dict(), "smooth": args.smooth}
    if frames is not None and args.worst:
        print(f"\n{frames.table(names, args.worst)}")
    if frames is not None:
        sections["frames"] = frames.to_dict(names)
    return sections


def _intervals(args: argparse.Namespace, frames, other_counts) -> tuple[dict, str | None]:
    """Print the mIoU's bootstrap interval (and the difference to ``--compare``'s); their
    JSON sections, and why the comparison was refused (None: it was made). Refused only
    here, after the evaluation: whether the labels match shows in the counts."""
    from ddrnet.engine.bootstrap import (
        bootstrap_miou,
        frames_labelled_otherwise,
        paired_difference,
    )

    counts = frames.class_counts().numpy()
    interval = bootstrap_miou(counts)
    percent = f"{100 * interval.level:g}%"
    print(
        f"\nmIoU {interval.value:.2f}, {percent} interval {interval.low:.2f} to "
        f"{interval.high:.2f} (bootstrap over the {interval.frames} frames)"
    )
    sections = {"interval": interval.to_dict()}
    relabelled = [] if other_counts is None else frames_labelled_otherwise(counts, other_counts)
    if len(relabelled):
        first = frames.images[relabelled[0]] or f"frame {relabelled[0] + 1}"
        return sections, (
            f"--compare {args.compare}: {len(relabelled)} of its {len(counts)} frames have "
            f"other labels than these (the first: {first}); compare evaluations of the same "
            "labels at the same size"
        )
    if other_counts is not None:
        difference = paired_difference(counts, other_counts)
        verdict = (
            ("better" if difference.value > 0 else "worse") + " on these frames"
            if difference.excludes_zero()
            else "no difference these frames can show"
        )
        print(
            f"against {args.compare}: {difference.value:+.2f} mIoU, {percent} interval "
            f"{difference.low:+.2f} to {difference.high:+.2f}: {verdict}"
        )
        sections["comparison"] = {"against": args.compare, **difference.to_dict()}
    return sections, None


def _dataset(args: argparse.Namespace, metadata):
    """The evaluation data set the options name (``--max-images`` of it), its config and
    its classes (``LabelSet``); warns when the model was trained on it."""
    import torch

    from ddrnet.engine.evaluation_set import evaluation_dataset

    dataset, data_config = evaluation_dataset(
        metadata,
        args.split,
        dataset=args.dataset,
        root=args.root,
        classes_file=args.classes_file,
        sequences=args.sequences,
    )
    if args.submission and data_config.dataset != "cityscapes":
        raise UsageError(
            f"--submission writes Cityscapes server files; the data set is {data_config.dataset}"
        )
    if metadata.trained_on(data_config.dataset, args.split):
        logger.warning(
            "%s was trained on %s %s: its scores there are training-set figures",
            args.checkpoint,
            data_config.dataset,
            args.split,
        )
    labels = dataset.labels
    if args.max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_images, len(dataset))))
    return dataset, data_config, labels


def _scorer(args: argparse.Namespace, model, labels):
    """``evaluate`` with the model (its fast form, on the device) and the options bound:
    ``score(dataset, **more)`` evaluates the clean and every corrupted data set alike."""
    import torch

    from ddrnet.engine.evaluate import evaluate
    from ddrnet.engine.inference import to_fast_layout
    from ddrnet.engine.temporal import TemporalSmoother
    from ddrnet.models.metadata import normalisation

    mean, std = normalisation(model)  # the model's own (ImageNet's for a bare state dict)
    device, amp = device_and_precision(args, model)
    model, memory_format = to_fast_layout(model.to(device))
    return functools.partial(
        evaluate,
        model,
        num_classes=labels.num_classes,
        mean=mean,
        std=std,
        device=device,
        scales=args.scales,
        flip=args.flip,
        window=args.window,
        batch_size=args.batch_size,
        amp_dtype=amp,
        channels_last=memory_format == torch.channels_last,
        ignore_index=labels.ignore_index,
        # One smoother serves every evaluation: it starts again at each one's first frame.
        smoother=TemporalSmoother(args.smooth) if args.smooth else None,
    )


def _submission_writer(folder: str | None, dataset):
    """The ``prediction_callback`` that writes Cityscapes server files into ``folder``."""
    if not folder:
        return None
    from ddrnet.data.cityscapes import write_cityscapes_submission

    samples = getattr(dataset, "dataset", dataset).samples

    def write_result(index: int, prediction) -> None:
        write_cityscapes_submission(prediction, samples[index].image, folder)

    return write_result
