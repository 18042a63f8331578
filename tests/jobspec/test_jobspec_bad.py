"""Job files that must be refused: each case names the field, the line and a message fragment."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jobspec import ErrorDetail, JobSpecError, load_job_bytes

BASE = "prompt: warm piano\n"  # line 1; the case's own lines start at line 2


@dataclass(frozen=True)
class Bad:
    name: str
    data: bytes
    loc: str
    line: int | None
    fragment: str
    hint: str | None = None
    filename: str = "job.yaml"
    max_bytes: int = 65536
    max_duration: float = 300.0


def job(extra: str) -> bytes:
    return (BASE + extra).encode()


def nested(block: str, key: str, value: str) -> bytes:
    # block on line 2, the key on line 3
    return job(f"{block}:\n  {key}: {value}\n")


def batch_of(n: int) -> bytes:
    return ("jobs:\n" + "".join(f"  - prompt: song number {i}\n" for i in range(n))).encode()


BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
prompt: *i
"""

CASES: list[Bad] = [
    # --- YAML syntax and file shape ---------------------------------------------------
    Bad("unclosed-flow-list", job("duration: [1, 2\n"), "", 3, "started on line 2"),
    Bad(
        "colon-in-plain-value",
        b"prompt: intro: soft piano\n",
        "",
        1,
        "mapping values are not allowed",
        "quote",
    ),
    Bad("unclosed-quote", b'prompt: "warm piano\nduration: 8\n', "", 3, "YAML syntax error"),
    Bad("bad-indentation", b"prompt: warm piano\n  duration: 8\n", "", 2, "YAML syntax error"),
    Bad(
        "tab-indentation",
        job("sampling:\n\ttemperature: 1.0\n"),
        "",
        3,
        "tabs are not allowed for indentation",
    ),
    Bad("tab-indentation-top", b"\tprompt: warm piano\n", "", 1, "tabs are not allowed"),
    Bad("root-is-list", b"- prompt: warm piano\n", "", 1, "not a list"),
    Bad("root-is-scalar", b"warm piano please\n", "", 1, "not a single value"),
    Bad("root-is-number", b"\n\n42\n", "", 3, "not a single value"),
    Bad("empty-file", b"", "", None, "the file is empty"),
    Bad("whitespace-only", b"  \n\n   \n", "", None, "the file is empty"),
    Bad("comment-only", b"# just a comment\n# and another\n", "", None, "only comments"),
    Bad("two-documents", b"prompt: one song\n---\nprompt: two songs\n", "", 2, "single document"),
    Bad("missing-prompt", b"duration: 8\n", "prompt", 1, "required key 'prompt' is missing"),
    # --- ranges, just outside on both sides --------------------------------------------
    Bad("prompt-too-short-after-trim", b"prompt: '  ab  '\n", "prompt", 1, "2 characters after trimming"),
    Bad("prompt-too-long", ("prompt: " + "x" * 501 + "\n").encode(), "prompt", 1, "501 characters"),
    Bad("duration-zero", job("duration: 0\n"), "duration", 2, "greater than 0"),
    Bad("duration-negative", job("duration: -1\n"), "duration", 2, "greater than 0"),
    Bad(
        "duration-over-default-max", job("duration: 300.5\n"), "duration", 2, "limit of 300 s", "max_duration"
    ),
    Bad("duration-over-context-max", job("duration: 61\n"), "duration", 2, "limit of 60 s", max_duration=60),
    Bad("count-zero", job("count: 0\n"), "count", 2, "greater than or equal to 1"),
    Bad("count-nine", job("count: 9\n"), "count", 2, "less than or equal to 8"),
    Bad(
        "temperature-low",
        nested("sampling", "temperature", "0.09"),
        "sampling.temperature",
        3,
        "0.1",
        "greedy",
    ),
    Bad("temperature-high", nested("sampling", "temperature", "2.01"), "sampling.temperature", 3, "2"),
    Bad(
        "top-k-negative", nested("sampling", "top_k", "-1"), "sampling.top_k", 3, "greater than or equal to 0"
    ),
    Bad("top-k-high", nested("sampling", "top_k", "501"), "sampling.top_k", 3, "less than or equal to 500"),
    Bad(
        "top-p-negative",
        nested("sampling", "top_p", "-0.01"),
        "sampling.top_p",
        3,
        "greater than or equal to 0",
    ),
    Bad("top-p-high", nested("sampling", "top_p", "1.01"), "sampling.top_p", 3, "less than or equal to 1"),
    Bad(
        "cfg-low",
        nested("sampling", "cfg_coef", "0.99"),
        "sampling.cfg_coef",
        3,
        "greater than or equal to 1",
    ),
    Bad(
        "cfg-high",
        nested("sampling", "cfg_coef", "10.01"),
        "sampling.cfg_coef",
        3,
        "less than or equal to 10",
    ),
    Bad("seed-negative", job("seed: -1\n"), "seed", 2, "greater than or equal to 0"),
    Bad("seed-2-pow-63", job(f"seed: {2**63}\n"), "seed", 2, "less than or equal to"),
    Bad(
        "lufs-low",
        nested("output", "loudness_lufs", "-70.1"),
        "output.loudness_lufs",
        3,
        "-70",
        "null to skip",
    ),
    Bad("lufs-high", nested("output", "loudness_lufs", "-4.9"), "output.loudness_lufs", 3, "-5"),
    Bad("true-peak-low", nested("output", "true_peak_dbtp", "-9.1"), "output.true_peak_dbtp", 3, "-9"),
    Bad(
        "true-peak-high",
        nested("output", "true_peak_dbtp", "0.1"),
        "output.true_peak_dbtp",
        3,
        "less than or equal to 0",
    ),
    Bad("id-129-chars", job("id: " + "a" * 129 + "\n"), "id", 2, "not a valid job id"),
    # --- non-finite numbers, wrong types -----------------------------------------------
    Bad("duration-nan", job("duration: .nan\n"), "duration", 2, "finite number, got .nan"),
    Bad("duration-inf", job("duration: .inf\n"), "duration", 2, "finite number, got .inf"),
    Bad("duration-minus-inf", job("duration: -.inf\n"), "duration", 2, "finite number, got -.inf"),
    Bad("temperature-inf", nested("sampling", "temperature", ".Inf"), "sampling.temperature", 3, "finite"),
    Bad("lufs-nan", nested("output", "loudness_lufs", ".NaN"), "output.loudness_lufs", 3, "finite"),
    Bad("duration-bool", job("duration: true\n"), "duration", 2, "expected a number, got true"),
    Bad("count-bool", job("count: false\n"), "count", 2, "expected a number, got false"),
    Bad("seed-bool", job("seed: true\n"), "seed", 2, "expected a number, got true"),
    Bad("duration-string", job('duration: "16"\n'), "duration", 2, "got the string '16'", "without quotes"),
    Bad("count-string", job("count: '4'\n"), "count", 2, "got the string '4'"),
    Bad("duration-sexagesimal", job("duration: 1:30\n"), "duration", 2, "got the string '1:30'"),
    Bad("count-fraction", job("count: 1.5\n"), "count", 2, "whole number, got 1.5"),
    Bad("top-k-float", nested("sampling", "top_k", "250.0"), "sampling.top_k", 3, "whole number"),
    Bad("greedy-yes", nested("sampling", "greedy", "yes"), "sampling.greedy", 3, "true or false, got 'yes'"),
    Bad("greedy-int", nested("sampling", "greedy", "1"), "sampling.greedy", 3, "true or false, got 1"),
    Bad("prompt-number", b"prompt: 12345\n", "prompt", 1, "expected text, got 12345", "quotes"),
    Bad("prompt-list", b"prompt:\n  - a\n  - b\n", "prompt", 1, "expected text"),
    Bad("sampling-scalar", job("sampling: 5\n"), "sampling", 2, "must be a mapping"),
    Bad("priority-unknown", job("priority: urgent\n"), "priority", 2, "'high', 'normal' or 'low'"),
    Bad(
        "format-aiff",
        nested("output", "format", "aiff"),
        "output.format",
        3,
        "'wav', 'flac', 'mp3' or 'ogg'",
        "mp3 or ogg",
    ),
    Bad(
        "codec-with-wav",
        job("output:\n  format: wav\n  codec: opus\n"),
        "output.codec",
        4,
        "ogg only, not wav",
        "format: ogg",
    ),
    Bad(
        "codec-unknown",
        job("output:\n  format: ogg\n  codec: speex\n"),
        "output.codec",
        4,
        "'vorbis' or 'opus'",
    ),
    Bad(
        "quality-with-flac",
        job("output:\n  format: flac\n  quality: 0.5\n"),
        "output.quality",
        4,
        "not flac",
        "leave quality out",
    ),
    Bad(
        "quality-high",
        job("output:\n  format: mp3\n  quality: 1.5\n"),
        "output.quality",
        4,
        "less than or equal to 1",
    ),
    Bad(
        "subtype-with-mp3",
        job("output:\n  format: mp3\n  subtype: PCM_24\n"),
        "output.subtype",
        4,
        "applies to wav and flac",
        "quality",
    ),
    Bad("subtype-pcm8", nested("output", "subtype", "PCM_8"), "output.subtype", 3, "PCM_16"),
    Bad(
        "float-with-flac",
        job("output:\n  format: flac\n  subtype: FLOAT\n"),
        "output.subtype",
        4,
        "FLOAT is not available for flac",
    ),
    Bad("seed-huge-digits", job("seed: " + "9" * 5000 + "\n"), "", 2, "not a usable integer"),
    # --- unknown keys at every level, with a hint ----------------------------------------
    Bad("typo-top", b"promt: warm piano\n", "promt", 1, "unknown key 'promt'", "did you mean 'prompt'?"),
    Bad("typo-top-case", job("Duration: 8\n"), "Duration", 2, "unknown key", "did you mean 'duration'?"),
    Bad(
        "typo-sampling",
        nested("sampling", "temprature", "1.0"),
        "sampling.temprature",
        3,
        "unknown key",
        "did you mean 'temperature'?",
    ),
    Bad(
        "typo-output",
        nested("output", "loudnes_lufs", "-14"),
        "output.loudnes_lufs",
        3,
        "unknown key",
        "did you mean 'loudness_lufs'?",
    ),
    Bad("unknown-no-match", job("colour: blue\n"), "colour", 2, "unknown key 'colour'", "valid keys here"),
    Bad(
        "typo-defaults",
        b"defaults:\n  durration: 8\njobs:\n  - prompt: warm piano\n",
        "defaults.durration",
        2,
        "unknown key",
        "did you mean 'duration'?",
    ),
    Bad(
        "typo-defaults-sampling",
        b"defaults:\n  sampling:\n    top_kk: 10\njobs:\n  - prompt: warm piano\n",
        "defaults.sampling.top_kk",
        3,
        "unknown key",
        "did you mean 'top_k'?",
    ),
    Bad(
        "typo-in-batch-job",
        b"jobs:\n  - prompt: warm piano\n  - prompt: cold synth\n    sed: 4\n",
        "jobs[1].sed",
        4,
        "unknown key",
        "did you mean 'seed'?",
    ),
    Bad(
        "typo-in-batch-job-output",
        b"jobs:\n  - prompt: warm piano\n    output:\n      fromat: flac\n",
        "jobs[0].output.fromat",
        4,
        "unknown key",
        "did you mean 'format'?",
    ),
    Bad(
        "typo-jobs-key",
        b"jobz:\n  - prompt: warm piano\nprompt: x y z\n",
        "jobz",
        1,
        "unknown key",
        "did you mean 'jobs'?",
    ),
    Bad("merge-key", job("<<: {duration: 4}\n"), "<<", 2, "unknown key '<<'"),
    # --- duplicate keys ------------------------------------------------------------------
    Bad(
        "duplicate-top",
        job("duration: 8\nduration: 9\n"),
        "duration",
        3,
        "duplicate key 'duration' (first set on line 2)",
    ),
    Bad(
        "duplicate-nested",
        job("sampling:\n  top_k: 5\n  top_k: 6\n"),
        "sampling.top_k",
        4,
        "duplicate key 'top_k'",
    ),
    Bad(
        "duplicate-in-batch-job",
        b"jobs:\n  - prompt: warm piano\n    prompt: cold synth\n",
        "jobs[0].prompt",
        3,
        "duplicate key 'prompt'",
    ),
    Bad("duplicate-flow", job("output: {format: wav, format: flac}\n"), "output.format", 2, "duplicate key"),
    # --- anchors, aliases, tags ----------------------------------------------------------
    Bad("billion-laughs", BILLION_LAUGHS, "", 1, "anchors and aliases are not allowed"),
    Bad("anchor-alone", b"prompt: &p warm piano\n", "", 1, "found anchor &p"),
    Bad("alias-alone", b"prompt: warm piano\nid: *p\n", "", 2, "found alias *p"),
    Bad("anchor-on-mapping", job("sampling: &s\n  top_k: 5\n"), "", 2, "found anchor &s"),
    Bad(
        "python-tag",
        b"prompt: !!python/object/apply:os.system ['rm -rf /']\n",
        "",
        1,
        "tag '!!python/object/apply:os.system'",
    ),
    Bad("python-name-tag", job("seed: !!python/name:os.getpid\n"), "", 2, "is not allowed"),
    Bad("custom-tag", job("duration: !seconds 8\n"), "", 2, "tag '!seconds' is not allowed"),
    Bad("binary-tag", job("id: !!binary aGVsbG8=\n"), "", 2, "tag '!!binary'"),
    Bad("timestamp-tag", job("id: !!timestamp 2024-01-01\n"), "", 2, "tag '!!timestamp'"),
    Bad("set-tag", job("sampling: !!set {a, b}\n"), "", 2, "tag '!!set'"),
    Bad("bool-tag-on-text", job("count: !!bool maybe\n"), "", 2, "'maybe' is not a boolean"),
    # --- bytes that are not a YAML text --------------------------------------------------
    Bad("binary-junk", bytes(range(128, 256)) * 4, "", 1, "not valid UTF-8"),
    Bad("png-header", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "", 3, "NUL bytes", "UTF-8 text file"),
    Bad("nul-bytes", b"prompt: warm piano\nid: a\x00b\n", "", 2, "NUL bytes"),
    Bad(
        "invalid-utf8-line-3",
        b"prompt: warm piano\nduration: 8\nid: caf\xe9\n",
        "",
        3,
        "not valid UTF-8 (byte 0xe9)",
    ),
    Bad("utf16-file", "prompt: warm piano\n".encode("utf-16"), "", 1, "UTF-16", "save the job as UTF-8"),
    Bad("control-char", b"prompt: warm piano\nid: a\x07b\n", "", 2, "control character"),
    Bad("oversized", b"prompt: warm piano\n#" + b"x" * 65536 + b"\n", "", None, "limited to 65536 bytes"),
    Bad("oversized-small-limit", job("duration: 8\n"), "", None, "limited to 20 bytes", max_bytes=20),
    Bad("deep-nesting-flow", job("id: " + "[" * 40 + "]" * 40 + "\n"), "", 2, "nested more than 32 levels"),
    Bad(
        "deep-nesting-block",
        ("".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "v\n").encode(),
        "",
        33,
        "nested more than 32",
    ),
    Bad("too-many-values", job("id: [" + "1," * 6000 + "1]\n"), "", 2, "more than 5000 values"),
    # --- traversal and junk in id / model -------------------------------------------------
    Bad("id-dotdot-slash", job("id: ../x\n"), "id", 2, "not a valid job id", "file names"),
    Bad("id-slash", job("id: a/b\n"), "id", 2, "not a valid job id"),
    Bad("id-dotdot", job("id: ..\n"), "id", 2, "not a valid job id"),
    Bad("id-dotdot-inside", job("id: a..b\n"), "id", 2, "no '..'"),
    Bad("id-hidden", job("id: .hidden\n"), "id", 2, "not a valid job id"),
    Bad("id-absolute", job("id: /etc/passwd\n"), "id", 2, "not a valid job id"),
    Bad("id-backslash", job("id: 'a\\b'\n"), "id", 2, "not a valid job id"),
    Bad("id-nul-escape", job('id: "a\\0b"\n'), "id", 2, "not a valid job id"),
    Bad("id-newline-escape", job('id: "abc\\n"\n'), "id", 2, "not a valid job id"),
    Bad("id-empty", job("id: ''\n"), "id", 2, "not a valid job id"),
    Bad("id-space", job("id: my song\n"), "id", 2, "not a valid job id"),
    Bad("id-number", job("id: 42\n"), "id", 2, "expected text"),
    Bad("model-path", job("model: ../models/evil\n"), "model", 2, "not a model name", "never a path"),
    Bad("model-hub-id", job("model: facebook/musicgen-small\n"), "model", 2, "not a model name"),
    # --- references and sections ---------------------------------------------------------
    Bad(
        "ref-absolute",
        job("continue_from: /etc/passwd.wav\n"),
        "continue_from",
        2,
        "absolute path",
        "library/<file>",
    ),
    Bad("ref-windows-absolute", job("continue_from: 'C:/x.wav'\n"), "continue_from", 2, "absolute path"),
    Bad(
        "ref-dotdot",
        job("continue_from: library/../secret.wav\n"),
        "continue_from",
        2,
        "'..'",
        "outbox/<file>",
    ),
    Bad("ref-backslash", job("melody: 'library\\\\..\\\\x.wav'\n"), "melody", 2, "backslash"),
    Bad("ref-other-root", job("melody: inbox/x.wav\n"), "melody", 2, "must start with library/ or outbox/"),
    Bad("ref-bare-name", job("melody: riff.wav\n"), "melody", 2, "must start with library/ or outbox/"),
    Bad("ref-two-levels", job("melody: library/a/b/riff.wav\n"), "melody", 2, "at most one folder level"),
    Bad("ref-hidden", job("continue_from: library/.riff.wav\n"), "continue_from", 2, "no hidden names"),
    Bad("ref-empty-part", job("continue_from: library//riff.wav\n"), "continue_from", 2, "empty parts"),
    Bad(
        "ref-not-audio",
        job("continue_from: library/notes.txt\n"),
        "continue_from",
        2,
        "not an audio file name",
    ),
    Bad("ref-number", job("continue_from: 12\n"), "continue_from", 2, "expected text"),
    Bad(
        "ref-both-roles",
        job("continue_from: library/a.wav\nmelody: library/b.wav\n"),
        "melody",
        3,
        "cannot be combined",
    ),
    Bad(
        "sections-with-prompt",
        b"prompt: intro\nsections:\n  - {prompt: soft intro, duration: 4}\n",
        "prompt",
        1,
        "together with 'sections'",
        "either `sections:`",
    ),
    Bad(
        "sections-with-duration",
        b"duration: 8\nsections:\n  - {prompt: soft intro, duration: 4}\n",
        "duration",
        1,
        "together with 'sections'",
    ),
    Bad("sections-empty", b"sections: []\n", "sections", 1, "at least 1 item", "1 to 16 sections"),
    Bad(
        "sections-seventeen",
        ("sections:\n" + "  - {prompt: part of it, duration: 1}\n" * 17).encode(),
        "sections",
        1,
        "at most 16 items",
    ),
    Bad(
        "section-prompt-short",
        b"sections:\n  - {prompt: ok prompt, duration: 4}\n  - {prompt: ab, duration: 4}\n",
        "sections[1].prompt",
        3,
        "2 characters",
    ),
    Bad(
        "section-duration-zero",
        b"sections:\n  - prompt: soft intro\n    duration: 0\n",
        "sections[0].duration",
        3,
        "greater than 0",
    ),
    Bad(
        "section-missing-duration",
        b"sections:\n  - prompt: soft intro\n",
        "sections[0].duration",
        2,
        "required key 'duration'",
    ),
    Bad(
        "section-typo",
        b"sections:\n  - prompt: soft intro\n    duraton: 4\n",
        "sections[0].duraton",
        3,
        "unknown key",
        "did you mean 'duration'?",
    ),
    Bad(
        "sections-too-long",
        b"sections:\n  - {prompt: first half, duration: 40}\n  - {prompt: second half, duration: 30}\n",
        "sections",
        1,
        "add up to 70 s",
        "shorten the sections",
        max_duration=60,
    ),
    Bad("section-not-mapping", b"sections:\n  - soft intro\n", "sections[0]", 2, "must be a mapping"),
    Bad(
        "batch-job-sections-and-prompt",
        b"jobs:\n  - prompt: one song\n    sections: [{prompt: intro part, duration: 2}]\n",
        "jobs[0].prompt",
        2,
        "together with 'sections'",
    ),
    # --- batches --------------------------------------------------------------------------
    Bad("batch-zero-jobs", b"jobs: []\n", "jobs", 1, "at least one job"),
    Bad("batch-33-jobs", batch_of(33), "jobs", 1, "at most 32 jobs, this one has 33"),
    Bad(
        "batch-bad-job-index-2",
        b"jobs:\n  - prompt: one song\n  - prompt: two songs\n  - prompt: three songs\n    duration: -4\n",
        "jobs[2].duration",
        5,
        "greater than 0",
    ),
    Bad("batch-jobs-not-list", b"jobs: warm piano\n", "jobs", 1, "must be a list"),
    Bad("batch-jobs-mapping", b"jobs:\n  prompt: warm piano\n", "jobs", 1, "must be a list"),
    Bad(
        "batch-job-not-mapping",
        b"jobs:\n  - prompt: one song\n  - just a string\n",
        "jobs[1]",
        3,
        "each job must be a mapping",
    ),
    Bad(
        "batch-job-missing-prompt",
        b"jobs:\n  - prompt: one song\n  - duration: 4\n",
        "jobs[1].prompt",
        3,
        "required key 'prompt'",
    ),
    Bad(
        "batch-duplicate-ids",
        b"jobs:\n  - prompt: one song\n    id: take\n  - prompt: two songs\n    id: take\n",
        "jobs[1].id",
        5,
        "duplicate job id 'take' (also used by jobs[0])",
    ),
    Bad(
        "batch-explicit-id-clashes-with-generated",
        b"jobs:\n  - prompt: one song\n    id: mix.2\n  - prompt: two songs\n",
        "jobs[1].id",
        4,
        "duplicate job id 'mix.2'",
        filename="mix.yaml",
    ),
    Bad(
        "batch-defaults-id",
        b"defaults:\n  id: same\njobs:\n  - prompt: one song\n",
        "defaults.id",
        2,
        "unknown key 'id'",
        "set `id` on each job",
    ),
    Bad(
        "batch-defaults-bad-value",
        b"defaults:\n  count: 12\njobs:\n  - prompt: one song\n",
        "defaults.count",
        2,
        "less than or equal to 8",
    ),
    Bad(
        "batch-defaults-not-mapping",
        b"defaults: fast\njobs:\n  - prompt: one song\n",
        "defaults",
        1,
        "must be a mapping",
    ),
    Bad("batch-defaults-without-jobs", b"defaults:\n  duration: 4\n", "jobs", 1, "no `jobs:` list"),
    Bad(
        "batch-with-top-level-prompt",
        b"prompt: one song\njobs:\n  - prompt: two songs\n",
        "prompt",
        1,
        "unknown key",
        "under `defaults:`",
    ),
    Bad(
        "batch-defaults-flac-job-float",
        b"defaults:\n  output: {format: flac}\njobs:\n  - prompt: one song\n    output: {subtype: FLOAT}\n",
        "jobs[0].output.subtype",
        5,
        "FLOAT is not available for flac",
    ),
    Bad(
        "batch-defaults-duration-too-long",
        b"defaults:\n  duration: 100\njobs:\n  - prompt: one song\n",
        "defaults.duration",
        2,
        "limit of 60 s",
        max_duration=60,
    ),
]


def _refuse(case: Bad) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        load_job_bytes(case.data, case.filename, max_bytes=case.max_bytes, max_duration=case.max_duration)
    return info.value


def _find(error: JobSpecError, loc: str) -> ErrorDetail:
    for detail in error.details:
        if detail.loc == loc:
            return detail
    raise AssertionError(f"no error at {loc!r}; got {[d.model_dump() for d in error.details]}")


def test_there_are_at_least_forty_bad_inputs() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_field_line_and_message(case: Bad) -> None:
    error = _refuse(case)
    assert error.error_type == "invalid_job"
    detail = _find(error, case.loc)
    assert detail.line == case.line, detail
    assert case.fragment in detail.msg, detail
    if case.hint is not None:
        assert detail.hint is not None and case.hint in detail.hint, detail
    # The readable form names the file, and the line where there is one.
    text = str(error)
    assert case.filename in text
    if case.line is not None:
        assert f"{case.filename}:{case.line}:" in text


def test_defaults_error_is_reported_once_not_per_job() -> None:
    data = (
        b"defaults:\n  promt: x\n"
        b"jobs:\n  - prompt: one song\n  - prompt: two songs\n  - prompt: three songs\n"
    )
    error = _refuse(Bad("x", data, "", None, ""))
    assert [d.loc for d in error.details] == ["defaults.promt"]


def test_every_problem_in_a_file_is_reported_together() -> None:
    data = job("duration: 0\ncount: 9\nsampling:\n  top_k: -1\n")
    error = _refuse(Bad("x", data, "", None, ""))
    assert {(d.loc, d.line) for d in error.details} == {("duration", 2), ("count", 3), ("sampling.top_k", 5)}
    assert "3 problems" in str(error)


def test_batch_error_at_third_job_in_crlf_file_keeps_its_line() -> None:
    data = (
        b"jobs:\r\n  - prompt: one song\r\n  - prompt: two songs\r\n"
        b"  - prompt: three songs\r\n    count: 0\r\n"
    )
    detail = _find(_refuse(Bad("x", data, "", None, "")), "jobs[2].count")
    assert detail.line == 5


def test_alias_bomb_is_refused_before_anything_expands() -> None:
    # The refusal comes from the first anchor: no alias is ever resolved, so no list is built.
    error = _refuse(Bad("x", BILLION_LAUGHS, "", None, ""))
    assert len(error.details) == 1
    assert "alias" in error.details[0].msg and error.details[0].line == 1
