"""Finding the documents of a batch: a walk of the input folder that stays inside it.

Hidden files and folders (a name starting with '.') are left out, and so are non-regular
files (pipes, sockets, devices) and the results file itself. Symbolic links:

- a link to a file inside the folder is read (under the link's name);
- a link to a folder inside the folder is not descended: its files are read at their real
  place, so nothing is read twice and no link can make a loop;
- a link that points outside the folder (a file or a folder) is refused, never read, and
  listed with the reason, unless `follow_symlinks` is set; followed folders are still read
  once each (a link back up cannot loop);
- a broken link, or a folder that cannot be listed, is listed with the reason.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sovcli.errors import UsageError

OUTSIDE_FILE = "symbolic link to a file outside the folder: not read (--follow-symlinks reads it)"
OUTSIDE_FOLDER = (
    "symbolic link to a folder outside the folder: not read (--follow-symlinks reads it)"
)


@dataclass(frozen=True)
class Found:
    """A file to process, or an entry refused with its reason (`refused`, never read)."""

    path: Path
    rel: str  # POSIX path relative to the input folder (surrogateescape'd bytes kept exact)
    refused: str | None = None


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _inside(target: Path, root: Path) -> bool:
    return target == root or target.is_relative_to(root)


class _Walk:
    """One walk of the input folder (state: the folders already read, what was found)."""

    def __init__(
        self,
        root: Path,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        skip: set[Path],
        follow_symlinks: bool,
    ) -> None:
        self.root = root
        self.real_root = root.resolve()
        self.include, self.exclude = include, exclude
        self.skip = skip
        self.follow = follow_symlinks
        self.seen: set[tuple[int, int]] = set()
        self.found: list[Found] = []
        self.stack: list[tuple[Path, str]] = []

    def run(self) -> list[Found]:
        self._enter(self.root, "", os.stat(self.root))
        while self.stack:
            folder, prefix = self.stack.pop()
            try:
                with os.scandir(folder) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if not prefix:
                    raise UsageError(f"cannot read input folder {folder}: {reason}") from exc
                self._refuse(folder, prefix.rstrip("/"), f"cannot list folder: {reason}", True)
                continue
            for entry in listed:
                if not entry.name.startswith("."):
                    self._visit(Path(entry.path), prefix + entry.name, entry)
        self.found.sort(key=lambda f: f.rel)
        return self.found

    def _enter(self, folder: Path, prefix: str, info: os.stat_result) -> None:
        """Queue a folder to list, unless it was read already (a loop or a second link)."""
        ident = (info.st_dev, info.st_ino)
        if ident not in self.seen:
            self.seen.add(ident)
            self.stack.append((folder, prefix))

    def _visit(self, path: Path, rel: str, entry: os.DirEntry[str]) -> None:
        try:
            if entry.is_symlink():
                self._link(path, rel)
            elif entry.is_dir(follow_symlinks=False):
                self._enter(path, rel + "/", entry.stat(follow_symlinks=False))
            elif entry.is_file(follow_symlinks=False):
                self._file(path, rel, path)
        except OSError as exc:
            self._refuse(path, rel, f"cannot read: {exc.strerror or exc}")

    def _link(self, path: Path, rel: str) -> None:
        try:
            target = path.resolve(strict=True)
            info = os.stat(target)
        except (OSError, RuntimeError):
            self._refuse(path, rel, "broken symbolic link (or a loop of links)")
            return
        inside = _inside(target, self.real_root)
        if stat.S_ISDIR(info.st_mode):
            if not inside and not self.follow:
                self._refuse(path, rel, OUTSIDE_FOLDER, folder=True)
            elif not inside:
                self._enter(path, rel + "/", info)
            # a folder inside is read at its real place
        elif stat.S_ISREG(info.st_mode):
            if inside or self.follow:
                self._file(path, rel, target)
            else:
                self._refuse(path, rel, OUTSIDE_FILE)

    def _wanted(self, rel: str) -> bool:
        if self.include and not _matches(rel, self.include):
            return False
        return not (self.exclude and _matches(rel, self.exclude))

    def _file(self, path: Path, rel: str, real: Path) -> None:
        if self._wanted(rel) and real.resolve() not in self.skip:
            self.found.append(Found(path, rel))

    def _refuse(self, path: Path, rel: str, reason: str, folder: bool = False) -> None:
        """List an entry that is not read; a folder is listed unless --exclude names it."""
        wanted = not (self.exclude and _matches(rel, self.exclude)) if folder else self._wanted(rel)
        if wanted:
            self.found.append(Found(path, rel, reason))


def discover(
    input_dir: Path,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    skip: tuple[Path, ...] = (),
    follow_symlinks: bool = False,
) -> list[Found]:
    """Every document under `input_dir` (and every entry refused, with why), sorted by path.

    A glob matches the relative path or the file name. `skip` holds the results file.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise UsageError(f"input folder {root} does not exist or is not a folder")
    skipped = {Path(p).resolve() for p in skip}
    return _Walk(root, include, exclude, skipped, follow_symlinks).run()
