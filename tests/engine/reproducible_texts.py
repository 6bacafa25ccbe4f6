"""Real prose nobody here wrote, for the reproducibility tests: sections of the licences
Debian ships (/usr/share/common-licenses), else the standard library's documentation."""

from __future__ import annotations

from pathlib import Path

LICENCES = Path("/usr/share/common-licenses")


def real_texts(count: int, chars: int = 1000) -> list[tuple[str, str]]:
    """`count` (name, passage) pairs of at most `chars` characters each."""
    texts: list[tuple[str, str]] = []
    for path in sorted(LICENCES.glob("*")) if LICENCES.is_dir() else []:
        if path.is_file():
            body = path.read_text(encoding="utf-8", errors="replace")
            paragraphs = [p.strip() for p in body.split("\n\n") if len(p.strip()) > 300]
            texts += [(f"{path.name}-{i}", p[:chars]) for i, p in enumerate(paragraphs[2:4])]
    if len(texts) < count:
        import argparse
        import email
        import json
        import logging
        import textwrap
        import unittest

        modules = (argparse, email, json, logging, textwrap, unittest)
        texts += [(m.__name__, (m.__doc__ or "")[:chars]) for m in modules]
    return texts[:count]
