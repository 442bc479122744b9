"""Warnings and notes for the user: one line on stderr, printed above any progress bar."""

from __future__ import annotations

import sys

from tqdm import tqdm


def warn(message: str) -> None:
    tqdm.write("cpt: warning: " + " ".join(message.split()), file=sys.stderr)


def note(message: str) -> None:
    tqdm.write("cpt: " + " ".join(message.split()), file=sys.stderr)
