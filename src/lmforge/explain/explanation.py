"""What explain found about one decision, and where it wrote it: the record the CLI prints and the HTML shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Explanation:
    """What explain found and where it wrote it; the CLI prints it, a notebook can plot it again."""

    tokens: list[str]
    attributions: list[float]  # per token, to the target's logit; they add up to logit(x) - logit(baseline) - delta
    delta: float  # the integration error; small next to the logit difference means enough steps
    probabilities: dict[str, float]  # per label (at `position` for a token task)
    predicted: str
    target: str
    position: int | None  # the explained token of a token task, None for a sequence task
    html: Path | None = None
    pngs: list[Path] = field(default_factory=list)

    def top_tokens(self, k: int = 5) -> list[tuple[str, float]]:
        """The k tokens with the largest attribution magnitude, largest first."""
        order = sorted(range(len(self.tokens)), key=lambda i: -abs(self.attributions[i]))
        return [(self.tokens[i], self.attributions[i]) for i in order[:k]]

    @property
    def where(self) -> str:
        """' at token N ('piece')' for a token task, '' for a sequence task."""
        return "" if self.position is None else f" at token {self.position} ({self.tokens[self.position]!r})"

    def summary(self, k: int = 5) -> list[str]:
        """The lines lmforge explain prints: the decision, the tokens that drove it, where the pictures are."""
        top = ", ".join(f"{token!r} {a:+.3f}" for token, a in self.top_tokens(k))
        change = sum(self.attributions) - self.delta  # logit(x) - logit(baseline)
        rough = "; more --steps would make it smaller" if abs(self.delta) > 0.05 * abs(change) else ""
        return [
            f"predicted {self.predicted}{self.where} with probability {self.probabilities[self.predicted]:.4f}",
            f"attributions to the logit of {self.target} (integration error {self.delta:.1e}{rough}): {top}",
            f"wrote {self.html} and {len(self.pngs)} PNGs next to it",
        ]
