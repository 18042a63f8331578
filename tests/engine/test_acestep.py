"""ACE-Step 1.5 through the family's own code: checkpoints made offline, loaded by the production
loader, rendered with per-row seeds and compared with diffusers' own AceStepPipeline call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daemon.core.config import Settings
from daemon.core.errors import ModelLoadError
from daemon.core.families import ACE_STEP, MUSICGEN, directory_family, spec_family
from daemon.engine.acestep.checkpoint import load_pipeline
from daemon.engine.acestep.layout import check_local_dir
from daemon.engine.acestep.song import SongBatch, SongParams, SongRow, pipeline_kwargs, render
from daemon.engine.hub import card_license

LYRICS = "[verse]\nSoft notes in the morning light\n[chorus]\nMusic fills the air tonight"


def _settings(tmp_path: Path, directory: Path, **spec: Any) -> Settings:
    return Settings(
        spool=tmp_path / "spool",
        models={"song": {"path": str(directory), **spec}},
        default_model="song",
        device="cpu",
        dtype="float32",
    )


@pytest.fixture(scope="module")
def loaded(tiny_acestep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = _settings(tmp_path_factory.mktemp("s"), tiny_acestep_dir)
    return load_pipeline("song", settings, device=torch.device("cpu"), dtype=torch.float32)


def _batch(*rows: SongRow, duration: float = 1.5, steps: int = 3) -> SongBatch:
    return SongBatch(SongParams(duration=duration, steps=steps, guidance=1.0, shift=3.0), list(rows))


def test_cli_init_tiny_writes_a_pipeline_diffusers_loads(tmp_path: Path) -> None:
    out = tmp_path / "song"
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "model", "init-tiny", str(out), "--family", "ace-step"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline"
    assert directory_family(out) == ACE_STEP
    from diffusers import AceStepPipeline

    pipe = AceStepPipeline.from_pretrained(out)
    assert pipe.sample_rate == 48000 and pipe.vae.config.audio_channels == 2
    assert pipe.is_turbo
    audio = pipe(prompt="piano", lyrics="[verse]\nla la", audio_duration=0.5, num_inference_steps=2).audios
    assert audio.shape[:2] == (1, 2) and torch.isfinite(audio).all()


def test_cli_init_tiny_adapter_writes_a_lora_diffusers_loads(tmp_path: Path) -> None:
    from daemon.ops.tinyacestep import ADAPTER_FILE

    out, lora = tmp_path / "song", tmp_path / "lora"
    cmd = [sys.executable, "-m", "daemon", "model", "init-tiny", str(out), "--family", "ace-step"]
    proc = subprocess.run([*cmd, "--adapter", str(lora)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "adapters: {tiny: {path:" in proc.stdout
    from diffusers import AceStepPipeline

    pipe = AceStepPipeline.from_pretrained(out)
    pipe.load_lora_weights(str(lora), weight_name=ADAPTER_FILE, adapter_name="tiny")
    assert "tiny" in pipe.get_list_adapters()["transformer"]
    musicgen = subprocess.run(
        [sys.executable, "-m", "daemon", "model", "init-tiny", str(tmp_path / "mg"), "--adapter", str(lora)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert musicgen.returncode == 2 and "--family ace-step" in musicgen.stderr


def test_loader_reads_licence_and_the_config_overrides_it(
    tiny_acestep_dir: Path, loaded: Any, tmp_path: Path
) -> None:
    assert card_license(tiny_acestep_dir) == "mit"
    assert loaded.license == "mit" and loaded.turbo
    assert loaded.revision.startswith("local:") and loaded.source == str(tiny_acestep_dir)
    settings = _settings(tmp_path, tiny_acestep_dir, license="cc-by-nc-4.0")
    again = load_pipeline("song", settings, device=torch.device("cpu"), dtype=torch.float32)
    assert again.license == "cc-by-nc-4.0" and again.revision == loaded.revision


def test_family_is_read_from_the_checkpoint(
    tiny_acestep_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(
        spool=tmp_path,
        models={"song": {"path": str(tiny_acestep_dir)}, "mg": {"path": str(tiny_model_dir)}},
        default_model="mg",
    )
    assert spec_family(settings.models["song"]) == ACE_STEP
    assert spec_family(settings.models["mg"]) == MUSICGEN
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        check_local_dir("mg", tiny_model_dir)
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_local_dir("gone", tmp_path / "nowhere")


def test_audio_equals_diffusers_pipeline_for_the_same_inputs_and_seed(loaded: Any) -> None:
    pipe = loaded.pipe
    batch = _batch(SongRow(0, 0, seed=1234, prompt="dreamy synth pop", lyrics=LYRICS, language="en"))
    ours = render(pipe, batch)[0]
    assert ours.shape == (2, int(1.5 * 48000)) and ours.dtype == np.float32
    theirs = pipe(**pipeline_kwargs(batch), generator=torch.Generator("cpu").manual_seed(1234)).audios
    np.testing.assert_array_equal(ours, theirs[0].numpy()[:, : ours.shape[1]])
    # The cached cross-attention changes nothing.
    np.testing.assert_array_equal(ours, render(pipe, batch, cache_cross_attention=False)[0])


@pytest.mark.parametrize("fixed_rows", [1, 3])
def test_a_row_sounds_the_same_alone_and_in_a_batch(loaded: Any, fixed_rows: int) -> None:
    pipe = loaded.pipe
    row = SongRow(0, 0, seed=7, prompt="lofi piano", lyrics=LYRICS)
    mates = [SongRow(i, 0, seed=99 + i, prompt="lofi piano", lyrics=LYRICS) for i in range(1, 4)]
    alone = render(pipe, _batch(row), fixed_rows=fixed_rows)[0]
    together = render(pipe, _batch(*mates, row), fixed_rows=fixed_rows)
    assert len(together) == 4
    np.testing.assert_array_equal(alone, together[3])
    assert not np.array_equal(together[0], together[3])  # another seed, another song


def test_the_step_callback_sees_every_step_and_may_cancel(loaded: Any) -> None:
    seen: list[int] = []

    class Stop(Exception):
        pass

    def on_step(done: int) -> None:
        seen.append(done)
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        render(loaded.pipe, _batch(SongRow(0, 0, 1, "jazz"), steps=5), on_step=on_step)
    assert seen == [1, 2]
    seen.clear()
    two = _batch(SongRow(0, 0, 1, "jazz"), SongRow(0, 1, 2, "jazz"), steps=2)
    render(loaded.pipe, two, on_step=seen.append, fixed_rows=1)
    assert seen == [1, 2, 3, 4]  # two calls of two steps


def test_a_guided_song_equals_diffusers_pipeline() -> None:
    """A base checkpoint's classifier-free guidance (the null condition beside the rows' own, the
    guider's momentum) gives the pipeline's audio."""
    from daemon.ops.tinyacestep import tiny_pipeline

    pipe = tiny_pipeline(variant="base")
    batch = SongBatch(
        SongParams(duration=1.0, steps=3, guidance=5.0, shift=3.0),
        [SongRow(0, 0, seed=11, prompt="a slow waltz", lyrics=LYRICS)],
    )
    ours = render(pipe, batch)[0]
    theirs = pipe(**pipeline_kwargs(batch), generator=torch.Generator("cpu").manual_seed(11)).audios
    np.testing.assert_array_equal(ours, theirs[0].numpy()[:, : ours.shape[1]])
