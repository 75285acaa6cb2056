"""Sections of free-text radiology reports (MIMIC-CXR style), for training sources and evaluation alike."""

from __future__ import annotations

import re


def report_section(text: str, section: str) -> str | None:
    """The body of ``FINDINGS:`` / ``IMPRESSION:`` in a free-text report, up to the next heading."""
    m = re.search(rf"\b{section}\s*:(.*?)(?=\n\s*[A-Z][A-Z /]+:|\Z)", text, re.DOTALL | re.IGNORECASE)
    return " ".join(m.group(1).split()) if m and m.group(1).strip() else None
