"""Non-finite losses and gradients: the step is skipped so one bad batch cannot poison the weights; a run that keeps
producing them stops, leaving its last good checkpoint as it was."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from tqdm import tqdm

from lmforge.checkpoint.files import find_latest
from lmforge.errors import LmforgeError


class NonFiniteGuard:
    """ok() says whether to apply a step; `skipped` counts the skipped ones, `in_a_row` the current streak."""

    def __init__(self, max_in_a_row: int, out: Path, verbose: bool = True, section: str = "train"):
        self.max_in_a_row, self.out, self.verbose, self.section = max_in_a_row, out, verbose, section
        self.skipped = self.in_a_row = 0

    def ok(self, loss: float, grad_norm: float, step: int) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            latest = find_latest(self.out)
            raise LmforgeError(
                f"{self.in_a_row} steps in a row, the last step {step}, had a non-finite loss ({loss}) or gradient "
                f"norm ({grad_norm}); stopped without saving (last good checkpoint: {latest or 'none'}). Lower "
                f"{self.section}.lr, raise {self.section}.{'warmup' if self.section == 'finetune' else 'warmup_steps'} "
                "or check the data, then --resume"
            )
        if self.verbose:
            tqdm.write(f"step {step}: loss {loss}, gradient norm {grad_norm}: step skipped", file=sys.stderr)
        return False
