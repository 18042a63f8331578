"""The test harness's fault injection: only from its environment variable, never under systemd."""

from __future__ import annotations

import json
import logging

import pytest

from daemon.core.config import Settings
from daemon.service.faults import ENV_VAR, Faults, faults_from_environment


def test_no_variable_no_faults() -> None:
    assert faults_from_environment({}) is None


def test_faults_are_read_and_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="daemon.service.faults"):
        got = faults_from_environment({ENV_VAR: json.dumps({"oom_once": True})})
    assert got == Faults(oom_once=True) and got.any
    assert "FAULT INJECTION ACTIVE" in caplog.text


def test_refused_under_systemd(caplog: pytest.LogCaptureFixture) -> None:
    env = {ENV_VAR: json.dumps({"kill_on_prompt": "x"}), "INVOCATION_ID": "0123abcd"}
    with caplog.at_level(logging.ERROR, logger="daemon.service.faults"):
        assert faults_from_environment(env) is None
    assert "refused" in caplog.text


@pytest.mark.parametrize("raw", ["not json", '{"oom_twice": true}', '{"stall_s": -1}'])
def test_bad_description_is_an_error(raw: str) -> None:
    with pytest.raises(ValueError, match=ENV_VAR):
        faults_from_environment({ENV_VAR: raw})


def test_not_a_config_key() -> None:
    assert "fault_injection" not in Settings.model_fields
    with pytest.raises(Exception, match="fault_injection"):
        Settings(fault_injection={"oom_once": True})  # type: ignore[call-arg]
