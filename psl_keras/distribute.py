"""tf.distribute strategies by name, and the logical-CPU split used to test multi-replica code.

`fit()` fails under MultiWorkerMirroredStrategy with Keras 3 here, so the trainer runs its own loop
(`strategy.run` on the stage model's `train_step`) under every strategy; this module only builds them.
"""

import json
import os

from psl_keras.errors import PSLError
from psl_keras.lazy import tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
    """Splits the physical CPU into `num_devices` logical devices (before TensorFlow initialises).

    Lets a 2-replica MirroredStrategy run on a machine without GPUs, which is how CI tests it.
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise PSLError(
            f"--cpu_replicas={num_devices} must be set before TensorFlow starts running ops; "
            f"it is already initialised with {len(tf.config.list_logical_devices('CPU'))} CPU device(s)."
        ) from None


def make_strategy(name, cpu_replicas=0):
    """Builds the strategy `name`; `cpu_replicas` > 1 splits the CPU first (testing without GPUs)."""
    if name not in STRATEGIES:
        raise PSLError(f"Unknown strategy {name!r}. Choose one of: {', '.join(STRATEGIES)} (--strategy).")
    split_cpu(cpu_replicas)
    if name == "multi_worker":
        # Must come before anything lists logical devices: collectives are configured at context start-up.
        return _multi_worker()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, RuntimeError) as err:
        raise PSLError(f"--strategy=tpu: no TPU found ({err}). Use mirrored or one_device.") from None
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker():
    if "TF_CONFIG" not in os.environ:
        raise PSLError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable on every worker, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'. See docs/training.md (Distributed training).'
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as err:
        raise PSLError(f"TF_CONFIG is not valid JSON ({err}).") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True on the worker that writes logs and files (always true outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_id(strategy):
    """This worker's index in its job (0 outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return (getattr(resolver, "task_id", None) or 0) if resolver is not None else 0


def gather_replicas(values):
    """`values` of every replica concatenated along axis 0 (replica 0 first), and this replica's offset in it.

    Called in a replica context (a train_step under `strategy.run`). Differentiable: the gradient that reaches
    a replica's slice comes back to that replica, so replica losses over gathered negatives sum to the
    single-device loss and gradient (SimCLR's cross-replica concat on TPUs).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values, 0
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    # all_reduce of one-hot placed slices: a sum, whose gradient is a sum too (works under every strategy).
    placed = tf.scatter_nd([[replica]], values[tf.newaxis], [context.num_replicas_in_sync, *values.shape])
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, placed)
    return tf.reshape(gathered, [-1, *values.shape[1:]]), replica * tf.shape(values)[0]
