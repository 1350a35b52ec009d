"""torch.compile of the training step (training/compile.py): no graph break, no recompile per routing.

On TINY with a 256-token vocabulary, one thread: each test under 30 s on a loaded 2-core CPU (most of it
the one compile of forward + backward).
"""

from __future__ import annotations

import copy

import pytest
import torch
from training_helpers import VOCAB, tiny_cfg, train_cfg

from components.deepseek_model import DeepSeekModel
from trainer import train_step
from training.compile import compile_model, is_compiled
from training.fast_head import head_cross_entropy, head_loss_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.compile imports torch.jit

B, T = 2, 64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from an empty compile cache, and leaves Dynamo's flags as it found them."""
    config = torch._dynamo.config
    saved = (config.capture_scalar_outputs, config.capture_dynamic_output_shape_ops, config.error_on_recompile)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    config.capture_scalar_outputs, config.capture_dynamic_output_shape_ops, config.error_on_recompile = saved
    torch._dynamo.reset()
    torch.set_num_threads(threads)


class ListBatches:
    """`batches.next()` over a fixed list, as train_step reads a TrainBatches."""

    def __init__(self, pairs):
        self.pairs, self.i = pairs, 0

    def next(self):
        self.i += 1
        return self.pairs[self.i - 1]


def batch(seed: int, constant: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(VOCAB, (B, T), generator=g)
    if constant:
        x[:] = 7            # every token the same: they all pick the same K experts, the others idle
    return x, torch.randint(VOCAB, (B, T), generator=g)


def test_head_loss_is_the_textbook_one_under_compile():
    model = DeepSeekModel(tiny_cfg())
    x, y = batch(0)
    assert head_loss_for(model, x, y) is head_cross_entropy               # eager fp32 CPU: the fused node
    compiled = compile_model(model)                                       # lazy: nothing compiled yet
    assert is_compiled(compiled) and not is_compiled(model)
    assert head_loss_for(compiled, x, y) is None                          # the compiler fuses head + CE itself


@pytest.mark.parametrize("capacity_factor", [None, 1.0], ids=["dropless", "capacity"])
def test_forward_and_loss_trace_as_one_graph(capacity_factor):
    """The forward + loss exactly as train_step calls a compiled model: one graph, no break."""
    model = DeepSeekModel(tiny_cfg(capacity_factor=capacity_factor)).train()
    compiled = compile_model(model)
    x, y = batch(0)
    head_loss = head_loss_for(compiled, x, y)            # what train_step passes (computed outside the graph)
    report = torch._dynamo.explain(model)(x, y, head_loss=head_loss)
    breaks = [r.reason.splitlines()[0] for r in report.break_reasons]
    assert report.graph_break_count == 0 and report.graph_count == 1, breaks


@pytest.mark.parametrize("capacity_factor", [None, 1.0], ids=["dropless", "capacity"])
def test_training_steps_compile_once_whatever_the_routing(capacity_factor):
    """Five train_step calls on a compiled model: routings differ (one leaves experts idle), the first
    call compiles, the others reuse it (error_on_recompile), and the losses match eager's."""
    cfg = tiny_cfg(capacity_factor=capacity_factor)
    torch.manual_seed(0)
    eager = DeepSeekModel(cfg)
    raw = copy.deepcopy(eager)
    compiled = compile_model(raw)
    pairs = [batch(0), batch(1), batch(2, constant=True), batch(3), batch(4)]
    settings = train_cfg(None)
    runs = {}
    for name, model, params in (("eager", eager, eager), ("compiled", compiled, raw)):
        optimizer = torch.optim.AdamW(params.parameters(), lr=1e-3)
        batches, logged = ListBatches(pairs), []
        for step in range(len(pairs)):
            logged.append(train_step(model, optimizer, batches, settings, lr=1e-3, device=torch.device("cpu")))
            if name == "compiled" and step == 0:
                torch._dynamo.config.error_on_recompile = True   # from now on a recompile raises
        runs[name] = logged
    loads = [tuple(row["expert_counts"][0]) for row in runs["compiled"]]
    assert len(set(loads)) == len(loads) and any(0 in load for load in loads), loads   # routings do differ
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    for want, got in zip(runs["eager"], runs["compiled"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)
        assert got["expert_counts"] == want["expert_counts"]
    for (name, want), got in zip(eager.state_dict().items(), raw.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
