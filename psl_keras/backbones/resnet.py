"""ResNet-18/34/50 as five block sub-models B1..B5 (the PSL network partition).

B1 is the stem (`conv1`), B2..B5 are `conv2_x`..`conv5_x` of He et al. Each block is its own functional
`keras.Model` named "B1".."B5" with free spatial dimensions, so a stage can run any window of blocks on
any input size (jigsaw tiles included); the backbone chains them and returns every block output.

The layer layout follows `keras.applications.ResNet50` (ResNet v1, stride on the first 1x1 convolution of a
bottleneck, biased convolutions, BatchNorm epsilon 1.001e-5) so the parameter counts agree exactly.
"""

import keras
from keras import layers

BLOCK_NAMES = ("B1", "B2", "B3", "B4", "B5")

# Images enter the backbone as float RGB in [0, 1]; normalising inside B1 means every user of a saved
# backbone (probes, the demo) feeds the same kind of input without having to know these constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}

BN_EPSILON = 1.001e-5
# Keras' default momentum (0.99) averages over ~100 steps; short stage-wise runs need the statistics of
# frozen blocks to be current, so use the 0.9 that PyTorch-trained reference models use.
BN_MOMENTUM = 0.9


def scaled(channels, width):
    """Channel count under a width multiplier, never below 4."""
    return max(4, int(round(channels * width)))


class BlockBuilder:
    """Holds the conventions shared by all layers of one backbone (bias, BN flavour, init)."""

    def __init__(self, conv_bias, sync_bn):
        self.conv_bias = conv_bias
        self.sync_bn = sync_bn

    def conv(self, x, filters, kernel, stride, name, padding="same"):
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=self.conv_bias,
            kernel_initializer="he_normal",
            name=name,
        )(x)

    def bn(self, x, name):
        return layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=self.sync_bn, name=name
        )(x)

    def bottleneck(self, x, filters, stride, conv_shortcut, name):
        if conv_shortcut:
            shortcut = self.conv(x, 4 * filters, 1, stride, f"{name}_0_conv")
            shortcut = self.bn(shortcut, f"{name}_0_bn")
        else:
            shortcut = x
        x = self.conv(x, filters, 1, stride, f"{name}_1_conv")
        x = layers.Activation("relu", name=f"{name}_1_relu")(self.bn(x, f"{name}_1_bn"))
        x = self.conv(x, filters, 3, 1, f"{name}_2_conv")
        x = layers.Activation("relu", name=f"{name}_2_relu")(self.bn(x, f"{name}_2_bn"))
        x = self.conv(x, 4 * filters, 1, 1, f"{name}_3_conv")
        x = self.bn(x, f"{name}_3_bn")
        x = layers.Add(name=f"{name}_add")([shortcut, x])
        return layers.Activation("relu", name=f"{name}_out")(x)

    def basic(self, x, filters, stride, conv_shortcut, name):
        if conv_shortcut:
            shortcut = self.conv(x, filters, 1, stride, f"{name}_0_conv")
            shortcut = self.bn(shortcut, f"{name}_0_bn")
        else:
            shortcut = x
        x = self.conv(x, filters, 3, stride, f"{name}_1_conv")
        x = layers.Activation("relu", name=f"{name}_1_relu")(self.bn(x, f"{name}_1_bn"))
        x = self.conv(x, filters, 3, 1, f"{name}_2_conv")
        x = self.bn(x, f"{name}_2_bn")
        x = layers.Add(name=f"{name}_add")([shortcut, x])
        return layers.Activation("relu", name=f"{name}_out")(x)


def stem_block(builder, stem, width):
    inputs = keras.Input((None, None, 3), name="B1_input")
    x = layers.Normalization(
        mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize"
    )(inputs)
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = builder.conv(x, scaled(64, width), 7, 2, "conv1_conv", padding="valid")
    elif stem == "cifar":
        x = builder.conv(x, scaled(64, width), 3, 1, "conv1_conv")
    else:
        raise ValueError(f"Unknown stem {stem!r}; expected 'imagenet' or 'cifar'.")
    x = layers.Activation("relu", name="conv1_relu")(builder.bn(x, "conv1_bn"))
    return keras.Model(inputs, x, name="B1")


def _residual_block(builder, kind, index, repeats, in_channels, filters, stride, max_pool):
    """Block B{index}: conv{index}_x, optionally preceded by the stem's 3x3/2 max-pool (part of conv2_x)."""
    inputs = keras.Input((None, None, in_channels), name=f"B{index}_input")
    x = inputs
    if max_pool:
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    unit = builder.bottleneck if kind == "bottleneck" else builder.basic
    expansion = 4 if kind == "bottleneck" else 1
    channels = in_channels
    for r in range(repeats):
        first = r == 0
        needs_projection = first and (stride != 1 or channels != filters * expansion)
        x = unit(
            x,
            filters,
            stride if first else 1,
            conv_shortcut=needs_projection,
            name=f"conv{index}_block{r + 1}",
        )
        channels = filters * expansion
    return keras.Model(inputs, x, name=f"B{index}"), channels


def resnet(
    depth=50,
    image_size=224,
    stem="imagenet",
    width=1.0,
    conv_bias=True,
    sync_bn=False,
    name=None,
):
    """Builds a ResNet backbone whose outputs are a dict {"B1": ..., ..., "B5": ...}.

    Args:
      depth: 18, 34 or 50.
      image_size: side of the square input the backbone is declared for (blocks accept any size).
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no max-pool) for 32x32 inputs.
      width: channel multiplier for small experiments (1.0 is the standard network).
      conv_bias: keep the convolution biases of keras.applications' ResNet (True) or drop them.
      sync_bn: synchronise BatchNorm statistics across replicas (same update on any replica count).
    """
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}.")
    kind, repeats = RESNET_LAYOUTS[depth]
    builder = BlockBuilder(conv_bias=conv_bias, sync_bn=sync_bn)
    blocks = [stem_block(builder, stem, width)]
    channels = scaled(64, width)
    for i, (reps, base) in enumerate(zip(repeats, (64, 128, 256, 512))):
        index = i + 2
        block, channels = _residual_block(
            builder,
            kind,
            index,
            reps,
            channels,
            scaled(base, width),
            stride=1 if index == 2 else 2,
            max_pool=(index == 2 and stem == "imagenet"),
        )
        blocks.append(block)
    return chain_blocks(blocks, image_size, name or f"resnet{depth}_{stem}")


def chain_blocks(blocks, image_size, name):
    """Chains block models B1..B5 into one functional backbone that returns every block output."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = {}
    x = inputs
    for block in blocks:
        x = block(x)
        outputs[block.name] = x
    return keras.Model(inputs, outputs, name=name)
