"""What a checkpoint carries for an exact resume beside the weights and the loader's position: the global
random streams (dropout draws from them), and a schedule that is the resumed run's own."""

from __future__ import annotations

import torch


def save_random_state(checkpoint: dict) -> None:
    """Store torch's (and CUDA's) global random state in ``checkpoint``."""
    checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()


def restore_random_state(checkpoint: dict) -> None:
    """Continue the random streams ``checkpoint`` stored (CUDA's where the device count matches)."""
    states = checkpoint.get("rng_states", {})
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def keep_this_runs_schedule(checkpoint: dict) -> None:
    """The step count comes from the checkpoint, the schedule's length and warm-up not (``trainer.max_steps``
    may have grown since; LambdaLR would restore the old run's)."""
    for scheduler in checkpoint.get("lr_schedulers", []):
        if "lr_lambdas" in scheduler:
            scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])
