"""An SQLite store that breaks in the middle of a command (damaged, made read-only, locked) as one line naming its
file, instead of MLflow's traceback. MLflow-free: the CLI asks this about any exception it did not expect."""

from __future__ import annotations

from jbot.io import exception_chain, stores

# SQLite's own words -> what they mean to the user
PROBLEMS = {
    "file is not a database": "is not an SQLite database (another kind of file, or damaged)",
    "database disk image is malformed": "is damaged",
    "attempt to write a readonly database": "is read-only",
    "readonly database": "is read-only",
    "unable to open database file": "cannot be opened (its folder is missing or not writable)",
    "database is locked": "is locked by another process for longer than MLflow waits",
}


def store_problem(exc: BaseException) -> str | None:
    """One line for an SQLite error of a store this process uses; None for anything else."""
    for err in exception_chain(exc):
        text = str(err).lower()
        meaning = next((m for words, m in PROBLEMS.items() if words in text), None)
        if meaning is not None and ("sqlite" in type(err).__module__ or "sqlite" in text):
            where = str(stores()[-1]) if stores() else "(SQLite)"
            return (f"the MLflow store {where} {meaning}: move it away to start a new store there, or pass "
                    "--tracking-uri to use another")
    return None
