"""The run folder: which files a run holds, and every read and write of them. No TensorFlow here:
reading a run (``gradloop runs``, a resume's checks) is instant.

    RUN_DIR/
        run.json             what the run is and where it stands: ``status``, config, progress
        history.json, .csv   per epoch, in the tutorial's names; history.png its two panels
        model.keras          the last epoch's model; model.best.keras: the lowest val_loss epoch's
        model_summary.txt    model_source.py or model_initial.keras (what a resume builds from)
        checkpoints/         for --resume;  tensorboard/: event files;  cache/: decoded images
        run.lock             held by the one process writing the run: "PID HOST"
        report/, saved_model/    written later by ``gradloop report`` and ``gradloop export``

Which module owns what (import the module; each name has one home, nothing is re-exported here):

    files      the file names above, the path rule (own_path), whole-or-nothing writes, bounded reads
    history    Keras' names -> the tutorial's, one entry per epoch, run.json's progress and best epoch
    folder     RunDir: one run's run.json, history and status transitions; read_info; FORMAT, STATUSES
    schema     what run.json and history.json may hold, checked as read: a run may come from someone else
    lock       one process per run: the lock, its holder, "in use" refusals
    start      a new run's folder (check_new, claim, clear) or one to resume (check_resumable)

A model's files are written by :func:`gradloop.atomic.save_model`, TensorFlow's checkpoints by
:mod:`gradloop.loop.checkpoint` (fsynced, then recorded once complete).
"""
