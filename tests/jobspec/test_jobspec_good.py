"""Job files that must be accepted, and what they turn into."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from jobspec import Job, JobSpecError, Output, Sampling, default_job_id, load_job_bytes, load_job_file


def one(data: bytes | str, filename: str = "job.yaml", **kw: float) -> Job:
    raw = data.encode() if isinstance(data, str) else data
    jobs = load_job_bytes(raw, filename, **kw)  # type: ignore[arg-type]
    assert len(jobs) == 1
    return jobs[0]


def test_minimal_job_gets_the_musicgen_defaults() -> None:
    job = one("prompt: warm lo-fi piano\n", "loop.yaml")
    assert job.id == "loop"
    assert (job.duration, job.count, job.seed, job.model, job.priority) == (16.0, 1, None, None, "normal")
    assert job.sampling == Sampling(temperature=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, greedy=False)
    assert job.output == Output(format="wav", subtype="PCM_16", loudness_lufs=-16.0, true_peak_dbtp=-1.0)


def test_full_job_keeps_every_value() -> None:
    job = one(
        """\
prompt: "warm lo-fi hip hop beat, dusty piano, vinyl crackle"
duration: 12.5
model: small
seed: 1234
count: 3
priority: high
sampling: {temperature: 0.7, top_k: 0, top_p: 0.9, cfg_coef: 5, greedy: false}
output: {format: flac, subtype: PCM_24, loudness_lufs: -14, true_peak_dbtp: -2}
id: my-take_1.v2
"""
    )
    assert job.id == "my-take_1.v2"
    assert (job.duration, job.model, job.seed, job.count, job.priority) == (12.5, "small", 1234, 3, "high")
    assert job.sampling.top_p == 0.9 and job.sampling.top_k == 0 and job.sampling.cfg_coef == 5.0
    assert (
        job.output.format == "flac" and job.output.subtype == "PCM_24" and job.output.loudness_lufs == -14.0
    )


def test_utf8_bom_is_accepted() -> None:
    assert one(b"\xef\xbb\xbfprompt: warm piano\nduration: 4\n").duration == 4.0


def test_crlf_line_endings_are_accepted() -> None:
    job = one(b"prompt: warm piano\r\nsampling:\r\n  top_k: 50\r\n")
    assert job.sampling.top_k == 50


def test_bom_and_crlf_together_still_report_lines() -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_bytes(b"\xef\xbb\xbfprompt: warm piano\r\n\r\ncount: 0\r\n", "x.yaml")
    assert (info.value.details[0].loc, info.value.details[0].line) == ("count", 3)


def test_yml_extension_gives_the_stem_as_id() -> None:
    assert one("prompt: warm piano\n", "ambient.yml").id == "ambient"


@pytest.mark.parametrize(
    "prompt",
    ["🎹🎷🥁 jazz trio", "温かいピアノ", "古筝与琵琶的合奏", "café électronique à Paris", "🎵🎵🎵"],
)
def test_unicode_prompts_are_kept(prompt: str) -> None:
    assert one(f'prompt: "{prompt}"\n').prompt == prompt


def test_prompt_length_counts_characters_not_bytes() -> None:
    # 500 CJK characters are 1500 bytes of UTF-8: still a valid prompt.
    assert len(one("prompt: " + "音" * 500 + "\n").prompt) == 500


def test_comments_everywhere_are_ignored() -> None:
    job = one(
        "# a comment first\nprompt: warm piano  # trailing\n\n"
        "# between\nsampling:\n  # inside\n  top_k: 10 # x\n"
    )
    assert (job.prompt, job.sampling.top_k) == ("warm piano", 10)


def test_prompt_is_trimmed() -> None:
    assert one("prompt: '   warm piano \t '\n").prompt == "warm piano"


def test_multiline_prompt_block_scalar() -> None:
    assert one("prompt: >\n  warm piano,\n  soft rain\n").prompt == "warm piano, soft rain"


def test_yaml_1_1_surprises_do_not_apply() -> None:
    # `yes` stays text, `010` is ten (not octal 8), `0x10` is sixteen, 1e1 is a float.
    job = one("prompt: yes\nseed: 010\ncount: 0x2\nduration: 1e1\n")
    assert (job.prompt, job.seed, job.count, job.duration) == ("yes", 10, 2, 10.0)


def test_explicit_core_tags_are_allowed() -> None:
    job = one("prompt: !!str 12345\nduration: !!float 8\n")
    assert (job.prompt, job.duration) == ("12345", 8.0)


def test_date_like_prompt_stays_text() -> None:
    assert one("prompt: 2024-01-01\n").prompt == "2024-01-01"


def test_integer_duration_becomes_float() -> None:
    job = one("prompt: warm piano\nduration: 8\n")
    assert isinstance(job.duration, float) and job.duration == 8.0


def test_null_loudness_and_peak_skip_processing() -> None:
    job = one("prompt: warm piano\noutput: {loudness_lufs: null, true_peak_dbtp: ~}\n")
    assert job.output.loudness_lufs is None and job.output.true_peak_dbtp is None


def test_greedy_switch() -> None:
    assert one("prompt: warm piano\nsampling: {greedy: true}\n").sampling.greedy is True


def test_float_subtype_with_wav_is_fine() -> None:
    assert one("prompt: warm piano\noutput: {subtype: FLOAT}\n").output.subtype == "FLOAT"


# Just inside every range edge: the value passes through unchanged.
INSIDE = [
    ("prompt: abc\n", lambda j: j.prompt == "abc"),
    ("prompt: " + "x" * 500 + "\n", lambda j: len(j.prompt) == 500),
    ("prompt: abc\nduration: 0.01\n", lambda j: j.duration == 0.01),
    ("prompt: abc\nduration: 300\n", lambda j: j.duration == 300.0),
    ("prompt: abc\ncount: 1\n", lambda j: j.count == 1),
    ("prompt: abc\ncount: 8\n", lambda j: j.count == 8),
    ("prompt: abc\nsampling: {temperature: 0.1}\n", lambda j: j.sampling.temperature == 0.1),
    ("prompt: abc\nsampling: {temperature: 2.0}\n", lambda j: j.sampling.temperature == 2.0),
    ("prompt: abc\nsampling: {top_k: 0}\n", lambda j: j.sampling.top_k == 0),
    ("prompt: abc\nsampling: {top_k: 500}\n", lambda j: j.sampling.top_k == 500),
    ("prompt: abc\nsampling: {top_p: 0}\n", lambda j: j.sampling.top_p == 0.0),
    ("prompt: abc\nsampling: {top_p: 1}\n", lambda j: j.sampling.top_p == 1.0),
    ("prompt: abc\nsampling: {cfg_coef: 1}\n", lambda j: j.sampling.cfg_coef == 1.0),
    ("prompt: abc\nsampling: {cfg_coef: 10}\n", lambda j: j.sampling.cfg_coef == 10.0),
    ("prompt: abc\nseed: 0\n", lambda j: j.seed == 0),
    (f"prompt: abc\nseed: {2**63 - 1}\n", lambda j: j.seed == 2**63 - 1),
    ("prompt: abc\noutput: {loudness_lufs: -70}\n", lambda j: j.output.loudness_lufs == -70.0),
    ("prompt: abc\noutput: {loudness_lufs: -5}\n", lambda j: j.output.loudness_lufs == -5.0),
    ("prompt: abc\noutput: {true_peak_dbtp: -9}\n", lambda j: j.output.true_peak_dbtp == -9.0),
    ("prompt: abc\noutput: {true_peak_dbtp: 0}\n", lambda j: j.output.true_peak_dbtp == 0.0),
    ("prompt: abc\nid: " + "a" * 128 + "\n", lambda j: j.id == "a" * 128),
    ("prompt: abc\nid: a.b_c-d\n", lambda j: j.id == "a.b_c-d"),
    ("prompt: abc\nmodel: musicgen-small_v1.5\n", lambda j: j.model == "musicgen-small_v1.5"),
    ("prompt: abc\npriority: low\n", lambda j: j.priority == "low"),
]


@pytest.mark.parametrize("text,check", INSIDE, ids=[t.splitlines()[-1][:40] for t, _ in INSIDE])
def test_values_just_inside_the_ranges_pass(text: str, check) -> None:  # type: ignore[no-untyped-def]
    assert check(one(text))


def test_max_duration_comes_from_the_caller() -> None:
    assert one("prompt: abc\nduration: 600\n", max_duration=600).duration == 600.0
    with pytest.raises(JobSpecError):
        load_job_bytes(b"prompt: abc\nduration: 600.1\n", "j.yaml", max_duration=600)


def test_file_at_exactly_the_size_limit_is_read() -> None:
    data = b"prompt: warm piano\n#"
    data += b"x" * (100 - len(data) - 1) + b"\n"
    assert len(data) == 100
    assert one(data, max_bytes=100).prompt == "warm piano"


def test_job_is_frozen() -> None:
    job = one("prompt: warm piano\n")
    with pytest.raises(pydantic.ValidationError):
        job.duration = 99  # type: ignore[misc]


# --- batches -------------------------------------------------------------------------


def test_batch_ids_defaults_and_deep_merge() -> None:
    data = b"""\
defaults:
  duration: 10
  seed: 7
  sampling: {temperature: 0.8, top_k: 100}
  output: {format: flac, subtype: PCM_24}
jobs:
  - prompt: first song
  - prompt: second song
    duration: 20
    sampling: {top_k: 5}
  - prompt: third song
    id: lullaby
    output: {loudness_lufs: -20}
"""
    first, second, third = load_job_bytes(data, "album.yaml")
    assert [first.id, second.id, third.id] == ["album.1", "album.2", "lullaby"]
    assert (first.duration, second.duration, third.duration) == (10.0, 20.0, 10.0)
    assert first.seed == second.seed == third.seed == 7
    # sampling/output merge key by key: the job's top_k wins, temperature still comes from defaults
    assert (second.sampling.top_k, second.sampling.temperature) == (5, 0.8)
    assert (first.sampling.top_k, first.sampling.cfg_coef) == (100, 3.0)
    assert (third.output.format, third.output.subtype, third.output.loudness_lufs) == (
        "flac",
        "PCM_24",
        -20.0,
    )


def test_batch_with_prompt_in_defaults() -> None:
    jobs = load_job_bytes(b"defaults:\n  prompt: shared idea\njobs:\n  - seed: 1\n  - seed: 2\n", "s.yaml")
    assert [(j.prompt, j.seed) for j in jobs] == [("shared idea", 1), ("shared idea", 2)]


def test_batch_of_one_and_of_thirty_two() -> None:
    assert [j.id for j in load_job_bytes(b"jobs:\n  - prompt: only one\n", "b.yaml")] == ["b.1"]
    data = ("jobs:\n" + "".join(f"  - prompt: song {i}\n" for i in range(32))).encode()
    jobs = load_job_bytes(data, "b.yaml")
    assert len(jobs) == 32 and jobs[-1].id == "b.32"


def test_batch_without_defaults_uses_model_defaults() -> None:
    (job,) = load_job_bytes(b"jobs:\n  - prompt: only one\n", "b.yaml")
    assert (job.duration, job.sampling.top_k) == (16.0, 250)


# --- ids from file names -------------------------------------------------------------


@pytest.mark.parametrize(
    "filename,expected",
    [
        ("loop.yaml", "loop"),
        ("/var/spool/inbox/loop.YML", "loop"),
        ("my song (final).yaml", "my-song--final-"),
        (".hidden.yaml", "hidden"),
        ("..yaml", "job"),
        ("a..b.yaml", "a.b"),
        ("ü.yaml", "job"),
        ("x" * 200 + ".yaml", "x" * 128),
        ("no-suffix", "no-suffix"),
    ],
)
def test_default_job_id_is_always_a_valid_id(filename: str, expected: str) -> None:
    job_id = default_job_id(filename)
    assert job_id == expected
    assert one("prompt: warm piano\n", filename).id == expected


def test_long_batch_stem_leaves_room_for_the_index() -> None:
    jobs = load_job_bytes(b"jobs:\n  - prompt: only one\n", "y" * 200 + ".yaml")
    assert jobs[0].id.endswith(".1") and len(jobs[0].id) <= 128


# --- files -----------------------------------------------------------------------------


def test_load_job_file_reads_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "night-drive.yaml"
    path.write_text("prompt: synthwave night drive\nduration: 8\n", encoding="utf-8")
    (job,) = load_job_file(path)
    assert (job.id, job.duration) == ("night-drive", 8.0)


def test_load_job_file_refuses_an_oversized_file_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"prompt: warm piano\n#" + b"x" * 200_000 + b"\n")
    with pytest.raises(JobSpecError) as info:
        load_job_file(path)
    assert "200021 bytes" in info.value.details[0].msg and "65536" in info.value.details[0].msg


def test_load_job_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_file(tmp_path / "nope.yaml")
    assert info.value.details[0].msg.startswith("cannot read the file")
    assert "nope.yaml" in str(info.value)


def test_load_job_file_directory(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError) as info:
        load_job_file(tmp_path)
    assert "cannot read the file" in info.value.details[0].msg


def test_inbox_folder_names_follow_the_job_id_rule() -> None:
    from jobspec.names import folder_problem, source_file_name, source_folder, source_name_for

    assert folder_problem("band") is None and folder_problem("Band_2.mixes-A") is None
    assert "not allowed" in (folder_problem("bad name") or "")
    assert "not allowed" in (folder_problem("a..b") or "") and "not allowed" in (folder_problem("-x") or "")
    assert source_name_for("band", "x.yaml") == "band/x.yaml" and source_name_for("", "x.yaml") == "x.yaml"
    assert source_folder("band/x.yaml") == "band" and source_folder("x.yaml") == ""
    assert source_file_name("band/x.yaml") == "x.yaml"


def test_sections_stand_for_prompt_and_duration() -> None:
    job = one(
        "sections:\n  - {prompt: soft piano intro, duration: 4}\n  - {prompt: drums come in, duration: 6.5}\n"
    )
    assert job.duration == 10.5
    assert job.prompt == "soft piano intro / drums come in"
    assert job.sections is not None and [s.duration for s in job.sections] == [4.0, 6.5]


def test_sections_summary_prompt_fits_the_prompt_limit() -> None:
    long = "x" * 400
    job = one(f"sections:\n  - {{prompt: {long}, duration: 1}}\n  - {{prompt: {long}, duration: 1}}\n")
    assert len(job.prompt) <= 500 and job.prompt.endswith("...")


def test_sections_in_a_batch_replace_the_defaults_prompt_and_duration() -> None:
    jobs = load_job_bytes(
        b"defaults:\n  prompt: base prompt\n  duration: 3\njobs:\n"
        b"  - sections: [{prompt: intro part, duration: 2}, {prompt: outro part, duration: 2}]\n"
        b"  - seed: 3\n",
        "b.yaml",
    )
    assert (jobs[0].duration, jobs[0].sections is not None) == (4.0, True)
    assert (jobs[1].prompt, jobs[1].duration, jobs[1].sections) == ("base prompt", 3.0, None)


def test_defaults_sections_give_way_to_a_jobs_prompt() -> None:
    jobs = load_job_bytes(
        b"defaults:\n  sections: [{prompt: intro part, duration: 2}]\n"
        b"jobs:\n  - prompt: own prompt\n  - seed: 1\n",
        "b.yaml",
    )
    assert (jobs[0].prompt, jobs[0].duration, jobs[0].sections) == ("own prompt", 16.0, None)
    assert jobs[1].sections is not None and jobs[1].duration == 2.0


def test_references_are_kept_as_written() -> None:
    job = one("prompt: keep going\ncontinue_from: library/riff one.wav\n")
    assert (job.continue_from, job.melody) == ("library/riff one.wav", None)
    job = one("prompt: follow it\nmelody: outbox/songs/earlier-v2.flac\n")
    assert job.melody == "outbox/songs/earlier-v2.flac"


def test_lossy_formats_record_their_effective_codec_and_quality() -> None:
    assert one("prompt: abc\noutput: {format: ogg}\n").output.model_dump(include={"codec", "quality"}) == {
        "codec": "vorbis",
        "quality": 0.6,
    }
    out = one("prompt: abc\noutput: {format: ogg, codec: opus, quality: 0.2}\n").output
    assert (out.codec, out.quality) == ("opus", 0.2)
    out = one("prompt: abc\noutput: {format: mp3}\n").output
    assert (out.codec, out.quality, out.subtype) == (None, 0.6, "PCM_16")
    assert one("prompt: abc\noutput: {format: flac}\n").output.quality is None


def test_defaults_output_keys_that_do_not_fit_a_jobs_format_stay_behind() -> None:
    jobs = load_job_bytes(
        b"defaults:\n  output: {format: ogg, codec: opus, quality: 0.3}\njobs:\n"
        b"  - output: {format: flac}\n    prompt: one song\n"
        b"  - prompt: two songs\n    output: {format: mp3}\n"
        b"  - prompt: three songs\n",
        "b.yaml",
    )
    assert [(j.output.format, j.output.codec, j.output.quality) for j in jobs] == [
        ("flac", None, None),
        ("mp3", None, 0.3),
        ("ogg", "opus", 0.3),
    ]


def test_a_batch_job_knows_which_keys_were_written() -> None:
    """The daemon refuses a key the model's family cannot honour by the keys a job sets: a batch
    job must not look as if it set every key (it would be refused on any model)."""
    jobs = load_job_bytes(
        b"defaults: {duration: 1, sampling: {top_k: 5}}\n"
        b"jobs:\n- {prompt: a calm tune}\n- {prompt: a bright tune, seed: 3}\n",
        "b.yaml",
    )
    assert jobs[0].model_fields_set == {"id", "prompt", "duration", "sampling"}
    assert jobs[1].model_fields_set == {"id", "prompt", "duration", "sampling", "seed"}
    assert jobs[0].sampling.top_k == 5 and jobs[0].count == 1
