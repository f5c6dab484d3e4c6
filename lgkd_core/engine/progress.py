"""Training progress: smoothed values, throughput, ETA and the time spent waiting for data."""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict, deque

log = logging.getLogger("lgkd_core.train")


class SmoothedValue:
    """Running window mean of a scalar plus its global mean."""

    def __init__(self, window: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.count += 1

    @property
    def avg(self) -> float:
        return sum(self.values) / max(1, len(self.values))

    @property
    def global_avg(self) -> float:
        return self.total / max(1, self.count)


class Progress:
    """Logs loss components, lr, images/s, data-wait fraction and ETA.

    A tqdm bar on a terminal (rank 0), plain log lines every ``every`` iterations otherwise.
    """

    def __init__(
        self,
        total_iters: int,
        start_iter: int,
        images_per_iter: int,
        every: int = 10,
        enabled: bool = True,
        tensorboard_dir=None,
    ) -> None:
        self.total = total_iters
        self.iter = start_iter
        self.images_per_iter = images_per_iter
        self.every = max(1, every)
        self.enabled = enabled
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.t_start = time.perf_counter()
        self.t_last = self.t_start
        self.data_time = 0.0
        self.step_time = 0.0
        self.iters_done = 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, initial=start_iter, unit="it", dynamic_ncols=True)
        self.writer = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                # A ValueError: the command line reports it as one line, without a traceback.
                raise ValueError(
                    "tensorboard: true (--tensorboard) needs the 'tensorboard' package, which is "
                    "not installed: `pip install tensorboard` (or `pip install -e .[tensorboard]`)"
                    ", or set tensorboard: false"
                ) from exc
            self.writer = SummaryWriter(str(tensorboard_dir))

    def data_ready(self) -> None:
        """Mark the end of the wait for the next batch."""
        now = time.perf_counter()
        self.data_time += now - self.t_last
        self.t_last = now

    def step(self, values: dict[str, float], lr: float) -> None:
        now = time.perf_counter()
        self.step_time += now - self.t_last
        self.t_last = now
        self.iter += 1
        self.iters_done += 1
        for k, v in values.items():
            self.meters[k].update(v)
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"loss/{k}", v, self.iter)
            self.writer.add_scalar("lr", lr, self.iter)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self._postfix(lr), refresh=False)
        elif self.iter % self.every == 0 or self.iter == self.total:
            log.info("it %d/%d %s", self.iter, self.total, self._postfix(lr, eta=True))

    @property
    def images_per_second(self) -> float:
        elapsed = self.data_time + self.step_time
        return self.iters_done * self.images_per_iter / max(elapsed, 1e-9)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_time / max(self.data_time + self.step_time, 1e-9)

    def _postfix(self, lr: float, eta: bool = False) -> str:
        parts = [f"{k}={m.avg:.4f}" for k, m in self.meters.items()]
        parts += [f"lr={lr:.2e}", f"img/s={self.images_per_second:.1f}"]
        parts.append(f"data_wait={100 * self.data_wait_fraction:.0f}%")
        if eta:
            per_iter = (self.data_time + self.step_time) / max(1, self.iters_done)
            remaining = per_iter * (self.total - self.iter)
            parts.append(f"eta={time.strftime('%H:%M:%S', time.gmtime(remaining))}")
        return " ".join(parts)

    def close(self) -> dict[str, float]:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        return {
            "images_per_second": self.images_per_second,
            "data_wait_fraction": self.data_wait_fraction,
            **{k: m.global_avg for k, m in self.meters.items()},
        }
