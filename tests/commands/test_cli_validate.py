"""`dgx-music validate` and `dgx-music schema` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_prints_ok_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "loop.yaml", "prompt: warm piano\nduration: 8\n")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 job)\n"


def test_bad_file_prints_file_line_field_message_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "typo.yaml", "prompt: warm piano\nsampling:\n  temprature: 0.5\n")
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert out == f"{path}:3: sampling.temprature: unknown key 'temprature' (did you mean 'temperature'?)\n"


def test_mixed_files_report_each_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "prompt: warm piano\n")
    bad = write(tmp_path, "bad.yaml", "prompt: warm piano\ncount: 9\nduration: 0\n")
    assert main(["validate", str(good), str(bad)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{good}: ok (1 job)"
    assert lines[1].startswith(f"{bad}:2: count: ") and "8" in lines[1]
    assert lines[2].startswith(f"{bad}:3: duration: ")


def test_missing_file_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 2
    assert capsys.readouterr().out == f"{missing}: no such file\n"


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "b.yaml", "jobs:\n  - prompt: one song\n  - prompt: two songs\n")
    bad = write(tmp_path, "x.yaml", "prompt: warm piano\nid: ../etc\n")
    assert main(["validate", "--json", str(good), str(bad)]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["files"][0] == {"file": str(good), "ok": True, "jobs": ["b.1", "b.2"], "errors": []}
    (error,) = doc["files"][1]["errors"]
    assert (error["loc"], error["line"]) == ("id", 2) and "not a valid job id" in error["msg"]


def test_max_duration_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "j.yaml", "prompt: warm piano\n")  # default duration 16 s
    assert main(["validate", "--max-duration", "10", str(path)]) == 2
    assert "limit of 10 s" in capsys.readouterr().out
    assert main(["validate", "--max-duration", "20", str(path)]) == 0


@pytest.mark.parametrize("value", ["0", "-5", "nan", "abc"])
def test_bad_max_duration_is_a_usage_error(value: str, tmp_path: Path) -> None:
    path = write(tmp_path, "j.yaml", "prompt: warm piano\n")
    with pytest.raises(SystemExit) as info:
        main(["validate", "--max-duration", value, str(path)])
    assert info.value.code == 2


def test_max_bytes_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "j.yaml", "prompt: warm piano\n# some padding to pass thirty bytes\n")
    assert main(["validate", "--max-bytes", "30", str(path)]) == 2
    assert "limited to 30 bytes" in capsys.readouterr().out


def test_config_supplies_limits_and_model_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    config = write(
        tmp_path,
        "config.yaml",
        f"spool: {tmp_path / 'spool'}\nmodels:\n  tiny: {{path: {model_dir}}}\n"
        "default_model: tiny\nmax_duration: 12\n",
    )
    ok = write(tmp_path, "ok.yaml", "prompt: warm piano\nmodel: tiny\nduration: 12\n")
    unknown = write(tmp_path, "unknown.yaml", "prompt: warm piano\nmodel: large\nduration: 5\n")
    long = write(tmp_path, "long.yaml", "prompt: warm piano\nduration: 13\n")
    assert main(["validate", "--config", str(config), str(ok), str(unknown), str(long)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{ok}: ok (1 job)"
    assert out[1] == f"{unknown}: model: job 'unknown' names unknown model 'large' (configured models: tiny)"
    assert out[2].startswith(f"{long}:2: duration: ") and "limit of 12 s" in out[2]


def test_bad_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "config.yaml", "max_durration: 5\n")
    job = write(tmp_path, "j.yaml", "prompt: warm piano\n")
    assert main(["validate", "--config", str(config), str(job)]) == 2
    assert "max_durration" in capsys.readouterr().err


def test_directory_argument_validates_its_job_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "a.yaml", "prompt: warm piano\n")
    write(tmp_path, "b.yml", "prompt: cold synth\n")
    write(tmp_path, ".hidden.yaml", "not: a job\n")
    write(tmp_path, "notes.txt", "not a job\n")
    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'a.yaml'}: ok (1 job)",
        f"{tmp_path / 'b.yml'}: ok (1 job)",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", str(empty)]) == 2
    assert "no *.yaml or *.yml job files" in capsys.readouterr().out


def test_validate_needs_a_file() -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


def test_schema_prints_the_job_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == (ROOT / "jobspec" / "examples" / "job.schema.json").read_text(encoding="utf-8")
    assert json.loads(out)["title"] == "dgx-music job file"


def test_schema_result_prints_the_sidecar_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--result"]) == 0
    out = capsys.readouterr().out
    # The committed contract (what the e2e and reliability sidecars are validated against) is
    # exactly what the command prints: a model change that moves it shows here, in review.
    committed = (ROOT / "jobspec" / "examples" / "result.schema.json").read_text(encoding="utf-8")
    assert out == committed, (
        "result.schema.json is out of date: run "
        "`python -m jobspec.schema --result > jobspec/examples/result.schema.json` "
        "(and bump SCHEMA_VERSION if existing readers would break)"
    )
    schema = json.loads(out)
    assert schema["title"] == "dgx-music result sidecar, schema_version 1"
    result = schema["$defs"]["ResultSidecar"]["properties"]
    assert result["schema_version"]["const"] == 1
    assert {"ResultSidecar", "ErrorSidecar", "OutputInfo", "ErrorInfo"} <= set(schema["$defs"])
    error_types = schema["$defs"]["ErrorInfo"]["properties"]["type"]["enum"]
    assert set(error_types) == {
        "invalid_job",
        "unknown_model",
        "out_of_memory",
        "timeout",
        "cancelled",
        "crashed",
        "generation_error",
        "internal",
    }


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_subprocess_validate_examples_exits_0() -> None:
    result = _run(
        "validate", *sorted(str(p) for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml"))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok (") >= 6
    assert "examples/batch.yaml: ok (3 jobs)" in result.stdout


def test_subprocess_validate_bad_file_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "bomb.yaml", "a: &a [x, x]\nb: [*a, *a]\nprompt: warm piano\n")
    result = _run("validate", str(bad))
    assert result.returncode == 2
    assert result.stdout.startswith(f"{bad}:1: YAML anchors and aliases are not allowed")


def test_config_families_refuse_keys_a_model_cannot_honour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    song = tmp_path / "song"
    song.mkdir()
    (song / "model_index.json").write_text('{"_class_name": "AceStepPipeline"}')
    config = write(
        tmp_path,
        "config.yaml",
        f"models:\n  small: {{id: facebook/musicgen-small}}\n  song: {{path: {song}}}\n"
        "default_model: small\n",
    )
    lyrics = write(tmp_path, "lyrics.yaml", "prompt: indie pop\nlyrics: |\n  [verse]\n  la la\n")
    melody = write(tmp_path, "melody.yaml", "prompt: indie pop\nmodel: song\nmelody: library/a.wav\n")
    long = write(tmp_path, "long.yaml", "prompt: indie pop\nmodel: song\nduration: 700\n")
    fine = write(tmp_path, "fine.yaml", "prompt: indie pop\nmodel: song\nlyrics: '[verse]'\nsteps: 8\n")
    args = ["validate", "--config", str(config), "--max-duration", "900"]
    assert main([*args, str(lyrics), str(melody), str(long), str(fine)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{lyrics}: model: job 'lyrics': model 'small' is of the musicgen family and cannot honour 'lyrics' "
        "(ace-step only) (name a model that takes it (`model: song`; configured ace-step models: song) "
        "or remove 'lyrics')"
    )
    assert "model 'song' is of the ace-step family and cannot honour 'melody'" in out[1]
    assert "configured musicgen models: small" in out[1]
    assert "longer than ace-step models make (600 s at most)" in out[2]
    assert out[3] == f"{fine}: ok (1 job)"


def test_a_job_over_the_memory_budget_is_refused_with_what_would_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """musicgen-large's decoder shape (48 layers of 2048) with 10 GiB of weights, run in 16-bit:
    a 30 s variation's key/value cache is 1.1 GiB, so 8 of them do not fit a 16 GB budget, 2 do."""
    large = tmp_path / "large"
    large.mkdir()
    (large / "config.json").write_text(
        json.dumps({"model_type": "musicgen", "decoder": {"num_hidden_layers": 48, "hidden_size": 2048}})
    )
    with open(large / "model.safetensors", "wb") as fh:
        fh.truncate(10 << 30)  # sparse: only its size is read
    config = write(
        tmp_path,
        "config.yaml",
        f"models:\n  large: {{path: {large}}}\ndefault_model: large\ndtype: bfloat16\nmax_memory_gb: 16\n",
    )
    eight = write(tmp_path, "eight.yaml", "prompt: a long take\nduration: 30\ncount: 8\n")
    two = write(tmp_path, "two.yaml", "prompt: a long take\nduration: 30\ncount: 2\n")
    assert main(["validate", "--config", str(config), str(eight), str(two)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert "needs about 19.5 GB (model 10.0 GB + 8 x 1.10 GB per variation of 30 s)" in out[0]
    assert "more than max_memory_gb (16 GB)" in out[0]
    assert "lower count to 4" in out[0] and "raise max_memory_gb" in out[0]
    assert out[1] == f"{two}: ok (1 job)"


def test_wrong_values_are_said_in_the_projects_words(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        "prompt: a tune for a test\nduration: -1\ncount: abc\npriority: urgent\noutput: {format: wave}\n",
    )
    res = subprocess.run(
        [sys.executable, "-m", "daemon", "validate", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert f"{bad}:2: duration: must be greater than 0, got -1" in res.stdout + res.stderr
    assert f"{bad}:4: priority: must be 'high', 'normal' or 'low', got 'urgent'" in res.stdout + res.stderr
    for raw in ("Input should", "input should", "Value error", "Extra inputs", "Field required"):
        assert raw not in res.stdout + res.stderr
