"""Checkpoints: made-up ones load through the production path; load errors are typed and actionable."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from daemon.core.config import ModelSpec, Settings
from daemon.core.errors import ModelLoadError, UnknownModelError
from daemon.engine.checkpoints import (
    _hub_error,
    check_local_dir,
    fetch,
    hf_cache_dir,
    load_checkpoint,
    local_revision,
    resolve_spec,
)

CPU = torch.device("cpu")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_tiny_checkpoint_loads_like_a_hub_checkpoint(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "MusicgenProcessor"
    assert model.config.decoder.num_codebooks == 4
    assert model.config.audio_encoder.sampling_rate == 32000
    assert model.config.audio_encoder.frame_rate == 40  # deliberately not MusicGen's 50
    assert model.audio_encoder.config.num_quantizers == 4
    tokens = processor.tokenizer.convert_ids_to_tokens(processor(text=["Warm dusty piano"])["input_ids"][0])
    assert tokens == ["▁Warm", "▁dusty", "▁piano", "</s>"]
    # safetensors writes 0600; the daemon's own user must be able to read what an admin made
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044


def test_tiny_stereo_checkpoint(tiny_stereo_model_dir: Path) -> None:
    ck = load_checkpoint(
        "st", _settings({"st": {"path": str(tiny_stereo_model_dir)}}), device=CPU, dtype=torch.float32
    )
    assert ck.model.config.decoder.audio_channels == 2
    assert ck.model.config.decoder.num_codebooks == 8


def test_tiny_melody_checkpoint_loads_with_its_chroma(tiny_melody_model_dir: Path) -> None:
    config = check_local_dir("mel", tiny_melody_model_dir)
    assert config["model_type"] == "musicgen_melody"
    pre = json.loads((tiny_melody_model_dir / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "MusicgenMelodyFeatureExtractor"  # as the hub ships it
    ck = load_checkpoint(
        "mel", _settings({"mel": {"path": str(tiny_melody_model_dir)}}), device=CPU, dtype=torch.float32
    )
    assert ck.melody and type(ck.model).__name__ == "MusicgenMelodyForConditionalGeneration"
    assert ck.processor.chroma.params.hop_length == pre["hop_length"]
    ids = ck.processor(text=["Warm dusty piano"], padding=True, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 4)


def test_melody_models_are_told_apart_without_loading(
    tiny_model_dir: Path, tiny_melody_model_dir: Path
) -> None:
    from daemon.engine.checkpoints import melody_models

    s = _settings(
        {
            "plain": {"path": str(tiny_model_dir)},
            "mel": {"path": str(tiny_melody_model_dir)},
            "hub": {"id": "facebook/musicgen-stereo-melody"},
            "small": {"id": "facebook/musicgen-small"},
        }
    )
    assert melody_models(s) == ["hub", "mel"]


def _settings(models: dict, default: str | None = None) -> Settings:
    from daemon.core.config import load_settings

    return load_settings(None, models=models, default_model=default or next(iter(models)), device="cpu")


def test_load_local_checkpoint_records_a_content_revision(tiny_model_dir: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(
        "tiny", _settings({"tiny": {"path": str(tiny_model_dir)}}), device=CPU, dtype=torch.float32
    )
    assert ck.source == str(tiny_model_dir)
    assert ck.revision.startswith("local:") and len(ck.revision) == len("local:") + 64
    assert ck.revision == local_revision(tiny_model_dir)
    assert not ck.model.training
    # different weights -> different revision
    from daemon.ops.tinymodel import init_tiny

    other = init_tiny(tmp_path / "other", seed=1)
    assert local_revision(other) != ck.revision


def test_unknown_model_name() -> None:
    s = _settings({"tiny": {"path": "/nonexistent"}})
    with pytest.raises(UnknownModelError) as ei:
        resolve_spec("large", s)
    assert "tiny" in str(ei.value) and ei.value.error_type == "unknown_model"


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as ei:
        load_checkpoint("m", _settings({"m": {"path": str(missing)}}), device=CPU, dtype=torch.float32)
    assert str(missing) in str(ei.value)
    assert "init-tiny" in (ei.value.hint or "")


def _copy_without(src: Path, dst: Path, *, skip: Callable[[Path], bool]) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if not skip(f):
            shutil.copy(f, dst / f.name)
    return dst


def test_directory_without_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without(tiny_model_dir, tmp_path / "noweights", skip=lambda f: f.suffix == ".safetensors")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_checkpoint("m", _settings({"m": {"path": str(d)}}), device=CPU, dtype=torch.float32)


def test_directory_without_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without(tiny_model_dir, tmp_path / "notok", skip=lambda f: f.name.startswith("tokenizer"))
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        check_local_dir("m", d)


def test_corrupted_config_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without(tiny_model_dir, tmp_path / "badcfg", skip=lambda f: False)
    (d / "config.json").write_text('{"model_type": "musicgen", ')
    with pytest.raises(ModelLoadError, match="not valid JSON") as ei:
        load_checkpoint("m", _settings({"m": {"path": str(d)}}), device=CPU, dtype=torch.float32)
    assert "again" in (ei.value.hint or "")


def test_config_of_another_model_type(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _copy_without(tiny_model_dir, tmp_path / "t5", skip=lambda f: False)
    (d / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="not a MusicGen"):
        check_local_dir("m", d)


def test_weights_missing_tensors_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    d = _copy_without(tiny_model_dir, tmp_path / "partial", skip=lambda f: f.suffix == ".safetensors")
    tensors = load_file(tiny_model_dir / "model.safetensors")
    dropped = sorted(k for k in tensors if k.startswith("decoder."))[0]
    del tensors[dropped]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks 1 weight tensors"):
        load_checkpoint("m", _settings({"m": {"path": str(d)}}), device=CPU, dtype=torch.float32)


def test_hub_model_offline_without_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    s = _settings({"small": {"id": "facebook/musicgen-small", "revision": "main"}})
    with pytest.raises(ModelLoadError) as ei:
        load_checkpoint("small", s, device=CPU, dtype=torch.float32)
    assert "not in the local cache" in str(ei.value) and "HF_HUB_OFFLINE" in str(ei.value)
    assert "dgx-music model fetch small" in (ei.value.hint or "")
    assert str(tmp_path / "hf" / "hub") in (ei.value.hint or "")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        fetch("small", s)


def _fake_hub_cache(hub: Path, repo: str, src: Path, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/files."""
    base = hub / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, snap / f.name)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


def test_hub_model_loads_offline_from_the_cache_with_its_commit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    _fake_hub_cache(hf_cache_dir(), "facebook/musicgen-small", tiny_model_dir)
    s = _settings({"small": {"id": "facebook/musicgen-small", "revision": "main"}})
    ck = load_checkpoint("small", s, device=CPU, dtype=torch.float32)
    assert ck.revision == COMMIT
    assert ck.source == "facebook/musicgen-small"
    # a revision that is not cached is reported as such, offline
    s2 = _settings({"small": {"id": "facebook/musicgen-small", "revision": "v9"}})
    with pytest.raises(ModelLoadError, match="v9"):
        load_checkpoint("small", s2, device=CPU, dtype=torch.float32)


def test_bad_revision_message() -> None:
    import httpx2 as httpx
    from huggingface_hub.errors import RevisionNotFoundError

    response = httpx.Response(
        404, request=httpx.Request("GET", "https://huggingface.co/x/resolve/v9/config.json")
    )
    err = _hub_error(
        "small",
        ModelSpec(id="facebook/musicgen-small", revision="v9"),
        RevisionNotFoundError("404", response=response),
        offline=False,
    )
    assert "revision 'v9' does not exist" in str(err)
    assert "models.small.revision" in (err.hint or "")


def _cli(argv: list[str]) -> int:
    from daemon.commands import model

    parser = argparse.ArgumentParser(prog="dgx-music")
    model.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_init_tiny_makes_a_loadable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "made"
    assert _cli(["model", "init-tiny", str(d), "--stereo"]) == 0
    assert "models:" in capsys.readouterr().out
    config = check_local_dir("made", d)
    assert config["decoder"]["audio_channels"] == 2
    # never writes over a directory with something in it
    assert _cli(["model", "init-tiny", str(d)]) == 2
    mel = tmp_path / "mel"
    assert _cli(["model", "init-tiny", str(mel), "--melody", "--stereo"]) == 0
    assert "tiny stereo melody MusicGen" in capsys.readouterr().out
    config = check_local_dir("mel", mel)
    assert config["model_type"] == "musicgen_melody" and config["decoder"]["audio_channels"] == 2


def test_cli_fetch_unknown_and_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("models: {small: {id: facebook/musicgen-small}}\ndefault_model: small\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert _cli(["model", "fetch", "nope", "--config", str(cfg)]) == 2
    assert _cli(["model", "fetch", "small", "--config", str(cfg)]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


@pytest.mark.slow
def test_init_random_small_shape(tmp_path: Path) -> None:
    from daemon.ops.tinymodel import init_random

    d = init_random(tmp_path / "small", "small", dtype="float16")
    ck = load_checkpoint("s", _settings({"s": {"path": str(d)}}), device=CPU, dtype=torch.float32)
    dec = ck.model.config.decoder
    assert (dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads, dec.ffn_dim) == (
        1024,
        24,
        16,
        4096,
    )
    assert ck.model.config.text_encoder.d_model == 768
    assert ck.model.config.audio_encoder.frame_rate == 50
    decoder_params = sum(p.numel() for p in ck.model.decoder.parameters())
    assert 400e6 < decoder_params < 460e6  # musicgen-small's decoder (lm heads and embeddings included)
