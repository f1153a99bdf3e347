"""One module per ``jbot`` command, each reading top to bottom: resolve the inputs once, open the MLflow run, call
the engine (``train/``, ``evaluate/``, ``anomaly/``: arrays in, arrays out), log what it returns.

``jbot/cli.py`` above declares the options and prints; the engine below never imports mlflow or optuna; the
adapters (``tracking/`` for MLflow, ``sweeps/`` for Optuna) are called from here. See docs/ARCHITECTURE.md.
"""
