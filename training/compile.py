"""`torch.compile` for the training step: one graph, compiled once, whatever the routing.

    model = compile_model(raw_model)          # what the Trainer does with --compile / TrainConfig.compile

The MoE's sort dispatch (components/moe.py) splits the sorted tokens by each expert's count, which the
host reads with `counts.tolist()`. By default Dynamo breaks the graph there (a tensor's VALUES become
Python ints), and then specialises the graph after it on those ints: a recompile whenever the split sizes
change, i.e. on nearly every step, until the recompile limit sends it back to eager. With
`capture_scalar_outputs` the counts become unbacked symbolic sizes instead: the split, the experts'
matmuls and the backward are compiled once for any sizes, zero included (an idle expert is an empty
slice). Capacity (`capacity_factor`) keeps a data-dependent number of slots (a boolean-mask index), for
which `capture_dynamic_output_shape_ops` does the same.

The fused head + loss of training/fast_head.py is an eager-CPU device (a data-dependent branch inside an
autograd.Function would break the graph); `head_loss_for` returns None for a compiled model, so the
compiler sees, and fuses, the textbook head + F.cross_entropy.

Both settings are process-wide Dynamo flags (as torch's own docs set them); they change nothing for a
model that is not compiled.
"""

from __future__ import annotations

import torch
from torch import nn


def allow_data_dependent_sizes() -> None:
    """Let Dynamo trace `.tolist()` of the expert counts and a boolean-mask index as symbolic sizes."""
    torch._dynamo.config.capture_scalar_outputs = True
    torch._dynamo.config.capture_dynamic_output_shape_ops = True


def compile_model(model: nn.Module, **options) -> nn.Module:
    """`torch.compile(model, **options)` with the settings above: no graph break, no recompile per routing."""
    allow_data_dependent_sizes()
    return torch.compile(model, **options)


def is_compiled(model: nn.Module) -> bool:
    """True if `model`, or a wrapper layer of it (DDP's .module), is a torch.compile'd module."""
    while isinstance(model, nn.Module):
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            return True
        model = getattr(model, "module", None)
    return False
