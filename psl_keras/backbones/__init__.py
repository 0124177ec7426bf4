"""Backbone registry: every backbone is a functional model returning {"B1": ..., ..., "B5": ...}.

A backbone's blocks are sub-models named B1..B5 (`backbone_blocks`), which is all stages and probes rely on.
"""

import functools

from psl_keras.backbones import resnet as _resnet
from psl_keras.backbones import revnet as _revnet
from psl_keras.backbones.resnet import BLOCK_NAMES
from psl_keras.errors import PSLError

BACKBONES = {
    "resnet18": functools.partial(_resnet.resnet, 18),
    "resnet34": functools.partial(_resnet.resnet, 34),
    "resnet50": functools.partial(_resnet.resnet, 50),
    "revnet50": functools.partial(_revnet.revnet, 50),
}


# Backbones with reversible units, which take `recompute` (their memory-saving backward pass).
REVERSIBLE = {"revnet50"}


def build_backbone(name, image_size, stem=None, width=1.0, sync_bn=False, recompute=True):
    """Builds a registered backbone. `stem=None` picks the CIFAR stem for inputs of 64 pixels or less;
    `recompute` (reversible backbones) rebuilds activations in the backward pass instead of storing them."""
    if name not in BACKBONES:
        raise PSLError(
            f"Unknown backbone {name!r}. Choose one of: {', '.join(sorted(BACKBONES))} (--backbone)."
        )
    if stem is None:
        stem = "cifar" if image_size <= 64 else "imagenet"
    options = {"recompute": recompute} if name in REVERSIBLE else {}
    return BACKBONES[name](image_size=image_size, stem=stem, width=width, sync_bn=sync_bn, name=name, **options)


def backbone_blocks(backbone):
    """The block sub-models B1..B5 of a backbone, in order."""
    try:
        return [backbone.get_layer(name) for name in BLOCK_NAMES]
    except ValueError as err:
        raise PSLError(
            f"Model {backbone.name!r} is not a psl-keras backbone: it has no block sub-models "
            f"named {', '.join(BLOCK_NAMES)} ({err})."
        ) from None


def backbone_image_size(backbone):
    """The input side a backbone was built for."""
    return int(backbone.inputs[0].shape[1])
