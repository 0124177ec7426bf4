"""BYOL with PSL (Grill et al. 2020): an online network predicts a momentum target network's projection of the
other view of the same image, with no negatives.

Per stage: the online network is the stage's trained blocks and its head g_i = projection MLP, then predictor
MLP (the head's output is the prediction); the target network is a momentum copy of the trained blocks and the
projection MLP only (`MomentumEncoder`, t <- m t + (1 - m) o after every step, BatchNorm on batch statistics,
no gradient). The frozen blocks before the window are shared: they do not change. Each stage starts its own
target, copied from its online network, as it starts its own head.

Loss per image, for its two views a and b: ||p_a - z_b||^2 + ||p_b - z_a||^2 with p the L2-normalised
prediction and z the L2-normalised target projection (= 2 - 2 cos for each direction). The levels are the
contrastive ladder T1 ⊆ T2 ⊆ T3 (`ContrastiveTask`), on both backends. What BYOL adds that is not here: its
asymmetric blur / solarisation per view and the cosine increase of the momentum to 1 (a constant momentum here).
"""

import keras
from keras import layers, ops

from psl_keras.ranges import fraction
from psl_keras.tasks.contrastive import ContrastiveTask, MomentumEncoder


def _normalised(x):
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-24))


def byol_loss(predictions, targets):
    """Per-image BYOL loss of predictions [2B, d] and target projections [2B, d] (rows 2k, 2k + 1: image k's
    views): each view's prediction against the other view's target. Returns (loss [B], 1.0 where view 1's
    prediction is nearest to its own image's view-2 target among the batch's [B])."""
    p = _normalised(predictions)
    z = _normalised(targets)
    dim = z.shape[-1]
    other = ops.reshape(ops.flip(ops.reshape(z, (-1, 2, dim)), axis=1), (-1, dim))  # row 2k <-> row 2k + 1
    per_view = 2.0 - 2.0 * ops.sum(p * other, axis=-1)
    losses = ops.sum(ops.reshape(per_view, (-1, 2)), axis=1)
    similarity = ops.matmul(p[0::2], ops.transpose(z[1::2]))
    own = ops.arange(ops.shape(similarity)[0], dtype="int32")
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(similarity, axis=1), "int32"), own), "float32")
    return losses, correct


class BYOLTask(ContrastiveTask):
    """Online = the stage and its head (projection, then predictor); target = `MomentumEncoder` of the projection."""

    name = "byol"
    OPTIONS = {
        **{k: v for k, v in ContrastiveTask.OPTIONS.items() if k not in ("temperature", "projection_dim")},
        "projection_dim": (256, "Output size of the projection and the prediction.", ContrastiveTask.OPTIONS[
            "projection_dim"][2]),
        "momentum": (0.996, "Momentum of the target network's update.", fraction(closed=False)),
    }
    # BYOL (Grill et al. 2020): LARS at lr 0.2 x batch/256, weight decay 1.5e-6, cosine with a 10-epoch warm-up
    # (3 at the start of each stage, as for SimCLR), MLPs of 4096 units. CIFAR-10: batch 512, a 1-epoch warm-up
    # per stage and momentum 0.99, the usual small-data setting.
    PRESETS = {
        "imagenet_paper": dict(optimizer="lars", lr=0.2, momentum=0.9, nesterov=False, weight_decay=1.5e-6,
                               schedule="cosine", warmup_epochs=3, stage_epochs="60,70,70", head_hidden=4096),
        "cifar10_small": dict(optimizer="lars", lr=0.4, momentum=0.9, nesterov=False, weight_decay=1.5e-6,
                              warmup_epochs=1, task_options={"momentum": 0.99}),
    }

    def __init__(self, image_size, head_hidden=256, sync_bn=False, projection_dim=256, strength=None,
                 blur_rate=0.5, sobel_rate=0.2, momentum=0.996):
        super().__init__(image_size, head_hidden, sync_bn, None, projection_dim, strength, blur_rate, sobel_rate)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError("momentum must be in [0, 1).")

    def default_temperature(self):
        return 1.0  # BYOL's loss has no temperature

    def build_head(self, level, feature_channels, name):
        """Projection MLP (pool, Dense + BN + ReLU, Dense) then predictor MLP (Dense + BN + ReLU, Dense)."""
        features = keras.Input((None, None, feature_channels), name=f"{name}_features")
        x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        for part in ("projection", "prediction"):
            x = layers.Dense(self.head_hidden, use_bias=False, name=f"{name}_{part}_hidden")(x)
            x = layers.BatchNormalization(synchronized=self.sync_bn, name=f"{name}_{part}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_{part}_relu")(x)
            x = layers.Dense(self.projection_dim, dtype="float32", name=f"{name}_{part}")(x)
        return keras.Model(features, x, name=name)

    def build_stage_state(self, stage_model):
        head = stage_model.head
        projector = keras.Model(head.input, head.get_layer(f"{head.name}_projection").output, name="projector")
        return MomentumEncoder(stage_model.trained_blocks, projector, self.momentum, shuffle_groups=1,
                               seed=stage_model.stage.index, name="target_encoder")

    def stage_outputs(self, stage_model, features, training=False):
        # features: both views of each image, interleaved (view 1 at even rows, view 2 at odd rows).
        return {"predictions": stage_model.trained_forward(features, training=training),
                "targets": stage_model.task_state.keys(features)}

    def objective(self, labels, outputs):
        return byol_loss(outputs["predictions"], outputs["targets"])

    def after_step(self, stage_model, outputs):
        stage_model.task_state.update()

    def get_config(self):
        config = super().get_config()
        config.pop("temperature", None)
        config.update(momentum=self.momentum)
        return config
