"""Per-layer channel widths of a channel-pruned DDRNet, recorded in its model file.

A pruned network keeps the module tree of its ``DDRNetSpec`` but some convolutions and
BatchNorms are narrower. ``ModelMetadata.channel_widths`` records those layers, and only
those, as ``{module_name: widths}``:

* ``nn.Conv2d``: ``[in_channels, out_channels]``;
* ``nn.BatchNorm2d``: ``[num_features]``;
* ``nn.Linear`` (ImageNet classifier): ``[in_features, out_features]``.

``apply_channel_widths`` rebuilds those layers at their recorded widths on a freshly built
model (fresh initialisation; the weights are loaded afterwards, strictly), so
``create_model(checkpoint="pruned.safetensors")`` needs no name and no other information.
The output width of the class-dependent layers (``head.conv2``, ``aux_head.conv2``,
``classifier``) always follows the model's ``num_classes``, so a pruned model can still be
re-headed for another data set.
"""

from __future__ import annotations

from torch import nn

# Layers whose output width is the number of classes: never narrowed by the widths.
CLASS_DEPENDENT_LAYERS = ("head.conv2", "aux_head.conv2", "classifier")


def _widths_of(module: nn.Module) -> list[int] | None:
    if isinstance(module, nn.Conv2d):
        return [module.in_channels, module.out_channels]
    if isinstance(module, nn.BatchNorm2d):
        return [module.num_features]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    return None


def channel_widths(model: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """The layers of ``model`` whose widths differ from those of ``reference`` (the same
    variant, unpruned; it may live on the meta device), as ``{name: widths}``."""
    reference_modules = dict(reference.named_modules())
    result: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        widths = _widths_of(module)
        if widths is None:
            continue
        if name not in reference_modules:
            raise ValueError(f"layer {name!r} of the pruned model is not in the reference model")
        if widths != _widths_of(reference_modules[name]):
            result[name] = widths
    return result


def apply_channel_widths(model: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Replace each named layer of ``model`` by a freshly initialised one of the recorded
    widths, in place (on the device and dtype of the layer it replaces, the meta device
    included); returns ``model``.

    Raises ``ValueError`` for a name that is no Conv2d/BatchNorm2d/Linear of the model, a
    width list of the wrong length, or a width that is not positive or exceeds the unpruned
    layer's (pruning only narrows; a crafted file must not make a model grow). Names under
    ``aux_head.`` are skipped when the model was built without its auxiliary head.
    """
    for name, values in widths.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            if name.startswith("aux_head.") and getattr(model, "aux_head", None) is None:
                continue
            raise ValueError(
                f"channel_widths names {name!r}, which is no layer of the model"
            ) from None
        current = _widths_of(module)
        if current is None:
            raise ValueError(f"channel_widths names {name!r}, a {type(module).__name__}")
        values = [int(v) for v in values]
        if len(values) != len(current):
            raise ValueError(
                f"channel_widths[{name!r}] has {len(values)} widths, not {len(current)}"
            )
        if name.startswith(CLASS_DEPENDENT_LAYERS) and len(values) == 2:
            values[1] = current[1]  # the number of classes decides
        if any(v < 1 or v > c for v, c in zip(values, current)):
            raise ValueError(
                f"channel_widths[{name!r}] = {values}: each width must be in 1..{current}"
            )
        _replace(model, name, _resized(module, values))
    return model


def _resized(module: nn.Module, widths: list[int]) -> nn.Module:
    """A fresh layer of the same kind and settings as ``module`` with the given widths."""
    weight = next(iter(module.parameters()), None)
    factory = {"device": weight.device, "dtype": weight.dtype} if weight is not None else {}
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("grouped convolutions cannot be narrowed")
        return nn.Conv2d(
            widths[0],
            widths[1],
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
        )
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            widths[0],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            **factory,
        )
    return nn.Linear(widths[0], widths[1], bias=module.bias is not None, **factory)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def check_widths_format(widths: object) -> None:
    """Raise ``ValueError`` unless ``widths`` is ``{str: [positive int, ...]}`` with one or
    two widths per layer (the form ``ModelMetadata.channel_widths`` stores)."""
    if not isinstance(widths, dict):
        raise ValueError(f"channel_widths must be a mapping, got {widths!r:.80}")
    for name, values in widths.items():
        if (
            not isinstance(name, str)
            or not isinstance(values, list)
            or len(values) not in (1, 2)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        ):
            raise ValueError(
                f"channel_widths entries must be 'layer': [1 or 2 positive integers], "
                f"got {name!r}: {values!r:.80}"
            )
