"""Cross-job batching through the real daemon: compatible queued jobs are decoded as
one batch, and each still gets its own sidecar, seed and audio, the audio being exactly what
the same job gives when it runs alone (a generator per row)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import soundfile as sf
from daemon_harness import DaemonProcess, SpoolView, job_yaml, wait_until, write_config

TIMEOUT_S = 90.0


def pcm_hash(path: Path) -> str:
    """SHA-256 of a file's samples (its tags left out)."""
    data, _ = sf.read(str(path), dtype="int16")
    return hashlib.sha256(data.tobytes()).hexdigest()


def test_batched_jobs_get_their_own_sidecars_and_the_audio_they_get_alone(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Every decode pauses 2 s at its third step: time to queue jobs behind the blocker.
    config = write_config(
        tmp_path / "config.yaml",
        tmp_path / "spool",
        tiny_model_dir,
        max_batch=8,
        fault_injection={"stall_after_steps": 3, "stall_s": 2},
    )
    sp = SpoolView(tmp_path / "spool")
    with DaemonProcess(config, tmp_path / "daemon.log") as daemon:
        daemon.start()
        sp.drop("blocker.yaml", job_yaml("a blocker of another length", duration=1.0, seed=1))
        sp.wait_running("blocker", TIMEOUT_S, alive=daemon)
        mates = {"mate-a": (11, 1), "mate-b": (12, 2), "mate-c": (20, 1)}  # id: (seed, count)
        prompts = {"mate-a": "calm piano", "mate-b": "fast drums", "mate-c": "sad violin"}
        for job_id, (seed, count) in mates.items():
            sp.drop(f"{job_id}.yaml", job_yaml(prompts[job_id], duration=0.5, seed=seed, count=count))
        wait_until(
            lambda: sorted(sp.queued_ids()) == sorted(mates),
            TIMEOUT_S,
            what="three jobs queued",
            alive=daemon,
        )

        bodies = {job_id: sp.wait_outcome(job_id, TIMEOUT_S, alive=daemon) for job_id in mates}
        assert "decoding 3 jobs as one batch: mate-a, mate-b, mate-c" in daemon.log()
        for job_id, (seed, count) in mates.items():
            body = bodies[job_id]
            assert body["status"] == "completed" and body["job_id"] == job_id
            assert body["source_file"] == f"{job_id}.yaml"
            assert body["request"]["seed"] == seed and body["request"]["prompt"] == prompts[job_id]
            assert [o["seed"] for o in body["outputs"]] == [seed + i for i in range(count)]
            assert all(o["duration_s"] == 0.5 for o in body["outputs"])
        # One decode for all three: they share the generate time, not the queue time.
        assert len({b["timings"]["generate_s"] for b in bodies.values()}) == 1
        # Files carry their job's tags (id, seed), so compare the samples, not the file bytes.
        hashes = [pcm_hash(sp.outbox / o["path"]) for b in bodies.values() for o in b["outputs"]]
        assert len(set(hashes)) == len(hashes)  # every row its own audio

        # The same job again, alone in the queue: bit-identical audio.
        sp.drop("mate-b-alone.yaml", job_yaml("fast drums", duration=0.5, seed=12, count=2))
        alone = sp.wait_outcome("mate-b-alone", TIMEOUT_S, alive=daemon)
        assert [pcm_hash(sp.outbox / o["path"]) for o in alone["outputs"]] == [
            pcm_hash(sp.outbox / o["path"]) for o in bodies["mate-b"]["outputs"]
        ]
        assert daemon.stop() == 0
