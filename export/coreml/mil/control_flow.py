"""MIL control flow: ``while_loop`` and ``cond`` run their nested blocks through the evaluator.

coremltools emits these for recurrent layers it does not map to one op (torch ``nn.GRU`` becomes a
``while_loop`` over time steps whose body gathers a step, runs the cell and scatters the result) and for
data-dependent branches. They cannot be table ops: they need the interpreter to run blocks, so each takes
``run_block(block, inputs) -> outputs`` from it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.blocks import Block, Op

# A loop that runs this long is a broken program (or a wrong condition in the evaluator), not a model:
# stop with an error instead of hanging a CI job.
MAX_ITERATIONS = 1_000_000

RunBlock = Callable[[Block, list[Any]], list[Any]]


def _truth(op: Op, value: Any, what: str) -> bool:
    v = np.asarray(value)
    if v.size != 1:
        raise InputError(f"MIL op '{op.type}' ({op.where}): {what} must be one boolean, got shape {v.shape}")
    return bool(v.reshape(-1)[0])


def run_while_loop(op: Op, values: dict[str, list[Any]], run_block: RunBlock) -> tuple:
    """Run the body while the cond block says so; the outputs are the loop variables after the last step."""
    if len(op.blocks) != 2:
        raise InputError(f"MIL op 'while_loop' ({op.where}): expected a cond and a body block, got {len(op.blocks)}")
    cond, body = op.blocks
    state = list(values.get("loop_vars", []))
    for _ in range(MAX_ITERATIONS):
        (keep_going,) = run_block(cond, state)
        if not _truth(op, keep_going, "the loop condition"):
            return tuple(state)
        state = run_block(body, state)
    raise InputError(f"MIL op 'while_loop' ({op.where}): still running after {MAX_ITERATIONS} iterations")


def run_cond(op: Op, values: dict[str, list[Any]], run_block: RunBlock) -> tuple:
    """Run the true or the false block, chosen by ``pred``; its outputs are the op's outputs."""
    if len(op.blocks) != 2:
        raise InputError(f"MIL op 'cond' ({op.where}): expected a true and a false block, got {len(op.blocks)}")
    chosen = op.blocks[0] if _truth(op, values["pred"][0], "pred") else op.blocks[1]
    return tuple(run_block(chosen, []))


CONTROL_FLOW: dict[str, Callable[[Op, dict[str, list[Any]], RunBlock], tuple]] = {
    "while_loop": run_while_loop,
    "cond": run_cond,
}
