"""Settings: YAML file, DGX_MUSIC_* environment and .env, with errors naming key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.core.config import (
    ConfigError,
    Settings,
    load_settings,
    load_settings_with_origins,
    resolve_config_path,
)


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
    p = write(
        tmp_path,
        f"spool: {tmp_path}/spool\nmodels:\n  tiny: {{path: {tmp_path}/m}}\n"
        "default_model: tiny\ndevice: cpu\n",
    )
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
        ("spool: [unclosed\n", "config.yaml:2: YAML syntax error"),
        (
            "device: cpu\ndevice: cuda\n",
            "config.yaml:2: device: duplicate key 'device' (first set on line 1)",
        ),
        ("x: &a 1\ny: *a\n", "config.yaml:1: YAML anchors and aliases are not allowed"),
        (
            "log_level: !!python/name:os.system INFO\n",
            "config.yaml:1: YAML tag '!!python/name:os.system' is not allowed",
        ),
        ("device: off\n", "config.yaml:1: device: must be auto, cpu, cuda"),  # YAML 1.2: "off", not false
        ("max_btach: 4\n", "config.yaml:1: max_btach: unknown key 'max_btach' (did you mean 'max_batch'?)"),
        ("maxbatch: 4\n", "unknown key 'maxbatch' (did you mean 'max_batch'?)"),
        (
            "models: {tiny: {path: /m, revison: v2}}\ndefault_model: tiny\n",
            "models.tiny.revison: unknown key 'revison' (did you mean 'revision'?)",
        ),
        ("max_batch: lots\n", "config.yaml:1: max_batch: must be a whole number, not 'lots'"),
        ("normalize_audio: maybe\n", "normalize_audio: must be true or false, not 'maybe'"),
        ("watch: pol\n", "watch: must be 'inotify' or 'poll', not 'pol'"),
    ],
)
def test_invalid_configs(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text))
    assert fragment in str(e.value)
    # Said in the project's words: pydantic's own phrasing never reaches the user.
    for raw in ("Input should", "Value error", "Extra inputs", "Field required", "unable to parse"):
        assert raw not in str(e.value)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.yaml")
    assert "not found" in str(e.value)


def test_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGX_MUSIC_DEVICE", "cuda")
    assert load_settings(None, device="cpu").device == "cpu"


def test_settings_is_the_same_type() -> None:
    assert isinstance(load_settings(None), Settings)


def test_empty_or_comment_only_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing set yet\n\n")).spool == Path("/var/lib/dgx-music")


def test_nested_environment_override_merges_into_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write(
        tmp_path, "models:\n  small: {id: facebook/musicgen-small, revision: main}\n  tiny: {path: /m/tiny}\n"
    )
    monkeypatch.setenv("DGX_MUSIC_MODELS__SMALL__REVISION", "x")
    s = load_settings(p)
    assert set(s.models) == {"small", "tiny"}
    assert (s.models["small"].id, s.models["small"].revision) == ("facebook/musicgen-small", "x")
    assert s.models["tiny"].path == Path("/m/tiny")


def test_nested_override_merges_into_the_default_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DGX_MUSIC_MODELS__SMALL__REVISION", "v2")
    s = load_settings(None)
    assert (s.models["small"].id, s.models["small"].revision) == ("facebook/musicgen-small", "v2")


def test_precedence_environment_then_dotenvs_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = etc / "config.yaml"
    cfg.write_text("log_level: ERROR\ndevice: cuda:1\nmax_attempts: 5\nsettle_s: 2\n")
    (etc / ".env").write_text(
        "DGX_MUSIC_LOG_LEVEL=WARNING\nDGX_MUSIC_DEVICE=cuda:2\nDGX_MUSIC_MAX_ATTEMPTS=6\n"
    )
    (tmp_path / ".env").write_text("DGX_MUSIC_LOG_LEVEL=DEBUG\nDGX_MUSIC_DEVICE=cuda:3\nHF_HOME=/elsewhere\n")
    monkeypatch.setenv("DGX_MUSIC_LOG_LEVEL", "CRITICAL")
    s, origins = load_settings_with_origins(cfg)
    assert (s.log_level, s.device, s.max_attempts, s.settle_s) == ("CRITICAL", "cuda:3", 6, 2.0)
    assert origins.describe(("log_level",)) == "environment DGX_MUSIC_LOG_LEVEL"
    assert origins.describe(("device",)) == f"dotenv {tmp_path / '.env'}:2 DGX_MUSIC_DEVICE"
    assert origins.describe(("max_attempts",)) == f"dotenv {etc / '.env'}:3 DGX_MUSIC_MAX_ATTEMPTS"
    assert origins.describe(("settle_s",)) == f"file {cfg}:4"
    assert origins.describe(("max_duration",)) == "default"


def test_unknown_dotenv_setting_names_the_variable_and_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DGX_MUSIC_LOG_LEVEL=INFO\nDGX_MUSIC_MAX_DURRATION=10\n")
    with pytest.raises(ConfigError) as e:
        load_settings(None)
    assert f"{tmp_path / '.env'}:2: DGX_MUSIC_MAX_DURRATION: unknown setting" in str(e.value)


def test_config_file_chosen_in_dotenv(tmp_path: Path) -> None:
    cfg = write(tmp_path, "device: cpu\n")
    (tmp_path / ".env").write_text(f"DGX_MUSIC_CONFIG={cfg}\n")
    assert resolve_config_path(None, env={}) == cfg
    assert (
        load_settings(resolve_config_path(None, env={})).device == "cpu"
    )  # and DGX_MUSIC_CONFIG is no unknown key
    assert resolve_config_path(tmp_path / "other.yaml", env={}) == tmp_path / "other.yaml"
    assert resolve_config_path(None, env={"DGX_MUSIC_CONFIG": "/from/env.yaml"}) == Path("/from/env.yaml")


def test_values_passed_in_code_replace_the_mapping_whole(tmp_path: Path) -> None:
    # bench and demo pass a complete `models:`; merging it into the default small (a hub id)
    # would give one model both an id and a path.
    s = load_settings(None, models={"small": {"path": str(tmp_path)}}, default_model="small")
    assert set(s.models) == {"small"} and s.models["small"].path == tmp_path and s.models["small"].id is None
