"""Checkpoints: what a resume restores, named in one place (when one is saved:
:mod:`gradloop.loop.callbacks.checkpointing`).

A checkpoint (``RUN_DIR/checkpoints/ckpt-N``) is this bundle:

    model      the weights
    optimizer  its variables: step count, learning rate, moments
    rng        the model's Keras seed generators (Dropout & co. draw the same numbers again)
    metrics    the running sums of the epoch in progress (its loss and accuracy so far)
    iterator   the data's position: the rest of this epoch's order (or the next epoch's)
    epoch, step, seconds, history   the trainer's LoopState, history as JSON

A distributed iterator (``tf.distribute``) cannot be saved, and in-memory data
(:class:`gradloop.loop.in_memory.InMemory`) has none; then the position is rebuilt on
restore as ``train(epoch).skip(step)``, which is exact for training data given
as ``epoch -> dataset`` or ``InMemory``.

so that a run stopped after any step group and resumed computes what it would
have computed without the stop: bit for bit under ``--deterministic``, given
training data whose every epoch can be rebuilt (``data.shuffled_epochs``).

``tf.train.CheckpointManager`` writes each checkpoint under a new number, we
fsync its files, and only then does it record it as the latest, by an atomic
rename of its ``checkpoint`` file (fsynced too): a process killed, or a machine
losing power, at any instant leaves a complete latest checkpoint. A full disk
raises :class:`~gradloop.errors.DiskFullError` and leaves no part of the new
checkpoint. A latest checkpoint damaged on the disk all the same (a flipped bit,
a truncated file) is skipped on restore for the newest one that reads correctly.

Under a multi-worker strategy every worker saves at the same steps (the save
reads replica-summed metrics by collectives): the chief into the run
directory, the others into scratch folders; on resume all of them restore the
chief's checkpoint (``restore_from``). Whether to save or stop is decided
together (:class:`~gradloop.loop.callbacks.checkpointing.Checkpointing`), whatever one
worker's clock or signals say.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from gradloop import atomic
from gradloop.errors import CheckpointError, DiskFullError, shortened, tensorflow_reason
from gradloop.loop import in_memory, keras_steps
from gradloop.loop.state import LoopState
from gradloop.loop.trainer import TrainData, Trainer

_NAME = "ckpt"  # checkpoints are RUN_DIR/checkpoints/ckpt-N.index and .data-*


class RunCheckpoint:
    """Save and restore a :class:`Trainer` and its :class:`LoopState` under ``directory``.

    >>> ckpt = RunCheckpoint(run_dir / "checkpoints", trainer)
    >>> state = ckpt.restore(train_ds) if ckpt.latest else None
    >>> trainer.fit(train_ds, epochs=10, initial_state=state, callbacks=[Checkpointing(ckpt)])

    ``restore_from`` is where :meth:`restore` and :attr:`latest` look when that
    is not ``directory``: a multi-worker run's other workers resume from the
    chief's checkpoints and save into their own scratch folders. ``hint`` ends
    the error (:class:`~gradloop.errors.CheckpointError`) when no checkpoint can be restored:
    how the caller starts over.
    ``max_to_keep`` checkpoints are kept, so that a damaged latest one has older
    ones to fall back to (:meth:`restore`).
    """

    def __init__(
        self,
        directory: str | Path,
        trainer: Trainer,
        *,
        max_to_keep: int = 3,
        restore_from: str | Path | None = None,
        hint: str = "start training again from the beginning",
    ) -> None:
        self.trainer, self.hint = trainer, hint
        self.restore_from = str(restore_from or directory)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._history = tf.Variable("{}", dtype=tf.string, trainable=False)
        weights = {id(w) for w in trainer.model.weights}
        self._bundle = tf.train.Checkpoint(
            model=trainer.model,
            optimizer=trainer.optimizer,
            rng=[v for v in trainer.model.variables if id(v) not in weights],
            metrics=[],  # filled in once built: Keras makes its metrics' variables on the first batch
            epoch=self._epoch,
            step=self._step,
            seconds=self._seconds,
            history=self._history,
            **keras_steps.checkpoint_parts(trainer),  # a model's own step: its optimizers and seed generators by name
        )
        self._state_set_aside = _set_aside_unreadable_state(Path(directory))
        self.manager = tf.train.CheckpointManager(
            self._bundle, str(directory), max_to_keep=max_to_keep, checkpoint_name=_NAME
        )

    @property
    def latest(self) -> str | None:
        """The checkpoint :meth:`restore` loads: the path prefix of the newest
        complete one in ``restore_from``, or None."""
        return next(iter(self.checkpoints()), None)

    def save(self, state: LoopState) -> str:
        if isinstance(state.iterator, tf.__internal__.tracking.Trackable):  # else distributed: see restore
            self._bundle.iterator = state.iterator
        self._epoch.assign(state.epoch)
        self._step.assign(state.step)
        self._seconds.assign(state.seconds)
        self._history.assign(json.dumps(state.history))
        self._bundle.metrics = self._metric_variables()
        directory = Path(self.manager.directory)
        # Our callback runs before the manager's own, which records the checkpoint as the latest.
        durable = tf.train.CheckpointOptions(experimental_write_callbacks=[_sync_checkpoint])
        try:
            path = self.manager.save(options=durable)
            atomic.sync(directory / "checkpoint")  # TensorFlow renames the state file in without an fsync
            atomic.sync(directory)
        except (tf.errors.OpError, OSError) as exc:
            if not _no_space(exc):
                raise
            prefix = directory / f"{_NAME}-{int(self._bundle.save_counter.numpy())}"
            # Whole ones the state file records stay: the file on disk, as the manager lists a checkpoint
            # before it writes the record, and that write may be the one that found no space.
            recorded = self._recorded(directory)
            if recorded is None or prefix.name not in {Path(p).name for p in recorded.all_model_checkpoint_paths}:
                _remove_partial(prefix)
            for leftover in directory.glob("checkpoint.tmp*"):  # the state file's half-written temporary
                leftover.unlink()
            raise _disk_full(exc, prefix) from None
        return path

    def _metric_variables(self) -> list[tf.Variable]:
        return [v for m in (self.trainer.loss_tracker, *self.trainer.metrics) if m is not None for v in m.variables]

    def checkpoints(self) -> list[str]:
        """The checkpoints in ``restore_from``, newest first: those its state file records, then
        any other whose index is there (all of those, the state file unreadable)."""
        numbered = (p.with_suffix("") for p in Path(self.restore_from).glob(f"{_NAME}-*.index"))
        by_name = [
            str(p) for p in sorted(numbered, key=lambda p: _number(p.name), reverse=True) if _number(p.name) >= 0
        ]
        recorded = self._recorded()
        if recorded is None:
            return by_name
        older = [p for p in reversed(recorded.all_model_checkpoint_paths) if p != recorded.model_checkpoint_path]
        listed = [recorded.model_checkpoint_path, *older]
        return listed + [
            p for p in by_name if p not in listed
        ]  # a state file naming lost checkpoints: the rest by name

    def _recorded(self, directory: str | Path | None = None) -> Any:
        """The state file's record (a ``CheckpointState``) in ``directory`` (``restore_from`` by default),
        or None when it is missing or unreadable."""
        try:
            recorded = tf.train.get_checkpoint_state(str(directory or self.restore_from))
        except (tf.errors.OpError, ValueError):
            return None
        return recorded if recorded is not None and recorded.model_checkpoint_path else None

    def restore(self, train: TrainData, *, notify: Callable[[str], None] | None = None) -> LoopState:
        """Load the newest checkpoint that reads correctly into the trainer; returns where to continue.

        ``train`` must be the run's own training data (same arrays, batch size
        and seed): the saved iterator position is a position in it.

        A checkpoint that cannot be read (truncated, a flipped bit: TensorFlow checks each
        tensor's CRC32C, an index that is garbage) is skipped for the one before it, and
        ``notify`` told so in one line. Training on from an older checkpoint recomputes the
        steps since, the very same ones. Only when none reads is it an error.
        """
        candidates = self.checkpoints()
        if not candidates:
            raise CheckpointError(f"{self.restore_from} holds no checkpoint; {self.hint}")
        skipped: list[tuple[str, Exception]] = []
        for path in candidates:
            try:
                state = self._restore(path, train)
            except _Unreadable as unreadable:
                skipped.append((path, unreadable.cause))
                continue
            notes = [f"skipped {_listed(skipped)}, which cannot be read"] if skipped else []
            state_file = Path(self.restore_from) / "checkpoint"
            if self._recorded() is None:
                why = "cannot be read" if state_file.exists() or self._state_set_aside else "is missing"
                notes.insert(0, f"{state_file} {why}, so the checkpoints were found by their names")
            if notes and notify is not None:
                notify(
                    f"{'; '.join(notes)}; resuming from {Path(path).name}, the newest checkpoint that reads "
                    f"correctly (epoch {state.epoch + 1} step {state.step})"
                )
            return state
        raise _damaged(skipped, self.hint)

    def _restore(self, path: str, train: TrainData) -> LoopState:
        """Verify the checkpoint ``path``, every tensor of it, then load it into the trainer;
        :class:`_Unreadable` when it cannot be read (the data's own errors go through)."""
        try:
            saved = tf.train.load_checkpoint(path)
            for key, dtype in saved.get_variable_to_dtype_map().items():  # reading a tensor checks its CRC32C
                if dtype != tf.variant:  # the iterator's state: the reader cannot return it, the restore checks it
                    saved.get_tensor(key)
            epoch, step = (int(saved.get_tensor(f"{k}/.ATTRIBUTES/VARIABLE_VALUE")) for k in ("epoch", "step"))
        except _DAMAGED as exc:
            raise _Unreadable(exc) from None
        data = train(epoch) if callable(train) else train  # the saved epoch's order
        self.trainer.build(data)  # the variables must exist to be restored into
        # In-memory data's position is its step: an epoch's order comes from the seed and the epoch alone
        # (a dataset's saved position, from before it was held in memory, says the same).
        restore_position = saved.has_tensor("iterator/.ATTRIBUTES/ITERATOR_STATE") and not isinstance(
            data, in_memory.Epoch
        )
        if restore_position:
            iterator = self._bundle.iterator = self.trainer.make_iterator(data)  # the position is restored into it
        else:
            iterator = self.trainer.make_iterator(data.skip(step))
        tracker, metrics = self.trainer.loss_tracker, self._metric_variables()
        self._bundle.metrics = metrics
        saved_dtype = saved.get_variable_to_dtype_map().get("metrics/0/.ATTRIBUTES/VARIABLE_VALUE")
        float32_sums = (
            saved_dtype == tf.float32 and tracker is not None and tracker.dtype == "float64"
        )  # saved before the loss summed in float64
        if float32_sums:
            with self.trainer.strategy.scope():
                stand_in = keras.metrics.Mean(name="loss")  # as they were saved, split over replicas alike
            self._bundle.metrics = [*stand_in.variables, *metrics[len(tracker.variables) :]]
        try:
            restored = self._bundle.restore(path)
            if isinstance(data, in_memory.Epoch):
                restored.assert_existing_objects_matched()  # a saved dataset position, if any, is left unread
            else:
                restored.assert_consumed()
            history = json.loads(self._history.numpy().decode("utf-8"))
        except _DAMAGED as exc:
            raise _Unreadable(exc) from None
        finally:
            self._bundle.metrics = metrics
        if float32_sums:
            _copy_per_replica(self.trainer.strategy, stand_in.variables, tracker.variables)
        return LoopState(
            epoch=int(self._epoch.numpy()),
            step=int(self._step.numpy()),
            iterator=iterator,
            history=history,
            seconds=float(self._seconds.numpy()),
        )


def _copy_per_replica(strategy: tf.distribute.Strategy, sources: list, targets: list) -> None:
    """Each replica's own value of ``sources`` into ``targets``, cast (summed metric variables
    cannot be assigned outside a replica)."""

    @tf.function
    def copy():
        strategy.run(lambda: [t.assign(tf.cast(s, t.dtype)) for s, t in zip(sources, targets)])

    copy()


def _sync_checkpoint(save_path: str) -> None:
    """Flush a checkpoint's files and folder to the disk, before it is recorded as the latest."""
    for file in Path(save_path).parent.glob(f"{Path(save_path).name}.*"):
        atomic.sync(file)
    atomic.sync(Path(save_path).parent)


def _no_space(exc: Exception) -> bool:
    """Whether a write failed for a full disk or quota: an OSError, or TensorFlow's own error for it."""
    if isinstance(exc, OSError):
        return exc.errno in atomic.NO_SPACE
    return isinstance(exc, tf.errors.OpError) and atomic.no_space_in(exc.message) is not None


def _disk_full(exc: Exception, prefix: Path) -> DiskFullError:
    if isinstance(exc, OSError):
        code = exc.errno
    else:
        code = atomic.no_space_in(exc.message)[1]
    return atomic.disk_full(prefix, code, kind="checkpoint")


def _remove_partial(prefix: Path) -> None:
    """The files of a checkpoint whose write failed: none may stay under a checkpoint's name."""
    for leftover in prefix.parent.glob(f"{prefix.name}[._]*"):  # ckpt-N.index, ckpt-N.data-*, ckpt-N_temp/
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# What TensorFlow raises for a truncated, overwritten or foreign checkpoint (a short
# read surfaces as IndexError: "Read less bytes than requested").
_DAMAGED = (tf.errors.OpError, AssertionError, ValueError, IndexError, KeyError, EOFError, UnicodeDecodeError)


class _Unreadable(Exception):
    """A checkpoint that cannot be restored; ``cause`` says why."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _set_aside_unreadable_state(directory: Path) -> bool:
    """CheckpointManager parses the state file as it is made: an unreadable one is renamed
    ``checkpoint.unreadable`` (returns True), and the checkpoints are then found by their names."""
    try:
        tf.train.get_checkpoint_state(str(directory))
    except (tf.errors.OpError, ValueError):  # UnicodeDecodeError is a ValueError
        state = directory / "checkpoint"
        os.replace(state, state.with_name("checkpoint.unreadable"))
        return True
    return False


def _damaged(skipped: list[tuple[str, Exception]], hint: str) -> CheckpointError:
    """None of the checkpoints (newest first) restores: the newest named in full, the older ones by name."""
    (path, exc), older = skipped[0], skipped[1:]
    same = lambda p, e: _reason(e, p) == _reason(exc, path).replace(Path(path).name, Path(p).name)  # noqa: E731
    reasons = ", ".join(f"{Path(p).name} ({'the same' if same(p, e) else _reason(e, p)})" for p, e in older)
    return CheckpointError(
        f"cannot restore checkpoint {path} ({_reason(exc, path)}){f' nor the older {reasons}' if older else ''}; "
        f"{'they are' if older else 'it is'} damaged or from another model: {hint}"
    )


def _reason(exc: Exception, path: str) -> str:
    """Why checkpoint ``path`` did not restore, in a few words: the exception's type and first line,
    without TensorFlow's op names, naming the checkpoint by its name, and cut before the checksums' digits."""
    text = re.sub(r": stored \d+ vs\. calculated.*", "", tensorflow_reason(exc, first_line=True) or "no detail")
    text = text.replace(str(path), Path(path).name)
    return f"{type(exc).__name__}: {shortened(text, 160, at_word=True)}"


def _listed(skipped: list[tuple[str, Exception]]) -> str:
    return ", ".join(f"{Path(path).name} ({_reason(exc, path)})" for path, exc in skipped)


def _number(name: str) -> int:
    """N of ``ckpt-N``; -1 for another name."""
    number = name.rpartition("-")[2]
    return int(number) if number.isdigit() else -1
