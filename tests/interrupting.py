"""Run ``compress`` with a deterministic interruption installed through the toolkit's own callbacks, so the
production code holds no test hooks: ``python -m tests.interrupting ARGS...`` is ``python -m compress.cli
ARGS...`` plus what these variables ask for (read here, in test code, never by the toolkit):

  INTERRUPT_AFTER_EPOCH=K[:TERM]   Ctrl-C (or SIGTERM with ``:TERM``) right after the student's K-th epoch
                                   was checkpointed (``distill_student``'s ``after_epoch``);
  INTERRUPT_AFTER_SHARDS=K         Ctrl-C in every process right after its K-th soft-target shard
                                   (``soft_targets``' ``on_shard``), once every process has written K;
  PAUSE_IN_TRIAL=FIFO              a search says "test hook: trial running" inside its first trial (RUNNING in
                                   the journal) and waits until the test writes to FIFO.

In-process tests call the ``install_*`` functions with ``monkeypatch.setattr``.
"""

from __future__ import annotations

import os
import signal
import sys

AFTER_EPOCH, AFTER_SHARDS, PAUSE_IN_TRIAL = "INTERRUPT_AFTER_EPOCH", "INTERRUPT_AFTER_SHARDS", "PAUSE_IN_TRIAL"


def install_after_epoch(setattr_, spec: str) -> None:
    """Interrupt after epoch K (``spec`` "K" or "K:TERM") of every student distillation, chained after the
    caller's own ``after_epoch`` (``compress search`` passes one)."""
    from compress import pipeline, search

    when, _, how = spec.partition(":")
    real = pipeline.distill_student

    def distill_student(*args, after_epoch=None, **kwargs):
        def hook(epoch: int) -> None:
            if after_epoch is not None:
                after_epoch(epoch)
            if epoch + 1 == int(when):
                if how == "TERM":
                    os.kill(os.getpid(), signal.SIGTERM)
                raise KeyboardInterrupt

        return real(*args, after_epoch=hook, **kwargs)

    setattr_(pipeline, "distill_student", distill_student)
    setattr_(search, "distill_student", distill_student)


def install_after_shards(setattr_, count: int) -> None:
    """Ctrl-C in every process right after its ``count``-th soft-target shard, after a barrier (so each
    process has written its shards before any stops)."""
    from compress import pipeline

    real = pipeline.soft_targets

    def soft_targets(*args, on_shard=None, **kwargs):
        def hook(done: int, total: int) -> None:
            if on_shard is not None:
                on_shard(done, total)
            if done == count:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.barrier()
                raise KeyboardInterrupt

        return real(*args, on_shard=hook, **kwargs)

    setattr_(pipeline, "soft_targets", soft_targets)


def install_pause_in_trial(setattr_, fifo: str) -> None:
    """The first student a search distills says so and waits on ``fifo`` (its trial is RUNNING meanwhile)."""
    from compress import search

    real, paused = search.distill_student, []

    def distill_student(*args, **kwargs):
        if not paused:
            paused.append(True)
            print("search: test hook: trial running", file=sys.stderr, flush=True)
            with open(fifo) as fh:
                fh.read()
        return real(*args, **kwargs)

    setattr_(search, "distill_student", distill_student)


def main() -> None:
    if os.environ.get(AFTER_EPOCH):
        install_after_epoch(setattr, os.environ[AFTER_EPOCH])
    if os.environ.get(AFTER_SHARDS):
        install_after_shards(setattr, int(os.environ[AFTER_SHARDS]))
    if os.environ.get(PAUSE_IN_TRIAL):
        install_pause_in_trial(setattr, os.environ[PAUSE_IN_TRIAL])
    from compress.cli import app

    sys.argv[0] = "compress"
    app()


if __name__ == "__main__":
    main()
