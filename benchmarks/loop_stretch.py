"""Which time-stretcher makes loops: librosa's phase vocoder against Rubber Band's CLI, measured.

On synthetic audio with a known truth (tests/audio/synthmusic.py): drums played at 117 BPM
stretched to 120, and a chord progression stretched by the same ratio. Per stretcher: the tempo
of the result (daemon.audio.analysis), how much of the drums' attack survives (the onset
envelope's mean peak at the beats, relative to the unstretched audio), whether the key stays,
and CPU seconds per second of audio. Rubber Band is run as `rubberband` (Debian: rubberband-cli)
when installed, and skipped otherwise.

    .venv/bin/python benchmarks/loop_stretch.py
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.audio.analysis import HOP, RATE, analyze  # noqa: E402
from tests.audio.synthmusic import RATE as SR  # noqa: E402
from tests.audio.synthmusic import chord_progression, drum_pattern  # noqa: E402


def librosa_stretch(x: np.ndarray, rate: float) -> np.ndarray:
    import librosa

    return np.asarray(librosa.effects.time_stretch(x, rate=rate), dtype=np.float32)


def rubberband_stretch(x: np.ndarray, rate: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, x.T, SR, subtype="FLOAT")
        # -T: tempo factor (2 is twice as fast); --fine: the R3 engine, its best quality.
        subprocess.run(
            ["rubberband", "-q", "--fine", "-T", str(rate), str(src), str(dst)],
            check=True,
            capture_output=True,
        )
        y, _ = sf.read(dst, dtype="float32", always_2d=True)
        return y.T


def attack(x: np.ndarray, bpm: float) -> float:
    """Mean onset strength at the beats (the sharper the attacks, the higher)."""
    import librosa

    y = librosa.resample(x.mean(axis=0), orig_sr=SR, target_sr=RATE)
    env = librosa.onset.onset_strength(y=y, sr=RATE, hop_length=HOP)
    period = 60.0 / bpm * RATE / HOP
    at = np.round(np.arange(0, len(env) - 3, period)).astype(int)
    return float(np.mean([env[max(0, i - 2) : i + 4].max() for i in at]))


def main() -> int:
    played, asked = 117.0, 120.0
    rate = asked / played
    drums = np.stack([drum_pattern(played, 14.0), drum_pattern(played, 14.0, seed=1)])
    chords = np.stack([chord_progression(9, "minor")] * 2)
    base_attack = attack(drums, played)
    stretchers = {"librosa phase vocoder": librosa_stretch}
    if shutil.which("rubberband"):
        stretchers["rubberband --fine (R3)"] = rubberband_stretch
    else:
        print("rubberband not installed: measuring librosa only")
    print(f"drums {played:g} -> {asked:g} BPM (rate {rate:.4f}), chords A minor at the same rate")
    for name, stretch in stretchers.items():
        t0 = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        d = stretch(drums, rate)
        c = stretch(chords, rate)
        cpu = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - t0
        seconds = (drums.shape[1] + chords.shape[1]) / SR
        m = analyze(d, SR)
        key = analyze(c, SR).key
        print(
            f"{name}: tempo {m.tempo_bpm:.2f} BPM, attack kept {attack(d, asked) / base_attack:.0%}, "
            f"key {key}, {cpu / seconds:.3f} CPU s per audio s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
