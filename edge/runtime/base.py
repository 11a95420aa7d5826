"""The runtime protocol: named float inputs in, output arrays out, nothing else."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runtime(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph once; outputs in `output_names` order."""
        ...
