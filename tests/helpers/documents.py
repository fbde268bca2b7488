"""Real documents for reader tests (../shared/realdocs, files nobody here wrote), and large or
hostile variants made from them."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
REALDOCS = REPOSITORY.parent / "shared" / "realdocs"

NEEDS_PASSWORD = "is an encrypted PDF that needs a password; Grace does not hold PDF passwords: save a copy without one"
NO_TEXT_LAYER = "no text layer: a scan? OCR is not built in"
NO_WORD_TEXT = "is a Word file with no text (blank, or only images)"
# Every real file that cannot be read, and its reason; every other one must read.
QUARANTINED = {
    "pdf/crazyones-encrypted-256.pdf": NEEDS_PASSWORD,
    "pdf/encrypted-file.pdf": NEEDS_PASSWORD,
    "pdf/encryption_r3-user-password.pdf": NEEDS_PASSWORD,
    "pdf/encryption_r4-aes-user-password.pdf": NEEDS_PASSWORD,
    "pdf/encryption_r5-user-password.pdf": NEEDS_PASSWORD,
    "pdf/encryption_r6-both-passwords.pdf": NEEDS_PASSWORD,
    "pdf/encryption_r6-user-password.pdf": NEEDS_PASSWORD,
    "pdf/git.pdf": NO_TEXT_LAYER,
    "pdf/imagemagick-ASCII85Decode.pdf": NO_TEXT_LAYER,
    "pdf/imagemagick-CCITTFaxDecode.pdf": NO_TEXT_LAYER,
    "pdf/imagemagick-images.pdf": NO_TEXT_LAYER,  # six pages of images, no text on any
    # Blank bodies (one empty paragraph; having-images holds only pictures), nothing in headers either.
    "docx/doc-no-coreprops.docx": NO_WORD_TEXT,
    "docx/doc-word-default-blank.docx": NO_WORD_TEXT,
    "docx/having-images.docx": NO_WORD_TEXT,
    "docx/set-no-settings-part.docx": NO_WORD_TEXT,
}


def every_realdoc() -> list[str]:
    """Every real document, as a path relative to REALDOCS (its README aside)."""
    return sorted(
        str(path.relative_to(REALDOCS)) for path in REALDOCS.rglob("*") if path.is_file() and path.suffix != ".md"
    )


def realdoc(relative: str) -> Path:
    path = REALDOCS / relative
    assert path.is_file(), f"{path} is missing: the tests read real documents from ../shared/realdocs"
    return path


def process_alive(pid: int) -> bool:
    """Whether a process of that id exists (a reaped child is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
