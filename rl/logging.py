"""TensorBoard logging with the zoo's fixed tags, and on-device metric accumulation.

Tags every agent shares: ``charts/episodic_return``, ``charts/episodic_length``, ``charts/SPS``,
``losses/<name>``, ``eval/return_mean``; LLM runs add ``llm/*``. Hyperparameters go to the HParams tab.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class MetricAccumulator:
    """Sums 0-d (or [K]) metric tensors on their device; one host sync when :meth:`means` is read at log time.

    Each metric's sum is one tensor for the whole run, zeroed in place when read, so the summing can be part of a
    CUDA graph: :meth:`sum_in` inside the captured function (recorded once, run by every replay) and :meth:`tally`
    on the host for each call. :meth:`add` does both."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def sum_in(self, metrics: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """Add ``metrics`` to the sums (one launch; a metric seen for the first time gets its sum first)."""
        for k in metrics:
            if k not in self.sums:
                self.sums[k] = torch.zeros_like(metrics[k], dtype=torch.float32)
                self.counts[k] = 0
        keys = list(metrics)
        torch._foreach_add_([self.sums[k] for k in keys], [metrics[k].detach() for k in keys])
        return metrics

    def tally(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.counts[k] += 1

    def add(self, metrics: Mapping[str, Tensor]) -> None:
        self.tally(self.sum_in(metrics))

    def pending(self) -> dict[str, Tensor]:
        """The sums of the metrics added since the last :meth:`means`."""
        return {k: v for k, v in self.sums.items() if self.counts[k]}

    def means(self) -> dict[str, float]:
        """The mean of each metric added since the last call (one host sync); the sums start again from zero."""
        sums = self.pending()
        if not sums:
            return {}
        flat = torch.cat([(v / self.counts[k]).reshape(-1) for k, v in sums.items()]).tolist()  # one sync
        torch._foreach_zero_(list(sums.values()))
        means, i = {}, 0
        for k, v in sums.items():  # a 0-d sum gives a number, a [K] one a list
            means[k] = flat[i] if v.dim() == 0 else flat[i:i + v.numel()]
            i += v.numel()
            self.counts[k] = 0
        return means


class Logger:
    """A thin layer over ``SummaryWriter``; ``enabled=False`` (or no ``log_dir``) makes every call a no-op."""

    def __init__(self, log_dir: str | Path | None, enabled: bool = True) -> None:
        self.writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, values: Mapping[str, Any], metric_tags: list[str]) -> None:
        """Config → HParams tab, linked to ``metric_tags`` logged as ordinary scalars in this same run."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        # SummaryWriter.add_hparams would write these into a new sub-run; the run's own file writer keeps them
        # beside the scalars they link to
        for summary in hparams(dict(values), {tag: float("nan") for tag in metric_tags}):
            self.writer.file_writer.add_summary(summary)

    def video(self, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
        """uint8 frames [T, H, W, 3] as an animated GIF in TensorBoard's Images tab (what SummaryWriter.add_video
        writes too, without needing moviepy)."""
        if self.writer is not None:
            from rl.video import gif_summary

            self.writer.file_writer.add_summary(gif_summary(tag, frames, fps), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
