"""What the engine is asked for one job: its reference audio, read under the spool's rules, and
the `GenerationRequest` built from the job's effective values. Plain functions, no state."""

from __future__ import annotations

from daemon.core.config import Settings
from daemon.core.messages import AudioPrompt, EditTask, GenerationRequest
from daemon.spool.library import ReferenceAudio, resolve_reference
from jobspec import Job


def read_references(settings: Settings, job: Job) -> list[ReferenceAudio]:
    """The job's reference audio (library/ or outbox/), checked; InvalidJobError otherwise."""
    prompts = (("continue_from", job.continue_from), ("melody", job.melody))
    edits = (
        ("repaint", job.repaint),
        ("cover", job.cover),
        ("extract", job.extract),
        ("lego", job.lego),
        ("complete", job.complete),
    )
    return [resolve_reference(settings, role, ref) for role, ref in prompts if ref is not None] + [
        resolve_reference(settings, kind, edit.source, loc=f"{kind}.source")
        for kind, edit in edits
        if edit is not None
    ]


def edit_task(job: Job, audio: dict[str, AudioPrompt]) -> EditTask | None:
    """The job's edit of a source (repaint, cover, extract) with the source as read; None: none."""
    if job.repaint is not None:
        return EditTask("repaint", audio["repaint"], start=job.repaint.start, end=job.repaint.end)
    if job.cover is not None:
        return EditTask("cover", audio["cover"], strength=job.cover.strength)
    if job.extract is not None:
        return EditTask("extract", audio["extract"], tracks=tuple(job.extract.tracks))
    if job.lego is not None:
        lego = job.lego
        return EditTask("lego", audio["lego"], start=lego.start, end=lego.end, tracks=(lego.track,))
    if job.complete is not None:
        return EditTask("complete", audio["complete"], tracks=tuple(job.complete.tracks))
    return None


def engine_request(job: Job, references: list[ReferenceAudio]) -> GenerationRequest:
    """The engine's request for `job`, its references as read (`read_references`)."""
    s = job.sampling
    audio = {r.role: AudioPrompt(r.samples, r.sample_rate) for r in references}
    edit = edit_task(job, audio)
    return GenerationRequest(
        prompt=job.prompt,
        # An edit is as long as its source (the engine resamples it; this is its length).
        duration=edit.source.duration_s if edit is not None else job.duration,
        count=len(edit.tracks) if edit is not None and edit.kind == "extract" else job.count * job.candidates,
        seed=job.seed,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        cfg_coef=s.cfg_coef,
        greedy=s.greedy,
        sections=tuple((x.prompt, x.duration) for x in job.sections or ()),
        continue_from=audio.get("continue_from"),
        melody=audio.get("melody"),
        bpm=job.bpm,
        key=job.key,
        time_signature=job.time_signature,
        lyrics=job.lyrics,
        language=job.language,
        steps=job.steps,
        guidance=job.guidance,
        edit=edit,
        adapter=job.adapter,
        adapter_scale=job.adapter_scale,
    )
