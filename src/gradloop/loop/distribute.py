"""tf.distribute for gradloop: which strategy, who is chief, the global batch.

gradloop does not distribute anything itself: the step runs under
``strategy.run``, datasets go through ``strategy.experimental_distribute_dataset``
and Keras' optimizer all-reduces (sums) the gradients. What this module adds
is the arithmetic that makes the numbers equal a single-device run:

    loss_r = sum of replica r's per-example losses / global batch size
    sum over replicas of grad(loss_r) = grad(mean over the global batch)

which is exact even for the last, smaller batch that splits unevenly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import tensorflow as tf

from gradloop.errors import ConfigError


def configure_cpu_replicas(replicas: int | None) -> None:
    """Split the CPU into ``replicas`` logical devices (for MirroredStrategy on a
    machine without GPUs). Must run before TensorFlow touches a device."""
    if not replicas or replicas < 2 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        raise ConfigError(
            "CPU replicas can only be set before TensorFlow starts; call configure_cpu_replicas first"
        ) from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: the chief, or worker 0
    of a cluster without a chief, or any non-multi-worker process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """The processes training together: the workers (and chief) of a multi-worker
    strategy's cluster, else 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def any_worker(strategy: tf.distribute.Strategy, flags: Sequence[bool]) -> list[bool]:
    """Each of ``flags``, true if it is true on any worker of a multi-worker strategy.

    What one process sees alone (its clock, a signal sent to it) must become one
    decision of all workers when they act on it together, such as a checkpoint,
    whose save reads the replica-summed metrics by collectives: saved on one
    worker only, those pair with the others' next collectives (wrong numbers),
    and the last waits forever. So this is itself a collective (a small
    all-reduce), which every worker must call at the same points. In a single
    process (``default``, ``mirrored``) it returns ``flags`` unchanged.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [bool(f) for f in flags]
    summed = _sum_over_replicas(strategy)(tf.constant([int(bool(f)) for f in flags], tf.int32))
    return [int(n) > 0 for n in summed.numpy()]


@functools.cache  # one compiled function per strategy (run eagerly, the strategy warns of its overhead)
def _sum_over_replicas(strategy: tf.distribute.Strategy):
    def replica_sum(x: tf.Tensor) -> tf.Tensor:  # tf.distribute has no MAX: "any" is a sum above 0
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x))

    @tf.function
    def summed(x: tf.Tensor) -> tf.Tensor:
        return strategy.experimental_local_results(strategy.run(replica_sum, args=(x,)))[0]

    return summed


def global_batch_size(y: tf.Tensor) -> tf.Tensor:
    """The number of samples in this step across all replicas (float32).

    Inside ``strategy.run`` this all-reduces the local batch sizes; in the
    default strategy it is the local batch size."""
    local = tf.cast(tf.shape(y)[0], tf.float32)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return local
    return context.all_reduce(tf.distribute.ReduceOp.SUM, local)


def is_distributed(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` is a real one (Mirrored, MultiWorker, ...) rather
    than TensorFlow's default no-op strategy, whichever scope we are in."""
    return type(strategy) is not type(_DEFAULT_STRATEGY)


_DEFAULT_STRATEGY = tf.distribute.get_strategy()  # at import no scope is entered


def check_in_scope(strategy: tf.distribute.Strategy, variables, what: str) -> None:
    """Variables made outside ``strategy.scope()`` would not be mirrored: say so early."""
    if not is_distributed(strategy) or not variables:
        return
    first = variables[0]
    first = getattr(first, "value", first)
    if not strategy.extended.variable_created_in_scope(first):
        raise ValueError(f"the {what} was built outside strategy.scope(); build it inside `with strategy.scope():`")


def shard_by_data(data: tf.data.Dataset) -> tf.data.Dataset:
    """Every worker reads the same (same-seed) data and keeps its part of each
    global batch, so the batches are those of a single-device run."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def make_iterator(strategy: tf.distribute.Strategy, data: tf.data.Dataset):
    """An iterator over ``data``; under a real strategy, of its distributed
    batches (each worker keeps its part of every global batch)."""
    if not is_distributed(strategy):
        return iter(data)
    return iter(strategy.experimental_distribute_dataset(shard_by_data(data)))
