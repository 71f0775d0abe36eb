"""Where sources may live. A source path is resolved (every symlink followed) and must land inside
one of SWAPLINE_SOURCE_ROOTS before anything under it is read; every file a worker reads later is
checked again against its source's resolved folder, so a symlink inside a tree cannot lead out."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings

ROOTS_VARIABLE = "SWAPLINE_SOURCE_ROOTS"
IGNORE_FILE = ".gitignore"


class SourcePathRefused(Exception):
    """A source path the service will not read: `status` 403 (sources off, outside the roots) or 422
    (missing, not a folder)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def resolve_source_path(settings: Settings, raw: str) -> Path:
    """The resolved folder for a requested source path, or SourcePathRefused. A relative path is taken
    relative to the first root. Containment is checked on the resolved path before its existence, so
    a path outside the roots reveals nothing about what exists there."""
    roots = settings.source_root_paths
    if not roots:
        raise SourcePathRefused(403, "sources_disabled",
                                f"sources are off: set {ROOTS_VARIABLE} to the folders sources may live in")
    if not raw or "\x00" in raw:
        raise SourcePathRefused(422, "invalid", "path must be a non-empty folder path")
    requested = Path(raw)
    resolved = (requested if requested.is_absolute() else roots[0] / requested).resolve()
    if not any(inside(resolved, root) for root in roots):
        raise SourcePathRefused(403, "path_outside_roots",
                                f"path {raw!r} is outside the folders {ROOTS_VARIABLE} allows")
    if not resolved.exists():
        raise SourcePathRefused(422, "path_not_found", f"path {raw!r} does not exist")
    if not resolved.is_dir():
        raise SourcePathRefused(422, "path_not_a_folder", f"path {raw!r} is not a folder")
    return resolved


def check_source_root(settings: Settings, folder: str) -> Path:
    """A stored source folder, checked again when a job starts (the roots may have changed since)."""
    path = Path(folder)
    resolved = path.resolve()
    if resolved != path or not any(inside(resolved, root) for root in settings.source_root_paths):
        raise SourcePathRefused(403, "path_outside_roots",
                                f"source folder {folder} is no longer inside {ROOTS_VARIABLE}")
    return resolved


def file_in_source(folder: Path, relative: str) -> Path | None:
    """The file at `relative` under a source folder, resolved; None when it resolves outside it (a
    symlink leading out, `..`) and so must not be read."""
    candidate = (folder / relative).resolve()
    return candidate if inside(candidate, folder) and candidate != folder else None


def rel_parts(rel: str) -> list[str] | None:
    """The segments of a path relative to a source folder, or None when it is not one: empty, absolute,
    or holding an empty, `.` or `..` segment. Every path read (walked, named by git or a watcher) passes
    this one check."""
    parts = rel.split("/")
    return None if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) else parts


def is_ignore_file(rel: str) -> bool:
    """Whether `rel` (a path relative to a source folder) is a .gitignore file."""
    return rel.rsplit("/", 1)[-1] == IGNORE_FILE
