"""Settings: YAML file, DGX_MUSIC_* environment and .env, with errors naming key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.core.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DGX_MUSIC_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_defaults_match_design() -> None:
    s = load_settings(None)
    assert s.spool == Path("/var/lib/dgx-music")
    assert s.default_model == "small"
    assert s.models["small"].id == "facebook/musicgen-small"
    assert (s.device, s.dtype, s.max_duration, s.max_job_bytes) == ("auto", "auto", 300.0, 65536)
    assert (s.settle_s, s.rescan_interval_s, s.max_attempts, s.idle_unload_s) == (0.5, 30.0, 2, 0.0)
    assert s.inbox == Path("/var/lib/dgx-music/inbox")


def test_yaml_file_is_read(tmp_path: Path) -> None:
    p = write(tmp_path, f"spool: {tmp_path}/spool\nmodels:\n  tiny: {{path: {tmp_path}/m}}\ndefault_model: tiny\ndevice: cpu\n")
    s = load_settings(p)
    assert s.spool == tmp_path / "spool"
    assert s.models["tiny"].path == tmp_path / "m"
    assert s.device == "cpu"


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "device: cpu\nmax_duration: 100\n")
    monkeypatch.setenv("DGX_MUSIC_MAX_DURATION", "42")
    s = load_settings(p)
    assert s.max_duration == 42.0
    assert s.device == "cpu"


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DGX_MUSIC_LOG_LEVEL=DEBUG\n")
    assert load_settings(None).log_level == "DEBUG"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    p = write(tmp_path, "spool: /tmp/x\nmax_durration: 10\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert "max_durration" in str(e.value)
    assert str(p) in str(e.value)
    assert "unknown key" in str(e.value)


def test_bad_env_value_names_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGX_MUSIC_MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigError) as e:
        load_settings(None)
    assert "DGX_MUSIC_MAX_ATTEMPTS" in str(e.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("default_model: large\n", "default_model"),
        ("device: gpu\n", "device"),
        ("models: {}\n", "at least one model"),
        ("models: {x: {id: a/b, path: /tmp}}\n", "exactly one"),
        ("models: {'../x': {id: a/b}}\ndefault_model: '../x'\n", "must match"),
        ("max_duration: .nan\n", "max_duration"),
        ("extend_stride_s: 40\n", "extend_stride_s"),
        ("- a\n- b\n", "mapping"),
        ("spool: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_configs(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert fragment in str(e.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.yaml")
    assert "not found" in str(e.value)


def test_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGX_MUSIC_DEVICE", "cuda")
    assert load_settings(None, device="cpu").device == "cpu"


def test_settings_is_the_same_type() -> None:
    assert isinstance(load_settings(None), Settings)
