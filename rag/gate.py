"""The fitted answerability gate: P(the passages answer the question) from gate_signals, and the verdict.

The weights live in rag/gate.json, written by benchmarks/fit_gate.py (a logistic regression fitted on the
labelled question sets, with its cross-validated abstention recorded in the file). At run time this is one dot
product: no scikit-learn, no model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rag.errors import RagError

GATE_FILE = Path(__file__).with_name("gate.json")


class GateError(RagError):
    """rag/gate.json is missing, unreadable or does not match the signals the code computes."""


@dataclass(frozen=True)
class Gate:
    signals: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float

    def probability(self, values: dict[str, float]) -> float:
        """P(answerable) for these signal values."""
        z = self.bias + sum(w * (values[name] - m) / s for name, m, s, w in zip(self.signals, self.mean, self.scale, self.weights))
        return 1.0 / (1.0 + math.exp(-z))

    def refuses(self, values: dict[str, float]) -> bool:
        return self.probability(values) < self.threshold


def load_gate(path: Path = GATE_FILE, expected: tuple[str, ...] | None = None) -> Gate:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        gate = Gate(
            signals=tuple(data["signals"]), mean=tuple(data["mean"]), scale=tuple(data["scale"]),
            weights=tuple(data["weights"]), bias=float(data["bias"]), threshold=float(data["threshold"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GateError(f"cannot read the answerability gate {path}: {e}; refit it with benchmarks/fit_gate.py --write") from e
    if expected is not None and gate.signals != expected:
        raise GateError(f"{path} was fitted on signals {list(gate.signals)}, the code computes {list(expected)}: refit it")
    if not len(gate.signals) == len(gate.mean) == len(gate.scale) == len(gate.weights):
        raise GateError(f"{path}: signals, mean, scale and weights differ in length")
    return gate


@lru_cache(maxsize=1)
def default_gate() -> Gate:
    from rag.answerability import SIGNALS

    return load_gate(GATE_FILE, SIGNALS)
