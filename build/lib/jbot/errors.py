"""The one base class of errors caused by the user's input or environment.

The CLI turns any ``JbotError`` into one line on stderr and exit code 2. This module imports nothing, so an error
exit never waits for torch, MLflow or Optuna to load.
"""

from __future__ import annotations


class JbotError(Exception):
    """A problem the user can fix (input, configuration, environment); its message says what and where."""
