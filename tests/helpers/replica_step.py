"""Runs the same PSL stage step on one replica and on two (logical CPU) replicas; prints the difference.

Usage: python replica_step.py SYNC_BN(0|1). Prints JSON {"max_abs_diff": ..., "loss_diff": ..., "replicas": 2}.
Environment: STEPS (default 3); TASK (rotation, or simclr: NT-Xent with negatives gathered from every replica);
LOCAL_NEGATIVES=1 replaces that gather by the replica's own rows (to show the comparison notices).
Must run in a fresh process: the CPU is split into two logical devices before TensorFlow starts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from psl_keras import distribute  # noqa: E402

distribute.split_cpu(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from psl_keras import stages  # noqa: E402
from psl_keras.backbones import backbone_blocks, build_backbone  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402

GLOBAL_BATCH = 16
TASK = os.environ.get("TASK", "rotation")
if os.environ.get("LOCAL_NEGATIVES") == "1":
    distribute.gather_replicas = lambda values: (values, 0)
# Large enough that weight decay counted once per replica instead of once in all would show (~1e-3).
WEIGHT_DECAY = 0.05


def build(strategy, sync_bn):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        backbone = build_backbone("resnet18", 32, width=0.125, sync_bn=sync_bn)
        blocks = backbone_blocks(backbone)
        task = build_task(TASK, 32, head_hidden=16, sync_bn=sync_bn)
        stage = stages.stage_plan("psl", 3)[1]
        head = task.build_head(stage.level, blocks[3].output.shape[-1], name="g2")
        model = stages.StageModel(blocks, stage, head, task, GLOBAL_BATCH, weight_decay=WEIGHT_DECAY)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
        model.optimizer.build(model.stage_variables)
    return task, stage, model, blocks + [head]


def batch(task, level):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (GLOBAL_BATCH, 32, 32, 3), dtype=np.uint8)
    pairs = [task.preprocess(tf.constant(im), tf.constant([1, i], tf.int64), level) for i, im in enumerate(images)]
    inputs = tf.nest.map_structure(lambda *t: tf.stack(t), *[p[0] for p in pairs])
    labels = tf.stack([p[1] for p in pairs])
    transform = task.batch_transform(level)
    if transform is None:
        return inputs, labels
    views, labels = transform(inputs, labels)
    # Uniform-noise views instead of the ladder's: smooth upscaled crops of tiny images make Keras's synchronised
    # BatchNorm (E[x^2] - E[x]^2 in float32) ill-conditioned, so 1 and 2 replicas then differ by ~1e-3 whatever
    # the loss (measured with a per-example loss too); the ladder is tested on its own elsewhere.
    return tf.random.stateless_uniform(views.shape, [1, 2]), labels


def run(strategy, sync_bn, steps=int(os.environ.get("STEPS", 3))):
    task, stage, model, layers = build(strategy, sync_bn)
    inputs, labels = batch(task, stage.level)
    per_replica = GLOBAL_BATCH // strategy.num_replicas_in_sync

    def shard(ctx):
        i = ctx.replica_id_in_sync_group
        return inputs[i * per_replica:(i + 1) * per_replica], labels[i * per_replica:(i + 1) * per_replica]

    @tf.function
    def step(data):
        return strategy.run(model.train_step, args=(data,))

    losses = []
    for _ in range(steps):
        sums = step(strategy.experimental_distribute_values_from_function(shard))
        losses.append(float(strategy.reduce(tf.distribute.ReduceOp.SUM, sums["loss"], axis=None)))
    run.last_model = model
    return [keras.ops.convert_to_numpy(w) for layer in layers for w in layer.weights], losses


def main():
    sync_bn = sys.argv[1] == "1"
    one, one_losses = run(tf.distribute.OneDeviceStrategy("/cpu:0"), sync_bn)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two, two_losses = run(mirrored, sync_bn)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    loss_diff = max(abs(a - b) for a, b in zip(one_losses, two_losses))
    result = {"max_abs_diff": diff, "loss_diff": loss_diff, "losses": one_losses,
              "replicas": mirrored.num_replicas_in_sync}
    if TASK == "simclr" and os.environ.get("LOCAL_NEGATIVES") != "1":
        # The same comparison with each replica's own rows as its only negatives: it must notice.
        gather = distribute.gather_replicas
        distribute.gather_replicas = lambda values: (values, 0)
        local, local_losses = run(mirrored, sync_bn)
        distribute.gather_replicas = gather
        result["local_max_abs_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(one, local))
        result["local_loss_diff"] = max(abs(a - b) for a, b in zip(one_losses, local_losses))
    state = run.last_model.task_state
    if state is not None:  # MoCo: every replica's copy of the queue and key encoder must stay the same
        # (The key encoder's BatchNorm moving statistics are left out: it normalises with batch statistics only,
        # so each replica's copy follows its own keys and nothing reads them.)
        copies = [state.queue.value.values, state.queue_pointer.value.values] + [
            k.value.values for k, q in state.weight_pairs() if q.trainable]
        result["copies_equal"] = all(all(np.array_equal(c[0].numpy(), x.numpy()) for x in c[1:]) for c in copies)
        result["queue_pointer"] = int(state.queue_pointer.numpy())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
