"""What a song with vocals asks for: its lyrics, their language, and the diffusion model's steps
and guidance. ACE-Step keys: a MusicGen model refuses them (the daemon names the models that
take them).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "GUIDANCE_MAX",
    "LANGUAGE_PATTERN",
    "LYRICS_MAX_CHARS",
    "STEPS_MAX",
    "Guidance",
    "Language",
    "Lyrics",
    "Steps",
    "section_tags",
]

# ACE-Step's lyric encoder reads at most 2048 tokens; 4096 characters stay well inside it for
# Latin scripts (the model refuses a longer tokenised text at planning, naming its count).
LYRICS_MAX_CHARS = 4096
STEPS_MAX = 200
GUIDANCE_MAX = 30.0
# ISO 639 codes as ACE-Step names its vocal languages: "en", "zh", "ja", "pt-br", ...
LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[a-z]{2,4})?$"

# A section tag takes a whole line: "[verse]", "[chorus 2]", "[pre-chorus]", "[Bridge]".
_TAG_RE = re.compile(r"\[[A-Za-z][A-Za-z0-9 _'-]{0,40}\]")


def section_tags(lyrics: str) -> list[str]:
    """The section tags of `lyrics`, in order, lower-cased: ["verse", "chorus", ...]."""
    tags = []
    for line in lyrics.splitlines():
        text = line.strip()
        if _TAG_RE.fullmatch(text):
            tags.append(text[1:-1].strip().lower())
    return tags


def _check_lyrics(value: str) -> str:
    for number, line in enumerate(value.splitlines(), start=1):
        text = line.strip()
        if text.startswith("[") and not _TAG_RE.fullmatch(text):
            raise PydanticCustomError(
                "lyrics_tag",
                "line {number} of the lyrics, '{text}', is not a section tag: a tag is a whole line "
                "like [verse], [chorus] or [bridge]",
                {"number": number, "text": text[:40]},
            )
    return value


Lyrics = Annotated[
    str,
    Field(strict=True, min_length=1, max_length=LYRICS_MAX_CHARS),
    AfterValidator(_check_lyrics),
]
Language = Annotated[str, Field(strict=True, pattern=LANGUAGE_PATTERN)]
Steps = Annotated[int, Field(strict=True, ge=1, le=STEPS_MAX)]
Guidance = Annotated[float, Field(strict=True, ge=1.0, le=GUIDANCE_MAX, allow_inf_nan=False)]


# The song keys of a job, described beside their rules (the README's job table and the JSON Schema
# read these descriptions).
LYRICS_FIELD = Field(
    default=None,
    description=f"ACE-Step models: the words to sing, up to {LYRICS_MAX_CHARS} characters, lines of "
    "text with section tags on lines of their own ([verse], [chorus], [bridge], ...); "
    "left out: an instrumental.",
)
LANGUAGE_FIELD = Field(
    default=None,
    description='ACE-Step models: the language of the lyrics, an ISO 639 code ("en", "de", "ja", '
    '"zh", "pt-br", ...); default "en".',
)
STEPS_FIELD = Field(
    default=None,
    description=f"ACE-Step models: denoising steps, 1..{STEPS_MAX}; default the checkpoint's "
    "(8 for turbo checkpoints, 50 for base ones).",
)
GUIDANCE_FIELD = Field(
    default=None,
    description=f"ACE-Step base models: classifier-free guidance scale, 1..{GUIDANCE_MAX:g} "
    "(default 7); a turbo checkpoint has its guidance built in and refuses the key.",
)
