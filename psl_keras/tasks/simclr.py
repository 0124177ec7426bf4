"""SimCLR with PSL (Chen et al. 2020; PSL §3.3.3): NT-Xent between the two views of each image, the other
images of the global batch as negatives, on the augmentation ladder T1 ⊆ T2 ⊆ T3.

Under a multi-replica strategy the negatives come from every replica (a differentiable all-gather), so the
loss and gradient equal the single-device ones on the same global batch. The paper trains it with LARS at
lr 0.3 x batch/256, warm-up then cosine (the presets in `psl_keras.config`).
"""

import keras
from keras import ops

from psl_keras.tasks.contrastive import ContrastiveTask


def nt_xent(embeddings, temperature, gather=None):
    """NT-Xent of one replica's embeddings [2n, d], rows 2k and 2k+1 being the two views of image k.

    Each row's positive is its partner; its negatives are every other row of the global batch (`gather`
    returns all replicas' rows and this replica's offset among them; default: this replica alone).
    Returns (loss of each image: the mean over its two views [n], the share of its views whose partner
    ranks first [n]).
    """
    z = ops.cast(embeddings, "float32")
    z = z / ops.sqrt(ops.maximum(ops.sum(ops.square(z), axis=1, keepdims=True), 1e-24))
    everyone, offset = gather(z) if gather is not None else (z, 0)
    rows = ops.arange(ops.shape(z)[0])
    own = rows + offset
    partner = ops.bitwise_xor(rows, 1) + offset
    logits = ops.matmul(z, ops.transpose(everyone)) / temperature
    # An embedding is not its own negative: mask the self-similarity out of the softmax.
    logits = logits - 1e9 * ops.one_hot(own, ops.shape(everyone)[0], dtype=logits.dtype)
    losses = ops.sparse_categorical_crossentropy(partner, logits, from_logits=True)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=1), "int32"), ops.cast(partner, "int32")),
                       "float32")
    return ops.mean(ops.reshape(losses, (-1, 2)), axis=1), ops.mean(ops.reshape(correct, (-1, 2)), axis=1)


class SimCLRTask(ContrastiveTask):
    """Two views per image; the stage head projects each to `projection_dim`; NT-Xent at `temperature`."""

    name = "simclr"
    # The paper (§4.1): ResNet-50, batch 256, LARS at lr 0.3 (SimCLR's 0.3 x batch/256), cosine without
    # restarts, 200 epochs split 60/70/70, a 2-layer MLP head to 128-d. Weight decay 1e-6 and a 10-epoch warm-up
    # (SimCLR's) are not in the PSL paper; the warm-up is spread as 3 epochs at the start of each stage.
    # CIFAR-10: SimCLR's CIFAR recipe (batch 512, lr 0.3 x 512/256, weight decay 1e-6, temperature 0.5, colour
    # strength 0.5) with a 1-epoch warm-up per stage.
    PRESETS = {
        "imagenet_paper": dict(optimizer="lars", lr=0.3, momentum=0.9, nesterov=False, weight_decay=1e-6,
                               schedule="cosine", warmup_epochs=3, stage_epochs="60,70,70", head_hidden=2048),
        "cifar10_small": dict(optimizer="lars", lr=0.6, momentum=0.9, nesterov=False, weight_decay=1e-6,
                              warmup_epochs=1),
    }

    def default_temperature(self):
        # SimCLR's tuned values: 0.5 on CIFAR-10 (appendix B.9), 0.1 on ImageNet with LARS.
        return 0.5 if self.image_size <= 64 else 0.1

    def objective(self, labels, outputs):
        if keras.backend.backend() != "tensorflow":
            # Keras on JAX: one compiled step sees the whole global batch (split over devices by SPMD).
            return nt_xent(outputs, self.temperature)
        from psl_keras.distribute import gather_replicas  # TensorFlow's replica context

        return nt_xent(outputs, self.temperature, gather_replicas)
