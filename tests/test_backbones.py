import keras
import numpy as np
import pytest

from psl_keras.backbones import BACKBONES, BLOCK_NAMES, backbone_blocks, build_backbone
from psl_keras.errors import PSLError


def test_resnet50_matches_keras_applications_parameter_count():
    ours = build_backbone("resnet50", 224)
    reference = keras.applications.ResNet50(include_top=False, weights=None)
    assert ours.count_params() == reference.count_params() == 23_587_712


@pytest.mark.parametrize(
    "name,size,expected",
    [
        ("resnet50", 224, {"B1": (112, 112, 64), "B2": (56, 56, 256), "B3": (28, 28, 512),
                           "B4": (14, 14, 1024), "B5": (7, 7, 2048)}),
        ("resnet18", 32, {"B1": (32, 32, 64), "B2": (32, 32, 64), "B3": (16, 16, 128),
                          "B4": (8, 8, 256), "B5": (4, 4, 512)}),
        ("resnet34", 64, {"B1": (32, 32, 64), "B2": (16, 16, 64), "B3": (8, 8, 128),
                          "B4": (4, 4, 256), "B5": (2, 2, 512)}),
    ],
)
def test_block_outputs_are_named_and_shaped(name, size, expected):
    stem = "imagenet" if name == "resnet34" else None  # resnet34 at 64 px: force the ImageNet stem
    backbone = build_backbone(name, size, stem=stem)
    outputs = backbone(np.zeros((1, size, size, 3), "float32"))
    assert tuple(outputs) == BLOCK_NAMES
    assert {k: tuple(v.shape[1:]) for k, v in outputs.items()} == expected


def test_width_multiplier_scales_channels_and_blocks_chain():
    backbone = build_backbone("resnet18", 32, width=0.25)
    blocks = backbone_blocks(backbone)
    assert [b.name for b in blocks] == list(BLOCK_NAMES)
    assert blocks[-1].output.shape[-1] == 128
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    chained = x
    for block in blocks:
        chained = block(chained)
    np.testing.assert_allclose(backbone(x)["B5"], chained, atol=1e-6)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(PSLError, match="Unknown backbone 'resnet51'.*--backbone"):
        build_backbone("resnet51", 32)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_round_trips_through_a_keras_file(name, tmp_path):
    keras.utils.set_random_seed(0)
    backbone = build_backbone(name, 32, width=0.125)
    path = str(tmp_path / f"{name}.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    ours, theirs = backbone(x), loaded(x)
    for block in BLOCK_NAMES:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours[block]), keras.ops.convert_to_numpy(theirs[block]))
