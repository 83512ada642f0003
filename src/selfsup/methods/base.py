"""What every method is: an ``nn.Module`` with a ``training_step`` and optional hooks.

The trainer knows nothing of any method: it builds views with the method's recipe, calls
``training_step(views, index)`` under autocast, back-propagates ``out["loss"]`` and steps the
optimizer, and calls the hooks. A method's non-parameter state (queues, memory banks, prototypes,
cluster assignments, EMA copies) lives in registered buffers or modules, so checkpoints,
``.to(device)`` and DDP see it.

Contracts with the trainer:

- ``training_step`` returns ``{"loss": scalar, ...}``. Other scalar tensors are logged. A
  non-scalar tensor under ``"embeddings"`` (B, D), detached (e.g. the projections of one view),
  feeds the collapse monitor, which logs ``collapse_std`` and ``effective_rank`` every
  ``train.collapse_every`` steps and warns once when they fall towards 0 and 1.
- ``on_epoch_start`` runs only when an epoch starts from its first batch; a run resumed in the
  middle of an epoch does not re-run it. So whatever it computes (E-step cluster labels, a
  refreshed bank) must be stored in buffers: the checkpoint brings it back.
- ``on_step_end`` runs after each optimizer step that happened. A step skipped for a non-finite
  loss or gradient does not call it, so EMA copies and queues see only good steps.
- Exact resume: the whole ``state_dict`` is saved and restored, with every RNG (Python, NumPy,
  torch, CUDA) and the augmentation generator. Randomness drawn from those is reproduced; a
  method must not keep its own ``torch.Generator`` or other state outside buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Context:
    """What the trainer tells a hook about where training stands."""

    epoch: int
    step: int  # optimizer steps done so far (global, across epochs)
    total_steps: int
    steps_per_epoch: int
    epochs: int
    device: torch.device
    # Iterates the whole training set without augmentation: (normalized float images, labels, index).
    eval_batches: Callable[[], Iterator[tuple[Tensor, Tensor, Tensor]]] | None = None
    dataset_size: int = 0
    log: dict[str, float] = field(default_factory=dict)  # hook outputs worth logging
    # A hook that re-initialises parameters (DeepCluster's classifier) drops their stale state here.
    optimizer: torch.optim.Optimizer | None = None

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


class Method(nn.Module):
    """Base class: holds ``backbone`` (the encoder that evaluation uses) and no-op hooks."""

    # With several processes and ``model.sync_bn``, BatchNorm normalizes over the global batch.
    # A method whose BatchNorm must stay per process (MoCo's shuffle-BN) sets this to False.
    global_bn: bool = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        """``{"loss": scalar}`` plus scalars to log and, optionally, detached ``"embeddings"`` (B, D)."""
        raise NotImplementedError

    def forward(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        # The trainer calls the module itself so that DDP's forward hooks see the step.
        return self.training_step(views, index)

    def on_epoch_start(self, ctx: Context) -> None:
        """Called before each epoch's first batch (E-steps of clustering methods, bank warm-up);
        not called again when a run resumes mid-epoch, so results must live in buffers."""

    def on_step_end(self, ctx: Context) -> None:
        """Called after each optimizer step (EMA/momentum updates, queue pushes)."""

    def epoch_order(self, order: Tensor) -> Tensor:
        """The data set indices of the current epoch, in the order they are batched, given the
        loader's shuffled permutation ``order`` (N,). The default keeps it; a method that samples
        its own way (DeepCluster, uniformly over its clusters) returns another N indices. Called
        after ``on_epoch_start`` and again on a mid-epoch resume, so it must depend only on
        ``order`` and buffers."""
        return order

    # For train.budget_minutes: the trainer's probe times one on_epoch_start call at this epoch
    # (step 0) as the cost of the hooks' costly work, and plans it hook_runs(...) times.
    hook_probe_epoch: int = 0
    # Start-up phases counted in epochs or optimizer steps, as (attribute, "epochs" | "steps"): a
    # budgeted run caps each at a share of its planned steps (selfsup.train.budget.startup_phases)
    # and sets the attribute to the capped value before its first step and again on resume.
    startup_phases: tuple[tuple[str, str], ...] = ()

    def hook_runs(self, epochs: int, total_steps: int, steps_per_epoch: int) -> int:
        """How many times a run of ``total_steps`` optimizer steps over ``epochs`` epochs does the
        hooks' costly work (an E-step, a relabelling, a bank refresh): once per epoch unless a method
        says otherwise (every N epochs, after warm-up epochs, at scheduled steps, once)."""
        return epochs
