"""`cpt run --nproc N`: torchrun on this machine, N ranks running `python -m cptkit run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import CptError
from .env import Dist, check_gpus
from ..recipe import load_recipe


def launch(recipe: Path, out: Path, resume: bool, nproc: int, peak_tflops: float | None = None) -> int:
    """Check the recipe here (a bad one is one line, exit 2, before any process starts), then run
    torchrun and return its exit status."""
    if not 1 <= nproc <= 1024:
        raise CptError(f"--nproc: {nproc} is not a number of processes from 1 to 1024")
    if "WORLD_SIZE" in os.environ:
        raise CptError("--nproc: already running under torchrun; drop --nproc (torchrun sets the ranks)")
    from ..build import check_world

    loaded = load_recipe(recipe)
    check_world(loaded, Dist(rank=0, world=nproc))  # the batch splits over the ranks
    if loaded.device == "cuda":
        check_gpus(nproc, "--nproc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "cptkit", "run", str(recipe), "--out", str(out), *(["--resume"] if resume else []),
           *(["--peak-tflops", str(peak_tflops)] if peak_tflops is not None else [])]
    # two CPU ranks sharing cores slow each other down many times unless each keeps to one thread
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.call(cmd, env=env)
