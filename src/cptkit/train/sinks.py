"""Where metrics go besides metrics.jsonl (which is always written): `loggers: [tensorboard, wandb]`.

Every record the run writes (each step's fields, every evaluation, checkpoints, stage events)
reaches every sink. Numbers become scalars tagged `<kind>/<field>` (nested fields joined by `/`:
`eval/val_loss/wiki`) at the record's global `step`; a record's stage goes along as text for
stage-level events. A resumed run cuts metrics.jsonl back to its checkpoint's length; TensorBoard's
event files are then written anew from what is left, so they hold exactly what the log holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import CptError

TEXT_KINDS = ("upscale", "merge", "context", "checkpoint")  # stage events: also shown as text


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a record, tagged by their path (`eval/val_loss/wiki`)."""
    out = {}
    for key, value in record.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, bool) or key in ("step", "kind"):
            continue
        if isinstance(value, (int, float)) and value is not None:
            out[tag] = float(value)
        elif isinstance(value, dict):
            out |= scalars(value, tag)
    return out


class TensorBoardSink:
    """Event files in `<out>/tensorboard`, through torch's SummaryWriter."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise CptError("loggers: tensorboard is not installed; pip install tensorboard (or drop it from "
                           "`loggers`)") from None
        self.folder, self._make, self.writer = Path(folder), SummaryWriter, None

    def write(self, record: dict) -> None:
        if self.writer is None:
            self.writer = self._make(str(self.folder), flush_secs=10)
        step, kind = int(record.get("step", 0) or 0), record.get("kind", "record")
        for tag, value in scalars(record).items():
            self.writer.add_scalar(f"{kind}/{tag}", value, step)
        if kind in TEXT_KINDS or (kind == "eval" and record.get("tag") in ("start", "end")):
            what = {k: v for k, v in record.items() if k not in ("val_loss", "position_loss", "position_edges")}
            self.writer.add_text(f"events/{kind}", str(what), step)

    def rewind(self, records: list[dict]) -> None:
        """The event files of exactly these records (what metrics.jsonl holds after a resume cut it)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        for record in records:
            self.write(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink:
    """Weights & Biases: offline (files under `<out>/wandb`, `wandb sync` uploads them) unless the
    environment sets WANDB_MODE; one run per run folder, resumed by its id."""

    def __init__(self, folder: Path, name: str):
        try:
            import wandb
        except ImportError:
            raise CptError("loggers: wandb is not installed; pip install wandb (or drop it from `loggers`)") from None
        self.wandb, self.folder, self.name, self.run = wandb, Path(folder), name, None

    def write(self, record: dict) -> None:
        if self.run is None:
            import os

            self.folder.mkdir(parents=True, exist_ok=True)
            self.run = self.wandb.init(dir=str(self.folder), project="cpt", name=self.name, id=self.name,
                                       resume="allow", mode=os.environ.get("WANDB_MODE", "offline"))
        kind = record.get("kind", "record")
        self.run.log({f"{kind}/{tag}": v for tag, v in scalars(record).items()}, step=int(record.get("step", 0) or 0))

    def rewind(self, records: list[dict]) -> None:
        pass  # W&B keeps a step's last values; a resumed run logs the same steps again

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_sinks(loggers: list[str], out: Path, run_name: str) -> list:
    sinks = []
    if "tensorboard" in loggers:
        sinks.append(TensorBoardSink(out / "tensorboard"))
    if "wandb" in loggers:
        sinks.append(WandbSink(out / "wandb", run_name))
    return sinks
