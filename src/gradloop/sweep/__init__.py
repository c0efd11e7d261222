"""``gradloop sweep SPEC.yaml``: a hyperparameter search on Optuna whose trials are ordinary runs.

spec.py      SPEC.yaml, read and checked (no TensorFlow)
study.py     the sweep folder, the Optuna study and its storage, and which process runs which trial
run.py       the loop: claim a trial, train it (gradloop.app.train.train), tell the study
page.py      the end: best.yaml, results.json and the sweep page

SWEEP/
    sweep.json           what the sweep is: its spec, its study's name and storage
    study.journal        the Optuna study (unless --storage names another)
    trial-000/ ...       one run directory per trial (evaluate, report, export work on each)
    best.yaml            the best trial's config, a ready --config file
    results.json, sweep.html, figures/
    .locks/              which process holds the sweep, and each trial
"""
