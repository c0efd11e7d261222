"""``gradloop bench``: training throughput of the same loop written six ways, and by its peers.

In one process, on the same model, data, batch size and initial weights (:mod:`.variants`):

    eager           the tutorial's loop as written (GradientTape per batch, eager)
    tf.function     the tutorial's step under @tf.function, one call per batch
    keras spe=1     model.fit
    keras spe=32    model.fit with steps_per_execution=32
    gradloop        Trainer.fit with gradloop train's defaults on in-memory data (gradloop.InMemory:
                    step groups gathering their batches by index; XLA-compiled where a 10-epoch run
                    of this data would be; fused optimizer kernels)
    gradloop --jit  the same, always on XLA; timed only when asked for

and, with ``--peers`` or by name, the same training in other frameworks, each in a
process of its own so that their backends do not collide (:mod:`.peers`):
Keras ``fit`` on JAX (spe=1 and spe=32), a ``jax.jit`` step, the same step run 32 at a
time by ``jax.lax.scan``, and a PyTorch loop; each only where its package is installed.

The model is the reference MLP or, with ``--model cnn``, the bench CNN (conv 32, pool,
conv 64, pool, dense; not ``gradloop train``'s cnn), both described once by
``Workload.layers()``, from which every framework builds it.

Each variant is warmed up (traced) first, then timed for about ``seconds``;
the variants take turns over ``rounds`` rounds (in reverse order every other
round) and the median counts. A shared machine's speed swings between
rounds, so the ratios are paired: ``gradloop / X`` is the median over rounds
of that round's gradloop rate over that round's X rate, two measurements
taken seconds apart rather than two medians possibly taken at different speeds.

The limit is the model's matmul and convolution FLOPs per training sample against
the FLOP/s this machine reaches on exactly those products: per layer the forward
product and the weight gradient, and the input gradient for every layer but
the first (nothing needs the gradient of the data).

``--data DIR`` (:mod:`.data_bench`) times something else: gradloop's
``Trainer.fit`` on a folder of images streamed from disk, against the same
images decoded into memory, on the same model. Peak RSS is a process's
high-water mark, so each variant runs in a process of its own
(:mod:`.worker`), and a third one measures the baseline:
TensorFlow imported and the model built, no data.

The modules, one concern each:

    names       the variants' names and which to time: what the CLI imports (no TensorFlow, no peer framework)
    workload    the data, batch size and model a bench times (``Workload``, ``Layer``, the bench CNN)
    variants    the in-process ways to train, built on a workload
    memory      peak resident memory (``PeakRSS``), as the kernel keeps it
    limit       the machine's limit: FLOP/s on exactly the model's matmuls and convolutions
    runner      ``run_bench``: warm-up, interleaved rounds, paired ratios, the table
    data_bench  ``run_data_bench``: ``--data``, streamed against in memory, each in a worker process
    protocol    how bench talks to a process of its own, both ends (JSON lines)
    worker      ``python -m gradloop.bench.worker``: one ``--data`` variant in a process of its own
    peers       ``python -m gradloop.bench.peers``: one peer framework in a process of its own

TensorFlow and Keras are imported by the functions that build and time the variants, not with any of these
modules: the CLI lists ``names.VARIANTS`` in its help and checks ``--variants`` against them, which must not wait
for TensorFlow.
"""
