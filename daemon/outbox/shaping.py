"""From a job's generated rows to the files it writes: loops cut (`loop:`), best-of-N takes scored
and the best chosen (`candidates:`). Runs in the publisher's thread, before loudness and encoding.

The score of a take (lower is better), each term only where the job asks for it: the tempo error
in BPM (|measured - asked|; no tempo found counts 30), 4 x the key steps (same 0, relative or
parallel 1, fifth 2, other 3; no key found counts 12), and 5 x the loop's seam score (its worse
ratio to a limit; <= 1 is seamless). A job that asks for none of them keeps the take whose tempo
and key are clearest (minus the sum of their confidences). Ties go to the lower take number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.audio.analysis import analyze
from daemon.audio.loop import Looped, make_loop
from daemon.audio.musictags import MusicTags
from daemon.core.messages import SEED_MOD
from daemon.core.pcm import Pcm
from jobspec import Job
from jobspec.analysis import KEY_STEPS, CandidateInfo, LoopInfo, key_relation
from jobspec.music import bar_beats
from jobspec.names import audio_names

NO_TEMPO, NO_KEY, KEY_WEIGHT, SEAM_WEIGHT = 30.0, 12.0, 4.0, 5.0


@dataclass(frozen=True)
class Take:
    """One file to write: its name, audio [channels, samples] (on disk), variation number and seed."""

    name: str
    audio: Pcm
    variation: int
    seed: int
    loop: LoopInfo | None
    track: str | None = None  # an extract job's stem
    music: MusicTags | None = None  # tempo and key for the file's own fields (loops: exact tempo)


def loop_info(job: Job, looped: Looped) -> LoopInfo:
    seam = looped.seam
    assert job.loop is not None and job.bpm is not None
    return LoopInfo(
        bars=job.loop.bars,
        bpm=job.bpm,
        samples=int(looped.audio.shape[-1]),
        start_s=round(looped.start_s, 4),
        source_s=round(looped.source_s, 4),
        stretch=round(looped.stretch, 5),
        stretcher="rubberband" if looped.stretcher == "rubberband" else "librosa",
        source_bpm=None if looped.measured_bpm is None else round(looped.measured_bpm, 2),
        seam_jump=round(seam.jump, 6),
        seam_jump_limit=round(seam.jump_limit, 6),
        seam_change=round(seam.change, 4),
        seam_change_limit=round(seam.change_limit, 4),
        seamless=seam.seamless,
    )


def loop_tags(job: Job, looped: Looped) -> MusicTags:
    """A loop's file fields: its exact tempo and beats, its metre, and its measured key."""
    assert job.loop is not None and job.bpm is not None
    beats = round(job.loop.bars * bar_beats(job.time_signature))
    return MusicTags(bpm=job.bpm, key=looped.key, beats=beats, time_signature=job.time_signature, loop=True)


def score_take(job: Job, raw: np.ndarray, sample_rate: int, looped: Looped | None, number: int, seed: int):  # noqa: ANN201
    """A take's CandidateInfo (not yet chosen), measured on its generated audio."""
    m = analyze(raw, sample_rate, job.time_signature)
    error = None if m.tempo_bpm is None or job.bpm is None else m.tempo_bpm - job.bpm
    relation = None if m.key is None or job.key is None else key_relation(m.key, job.key)
    seam = None if looped is None else looped.seam.score
    if job.bpm is None and job.key is None and looped is None:
        score = -(m.tempo_confidence + m.key_confidence)
    else:
        score = 0.0
        if job.bpm is not None:
            score += NO_TEMPO if error is None else abs(error)
        if job.key is not None:
            score += NO_KEY if relation is None else KEY_WEIGHT * KEY_STEPS[relation]
        if seam is not None:
            score += SEAM_WEIGHT * seam
    return CandidateInfo(
        candidate=number,
        seed=seed,
        chosen=False,
        tempo_bpm=None if m.tempo_bpm is None else round(m.tempo_bpm, 2),
        tempo_error_bpm=None if error is None else round(error, 2),
        key=m.key,
        key_relation=relation,
        seam_score=None if seam is None else round(seam, 4),
        score=round(score, 4),
    )


def shape(
    job_id: str, job: Job, audio: Sequence[Pcm], sample_rate: int, seed: int
) -> tuple[list[Take], list[CandidateInfo]]:
    """The files a job writes from its rows (one clip [channels, samples] each) and, for best-of-N,
    every take's record (the chosen one first written as `<id>.<ext>`, kept ones as `<id>-c<n>.<ext>`).

    Only loops and best-of-N read a whole take into memory (a loop is cut from all of it, a take is
    scored on all of it), one take at a time; other takes pass through on disk."""
    looped: list[Looped | None] = []
    for row in audio:
        if job.loop is None or job.bpm is None:
            looped.append(None)
        else:
            looped.append(
                make_loop(
                    row.array(),
                    sample_rate,
                    bpm=job.bpm,
                    bars=job.loop.bars,
                    time_signature=job.time_signature,
                )
            )
    rows = [row if lp is None else Pcm.from_array(lp.audio, row.directory) for row, lp in zip(audio, looped)]
    loops = [None if lp is None else loop_info(job, lp) for lp in looped]
    tags = [None if lp is None else loop_tags(job, lp) for lp in looped]
    seeds = [(seed + i) % SEED_MOD for i in range(len(rows))]
    ext = job.output.format
    if job.candidates == 1:
        tracks = tuple(job.extract.tracks) if job.extract is not None else ()
        names = audio_names(job_id, ext=ext, count=job.count, tracks=tracks)
        return [
            Take(n, r, i + 1, s, lp, tracks[i] if tracks else None, music=t)
            for i, (n, r, s, lp, t) in enumerate(zip(names, rows, seeds, loops, tags))
        ], []
    records = [
        score_take(job, audio[i].array(), sample_rate, looped[i], i + 1, seeds[i]) for i in range(len(rows))
    ]
    best = min(range(len(records)), key=lambda i: (records[i].score, i))
    takes = [Take(f"{job_id}.{ext}", rows[best], 1, seeds[best], loops[best], music=tags[best])]
    if job.keep_candidates:
        takes += [
            Take(f"{job_id}-c{i + 1}.{ext}", rows[i], 1, seeds[i], loops[i], music=tags[i])
            for i in range(len(rows))
            if i != best
        ]
    for t in takes:
        i = seeds.index(t.seed)
        records[i] = records[i].model_copy(update={"chosen": i == best, "path": t.name})
    return takes, records
