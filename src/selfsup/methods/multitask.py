"""Multi-task self-supervision (Doersch & Zisserman 2017, "Multi-task Self-Supervised Visual
Learning", arXiv 1708.07860).

One shared trunk (the backbone) and one head per pretext task, trained together: every task builds
its own inputs from the same raw view, encodes them with the trunk, and the loss is the weighted
sum of the task losses. Optionally each task reads a *lasso* combination of the trunk's stages
instead of its last one: task t gets sum_s alpha[t, s] * g_s(stage_s), where g_s projects stage
s's pooled feature map to a common width, and an L1 penalty lasso_penalty * sum |alpha| pushes
each task to rely on few stages, so tasks that want low-level features need not pull the last
stage towards them.

Tasks (``tasks``: a mapping name -> weight, or a list of names for weight 1 each):

* ``rotation``: which of 0/90/180/270 degrees (Gidaris, Singh & Komodakis 2018, arXiv
  1803.07728); all four rotations of every image, a linear classifier on the trunk's feature;
* ``jigsaw``: :class:`selfsup.methods.jigsaw.JigsawTask` (Noroozi & Favaro 2016);
* ``relative_position``: :class:`selfsup.methods.relative_position.RelativePositionTask`
  (Doersch et al. 2015).

``task_options`` passes keyword arguments to a task's head, e.g. ``{jigsaw: {num_permutations: 1000}}``.
The evaluated encoder is the trunk alone (its last stage, pooled).

Paper: ResNet-101 v2 trunk; tasks relative position, colourization, exemplar and motion
segmentation; the lasso over the outputs of the trunk's blocks; input "harmonization" (all tasks
see the same kind of input); each task trained on its own workers, their gradients applied to one
shared trunk. Deviations: our task set is the three above (colourization, exemplar and motion
segmentation are not included, and Transitive Invariance is not a task here because it needs a
graph over the whole data set and two views); all tasks run on one batch in one process; the
lasso mixes the four ResNet stages (pooled, projected by a linear map and BatchNorm without affine
parameters, so the scale of a stage's contribution lives in alpha alone) rather than every block;
alpha starts at 1 on the last stage and 0 elsewhere; no input harmonization.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.pretext import rotate_batch
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method
from selfsup.methods.jigsaw import Encoder, JigsawTask
from selfsup.methods.relative_position import RelativePositionTask


class RotationTask(nn.Module):
    """RotNet's task for any encoder: the four rotations of each image, a 4-way classifier."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.classifier = nn.Linear(feature_dim, 4)

    def forward(self, encode: Encoder, x: Tensor) -> dict[str, Tensor]:
        rotated, labels = rotate_batch(x)
        logits = self.classifier(encode(rotated))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}


TASKS: dict[str, type[nn.Module]] = {
    "rotation": RotationTask,
    "jigsaw": JigsawTask,
    "relative_position": RelativePositionTask,
}


def _task_weights(tasks: dict[str, float] | list[str] | None) -> dict[str, float]:
    if tasks is None:
        return {name: 1.0 for name in TASKS}
    weights = {name: 1.0 for name in tasks} if isinstance(tasks, (list, tuple)) else dict(tasks)
    unknown = [name for name in weights if name not in TASKS]
    if unknown or not weights:
        raise SelfSupError(f"multitask tasks {unknown or '(none)'} not available; choose from: {', '.join(TASKS)}, "
                           "e.g. method.tasks={rotation: 1.0, jigsaw: 1.0}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise SelfSupError(f"multitask weight of task {name!r} must be a number >= 0, got {w!r}")
    return {name: float(w) for name, w in weights.items()}


class MultiTask(Method):
    def __init__(self, backbone: nn.Module, tasks: dict[str, float] | list[str] | None = None,
                 task_options: dict[str, dict] | None = None, lasso: bool = False, lasso_penalty: float = 1e-3):
        super().__init__(backbone)
        self.weights = _task_weights(tasks)
        options = dict(task_options or {})
        stray = [name for name in options if name not in self.weights]
        if stray:
            raise SelfSupError(f"multitask task_options for {', '.join(stray)}, which is not among the tasks "
                               f"({', '.join(self.weights)})")
        heads = {}
        for name in self.weights:
            kw = dict(options.get(name) or {})
            valid = [p for p in inspect.signature(TASKS[name].__init__).parameters if p not in ("self", "feature_dim")]
            bad = [k for k in kw if k not in valid]
            if bad:
                raise SelfSupError(f"multitask task_options.{name}: unknown {', '.join(bad)}; valid: "
                                   f"{', '.join(valid) or '(none)'}")
            heads[name] = TASKS[name](backbone.out_dim, **kw)
        self.heads = nn.ModuleDict(heads)
        self.lasso, self.lasso_penalty = lasso, lasso_penalty
        if lasso:
            if not hasattr(backbone, "forward_stages"):
                raise SelfSupError("multitask lasso needs a backbone with forward_stages (the ResNets have it)")
            dims, width = backbone.stage_dims, backbone.out_dim
            self.stage_proj = nn.ModuleList(
                nn.Sequential(nn.Linear(c, width, bias=False), nn.BatchNorm1d(width, affine=False)) for c in dims)
            alpha = torch.zeros(len(self.weights), len(dims))
            alpha[:, -1] = 1.0
            self.alpha = nn.Parameter(alpha)

    def encoder_for(self, task: int) -> Encoder:
        """The function that turns a task's inputs into its features: the trunk, or its lasso mix."""
        if not self.lasso:
            return self.backbone

        def encode(x: Tensor) -> Tensor:
            stages = self.backbone.forward_stages(x)
            mixed = [self.alpha[task, s] * proj(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))
                     for s, (f, proj) in enumerate(zip(stages, self.stage_proj))]
            return torch.stack(mixed).sum(0)
        return encode

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        x = views[0]
        out: dict[str, Tensor] = {}
        loss = x.new_zeros((), dtype=torch.float32)
        for t, (name, head) in enumerate(self.heads.items()):
            result = head(self.encoder_for(t), x)
            loss = loss + self.weights[name] * result["loss"]
            out[f"{name}_loss"] = result["loss"].detach()
            out[f"{name}_accuracy"] = result["accuracy"]
        if self.lasso:
            penalty = self.alpha.abs().sum()
            loss = loss + self.lasso_penalty * penalty
            out["lasso_l1"] = penalty.detach()
        out["loss"] = loss
        return out
