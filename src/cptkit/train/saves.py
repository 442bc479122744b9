"""The hook that seals asynchronous checkpoints (`checkpoint: {async: true}`) as soon as their
background write is done, so that a crash later in the stage still finds them."""

from __future__ import annotations

from .hooks import Hook


class SealSaves(Hook):
    name = "saves"

    def on_step_end(self, run, stage, result) -> None:
        run.checkpoints.poll()  # all ranks agree the write is done; rank 0 then names the folder
