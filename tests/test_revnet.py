import keras
import numpy as np
import pytest

from psl_keras.backbones import BLOCK_NAMES, backbone_blocks, build_backbone
from psl_keras.backbones.revnet import ReversibleBottleneck


@pytest.mark.parametrize("training", [False, True])
def test_reversible_unit_reconstructs_its_input(training):
    keras.utils.set_random_seed(0)
    unit = ReversibleBottleneck(16, 8)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 16)).astype("float32")
    y = unit(x, training=training)
    assert not np.allclose(keras.ops.convert_to_numpy(y), x)
    reconstructed = keras.ops.convert_to_numpy(unit.inverse(y, training=training))
    np.testing.assert_allclose(reconstructed, x, atol=1e-5)


def test_revnet50_layout_and_parameter_count():
    backbone = build_backbone("revnet50", 224)
    # Inner width C/5 in F and G: 24.4M parameters, the paper's Table 4 says 24M.
    assert backbone.count_params() == 24_438_822
    shapes = {k: tuple(v.shape[1:]) for k, v in backbone(np.zeros((1, 224, 224, 3), "float32")).items()}
    assert shapes == {"B1": (112, 112, 64), "B2": (56, 56, 256), "B3": (28, 28, 512),
                      "B4": (14, 14, 1024), "B5": (7, 7, 2048)}
    reversible = [l for b in backbone_blocks(backbone) for l in b.layers if isinstance(l, ReversibleBottleneck)]
    assert len(reversible) == 2 + 3 + 5 + 2  # all but the down-sampling unit of each [3, 4, 6, 3] group


def test_revnet_width_and_saving_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("revnet50", 32, width=0.125)
    path = str(tmp_path / "revnet.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    for name in BLOCK_NAMES:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(x)[name]),
                                   keras.ops.convert_to_numpy(loaded(x)[name]), atol=1e-5)
    wide = build_backbone("revnet50", 32, width=4 * 0.125)
    assert wide.count_params() > 3 * backbone.count_params()
