"""The engine with its file and benchmark tools: `MusicEngine` plus `save_audio` and `benchmark`.

The engine itself only turns prompts into arrays; writing files (`daemon.audio.encode`) and the
benchmark (`daemon.ops.bench`) sit above it, so the two methods that reach them live here,
where importing both directions tangles nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.audio.encode import write_audio
from daemon.core.messages import GenerationResult
from daemon.engine.model import MusicEngine
from daemon.ops.bench import BenchReport, run_benchmark


def save_audio(
    result: GenerationResult,
    path: Path | str,
    *,
    variation: int = 0,
    format: str = "wav",
    subtype: str = "PCM_16",
) -> Any:
    """Write one variation of `result` (no loudness processing) with daemon.audio.encode."""
    return write_audio(path, result.rows[variation].array(), result.sample_rate, format, subtype)  # type: ignore[arg-type]


class EngineWithTools(MusicEngine):
    """`MusicEngine` with `save_audio()` and `benchmark()` methods."""

    def save_audio(
        self,
        result: GenerationResult,
        path: Path | str,
        *,
        variation: int = 0,
        format: str = "wav",
        subtype: str = "PCM_16",
    ) -> Any:
        return save_audio(result, path, variation=variation, format=format, subtype=subtype)

    def benchmark(self, durations: Sequence[float] = (4, 8, 16, 30), **kwargs: Any) -> BenchReport:
        """The benchmark on the resident model (see daemon.ops.bench.run_benchmark)."""
        return run_benchmark(self, durations, **kwargs)
