"""The last stage of a job: loudness, audio files and the result sidecar in outbox/.

Order is the contract (docs/design.md, "Spool protocol"): every audio file first, each atomically, then
`<id>.json`; a reader that sees the sidecar sees finished audio. When any write fails
(full disk, read-only outbox) the files this attempt wrote are removed again, so outbox/
never shows a partial result, and the error propagates for the caller to retry the job.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from daemon import __version__
from daemon.audio.encode import LOSSY, AudioFileInfo, FileClip, write_audio
from daemon.audio.loudness import SILENCE_LUFS
from daemon.audio.musictags import MusicTags, SongText
from daemon.audio.stream import EnvelopeBuilder, Plan, measure_clip, normalize_clip, render
from daemon.audio.waveform import Envelope
from daemon.core.config import Settings
from daemon.core.fsio import atomic_write_bytes
from daemon.core.logctx import MESSAGE_ID_JOB_COMPLETED, message_id
from daemon.core.messages import Generated
from daemon.core.pcm import Clip, Pcm
from daemon.outbox.hostinfo import host_info
from daemon.outbox.measure import measure
from daemon.outbox.shaping import shape
from jobspec import Job, Output
from jobspec.music import text_hint
from jobspec.names import sidecar_name, source_folder
from jobspec.sidecar import (
    AdapterInfo,
    ModelInfo,
    OutputInfo,
    Reproducibility,
    ResultSidecar,
    Waveform,
)

log = logging.getLogger(__name__)

LOSSY_PEAK_PASSES = 4  # encodes of one file at most: the first, then lower limiter ceilings

# Test seam, and nothing else: the fault-injection harness (daemon.service.faults, refused under
# systemd) sets it to kill the daemon inside this step, after every audio file of a job is in
# outbox/ and before its sidecar is. Called with the job and the sidecar's path; None in real runs.
before_sidecar_fault: Callable[[Job, Path], None] | None = None


# A JSON array of numbers that indent=2 spread one per line. Strings never hold a raw newline,
# so "[" followed by a newline is always structure, never part of a user's prompt.
_NUMBER_ARRAY = re.compile(r"\[\n\s+(-?[0-9][-0-9.e+]*(?:,\n\s+-?[0-9][-0-9.e+]*)*)\n\s*\]")


def sidecar_json(body: object) -> str:
    """Indented JSON with number arrays (the waveform envelopes) on one line each."""
    text = json.dumps(body, indent=2)

    def one_line(m: re.Match[str]) -> str:
        return "[" + ",".join(v.strip() for v in m.group(1).split(",")) + "]"

    return _NUMBER_ARRAY.sub(one_line, text) + "\n"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def file_tags(job_id: str, job: Job, seed: int, model: ModelInfo, when: float) -> dict[str, str]:
    """The metadata every audio file carries, so a copy that leaves the outbox keeps its provenance."""
    return {
        "title": job.prompt,
        # No container soundfile writes has a BPM or key field: the asked ones ride in the comment.
        "comment": f"dgx-music job {job_id}, seed {seed}, model {model.name} ({model.source})"
        + (f"; {asked}" if (asked := text_hint(job.bpm, job.key, job.time_signature)) else ""),
        "software": f"dgx-music {__version__}",
        "date": utc(when).date().isoformat(),
    }


def song_text(job: Job) -> SongText | None:
    """The lyrics a song's files carry, in the job's words."""
    lyrics = (job.lyrics or "").strip()
    return SongText(lyrics, job.language) if lyrics else None


def _measured(path: Path) -> tuple[float | None, float | None]:
    """Integrated LUFS (None below the gate: silence) and true peak of a written file, decoded
    block by block."""
    with FileClip(path) as clip:
        lufs, peak = measure_clip(clip, clip.sample_rate)
    return (round(lufs, 3) if np.isfinite(lufs) and lufs >= SILENCE_LUFS else None), (
        round(peak, 3) if np.isfinite(peak) else None
    )


@dataclass(frozen=True)
class Published:
    sidecar_path: Path
    sidecar: ResultSidecar


@dataclass(frozen=True)
class Variation:
    """One written output: what loudness normalisation chose, the file, its loudness and true peak
    measured on the bytes as written and decoded again, and the waveform of what was encoded."""

    plan: Plan
    info: AudioFileInfo
    lufs: float | None
    peak: float | None
    waveform: Envelope


def _render_to_disk(audio: Clip, sample_rate: int, plan: Plan) -> tuple[Pcm, Envelope]:
    """The normalised audio in a temporary clip, and its waveform envelope built on the way."""
    post = Pcm(audio.channels, getattr(audio, "directory", None))
    shape = EnvelopeBuilder(audio.samples)
    for block, _ in render(audio, sample_rate, plan.gain_db, plan.ceiling_dbtp):
        post.append(block)
        shape.feed(block)
    return post, shape.envelope()


def write_variation(
    path: Path,
    audio: Clip | np.ndarray,
    sample_rate: int,
    output: Output,
    target_lufs: float | None,
    ceiling: float | None,
    *,
    tags: dict[str, str],
    music: MusicTags | None = None,
    song: SongText | None = None,
) -> Variation:
    """Normalise one variation ([channels, samples], on disk or in memory) and write it as `output`
    asks (create_new), block by block: memory does not grow with the clip. Loudness and true peak
    are measured on the bytes as written and decoded again (a lossy codec or PCM rounding moves
    both; the sidecar reports what a listener gets)."""
    clip = Pcm.from_array(audio) if isinstance(audio, np.ndarray) else audio
    limit_at = ceiling
    for attempt in range(LOSSY_PEAK_PASSES):
        plan = normalize_clip(clip, sample_rate, target_lufs, limit_at)
        post, waveform = _render_to_disk(clip, sample_rate, plan)
        info = write_audio(
            path,
            post,
            sample_rate,
            output.format,
            output.subtype,
            create_new=True,
            codec=output.codec,
            quality=output.quality,
            tags=tags,
            music=music,
            song=song,
        )
        post.close()
        lufs, peak = _measured(info.path)
        # An mp3 or Vorbis encoder's output peaks up to ~1 dB over its input: the ceiling is
        # promised for the file, so the limiter runs again, lower by the overshoot.
        last = attempt == LOSSY_PEAK_PASSES - 1
        if last or output.format not in LOSSY or ceiling is None or limit_at is None or peak is None:
            break
        if peak <= ceiling:
            break
        limit_at -= peak - ceiling + 0.05
        info.path.unlink()
    return Variation(plan, info, lufs, peak, waveform)


def publish(outbox: Path, done: Generated, *, normalize_audio: bool = True) -> Published:
    """Write the job's audio ([count, channels, samples]) and its sidecar; returns the sidecar.

    `timings.postprocess_s` and `total_s` are filled in here; the others come from the caller.
    `batch_audio_s`: the audio seconds the RTF divides by, when the job shared its decode batch.
    """
    res, job, job_id, timings = done.result, done.job, done.job_id, done.timings
    audio, sample_rate, seed = res.rows, res.sample_rate, res.seed
    model = ModelInfo(**res.model.sidecar_fields())
    t0 = time.monotonic()
    # A job from inbox/<folder>/ (source "band/x.yaml") publishes into outbox/<folder>/.
    folder = source_folder(done.source_file)
    if folder:
        outbox = outbox / folder
        outbox.mkdir(exist_ok=True)
    written: list[Path] = []
    outputs: list[OutputInfo] = []
    analysis_s = 0.0
    try:
        # Loops cut and best-of-N takes chosen first: what follows writes whatever they leave.
        takes, candidates = shape(job_id, job, audio, sample_rate, seed)
        target_lufs = job.output.loudness_lufs if normalize_audio else None
        ceiling = job.output.true_peak_dbtp if normalize_audio else None
        song = song_text(job)
        for take in takes:
            name, variation_seed = take.name, take.seed
            written_take = write_variation(
                outbox / name,
                take.audio,
                sample_rate,
                job.output,
                target_lufs,
                ceiling,
                tags=file_tags(job_id, job, variation_seed, model, time.time()),
                music=take.music,
                song=song,
            )
            info, env = written_take.info, written_take.waveform
            written.append(info.path)
            t_analysis = time.monotonic()
            with FileClip(info.path) as decoded:
                analysis = measure(decoded, info.sample_rate, job)
            analysis_s += time.monotonic() - t_analysis
            outputs.append(
                OutputInfo(
                    path=f"{folder}/{name}" if folder else name,
                    format=info.format,  # type: ignore[arg-type]
                    subtype=info.subtype,  # type: ignore[arg-type]
                    quality=info.quality,
                    tags=info.tags,
                    sample_rate=info.sample_rate,
                    channels=info.channels,
                    frames=info.frames,
                    duration_s=info.duration_s,
                    bytes=info.bytes,
                    sha256=info.sha256,
                    integrated_lufs=written_take.lufs,
                    true_peak_dbtp=written_take.peak,
                    gain_db=round(written_take.plan.gain_db, 3),
                    variation=take.variation,
                    seed=variation_seed,
                    loop=take.loop,
                    track=take.track,
                    waveform=Waveform(bins=env.bins, min=env.min, max=env.max),
                    analysis=analysis,
                )
            )
        finished = time.time()
        post_s = time.monotonic() - t0
        # All variations (and batch-mates, when decoded together), as the engine's RTF.
        audio_s = done.batch_audio_s or sum(o.duration_s for o in outputs)
        sidecar = ResultSidecar(
            job_id=job_id,
            source_file=done.source_file,
            submitted=utc(done.submitted),
            started=utc(done.started),
            finished=utc(finished),
            timings=timings.model_copy(
                update={
                    "postprocess_s": round(post_s, 4),
                    "analysis_s": round(analysis_s, 4),
                    "total_s": round(max(0.0, finished - done.submitted), 4),
                }
            ),
            rtf=round(timings.generate_s / audio_s, 5) if audio_s > 0 else 0.0,
            request=job.model_copy(update={"seed": seed, "id": job_id}),
            model=model,
            outputs=outputs,
            peak_memory_bytes=res.peak_memory_bytes,
            host=host_info(model.device),
            references=list(done.references),
            adapter=AdapterInfo(**res.adapter) if res.adapter else None,
            decoder=res.decoder,
            reproducibility=Reproducibility(**res.reproducibility) if res.reproducibility else None,
            candidates=[
                c.model_copy(update={"path": f"{folder}/{c.path}" if folder and c.path else c.path})
                for c in candidates
            ],
        )
        path = outbox / sidecar_name(job_id)
        body = sidecar_json(sidecar.model_dump(mode="json"))
        if before_sidecar_fault is not None:
            before_sidecar_fault(job, path)
        atomic_write_bytes(path, body.encode("utf-8"), create_new=True)
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # the caller's retry will collide with it: say so
                log.error("could not remove partial output %s: %s", p, exc)
        raise
    return Published(path, sidecar)


def publish_job(settings: Settings, done: Generated) -> Path:
    """Write a generated job's audio and sidecar to the outbox; returns the sidecar path.

    This is the publish step the service hands to the worker."""
    out = publish(settings.outbox, done, normalize_audio=settings.normalize_audio)
    sc = out.sidecar
    loud = (
        ", ".join(f"{o.integrated_lufs} LUFS" for o in sc.outputs if o.integrated_lufs is not None) or "n/a"
    )
    log.info(
        "job %s completed: %.1f s audio x%d in %.2f s (RTF %.3f), %s, -> %s",
        done.job_id,
        sc.outputs[0].duration_s,
        len(sc.outputs),
        sc.timings.generate_s,
        sc.rtf,
        loud,
        out.sidecar_path,
        extra=message_id(MESSAGE_ID_JOB_COMPLETED),
    )
    return out.sidecar_path
