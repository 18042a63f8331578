"""ACE-Step 1.5, the engine's second model family: songs with lyrics through diffusers' AceStepPipeline.

`checkpoint` finds, checks and loads a pipeline (hub id + revision, local directory, the hub cache
offline); `song` renders rows of a call with per-row seeds, a step callback and cached
cross-attention; `crossattn` is that cache.
"""

FAMILY = "ace-step"
