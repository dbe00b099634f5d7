"""Writing the files a user gets (images, JSON reports, ControlNets, training checkpoints) so that none is ever
half-written, written through a symbolic link or written outside the folder it belongs to.

Every file goes to a temporary name in its own folder, is flushed to the disk (fsync) and then renamed over its
final name (`os.replace`, atomic on one file system): a reader, a crash or a Ctrl-C sees the old file or the new
one, never a truncated one. A rename replaces a symbolic link instead of following it, so nothing is ever written
through one; a link found at an output's name (or at a folder between the output folder and the file) is refused
with an `OutputError` naming it, rather than silently replaced. `write_set` writes the outputs of one image as a
set: all are staged first, then renamed in the given order (the last one being the file a reader looks for) with
Ctrl-C held back until the renames are done.

Limit: the checks look at the folders and then write; a process that swaps a folder for a link in between (one
with write access to the output folder, racing this one) is not guarded against; the final rename still never
follows a link.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Sequence, Tuple, Union

NAME_MAX = 255        # bytes per file name on the common file systems (ext4, APFS, NTFS in UTF-16 units)
TEMP_PREFIX = ".handrefiner-"
TEMP_SUFFIX = ".tmp"

Content = Union[bytes, str, Callable[[BinaryIO], None]]   # bytes, UTF-8 text, or a function writing to the file


class OutputError(OSError):
    """An output that cannot or must not be written; the message names the file, the problem and the fix."""


def output_name_problem(name: str) -> str | None:
    """Why `name` (one file name, no folders) cannot be an output's name, else None."""
    size = len(os.fsencode(name))
    if size > NAME_MAX:
        return (f"the output name {name[:40]}… is {size} bytes long, more than the {NAME_MAX} a file system allows; "
                "rename the input to a shorter name")
    return None


class OutputFolder:
    """A folder that outputs are written into (created with its parents). The folder itself may be a link (the
    user's choice); inside it, names are relative, never leave it and never pass through a link."""

    def __init__(self, root: Union[str, Path], create: bool = True) -> None:
        self.root = Path(root)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create the output folder {self.root}: {e.strerror or e}") from None

    def path(self, relative: Union[str, Path], create_folders: bool = False, folder: bool = False) -> Path:
        """The checked path of `relative` inside the folder: no absolute path, no `..`, no component longer than a
        file system allows, no link on the way, a file (or, with `folder`, a folder) or nothing at its end. The
        folders on the way are created when `create_folders`."""
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
            raise OutputError(f"{relative}: an output name must stay inside {self.root} (no absolute path, no ..)")
        for part in parts:
            problem = output_name_problem(part)
            if problem:
                raise OutputError(f"{self.root / relative}: {problem}")
        current = self.root
        for i, part in enumerate(parts):
            current = current / part
            last = i == len(parts) - 1
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                if not last and create_folders:
                    _mkdir(current)
                continue
            except NotADirectoryError:
                raise OutputError(f"{current.parent} is a file where a folder is needed; remove it or choose another "
                                  "output folder") from None
            if stat.S_ISLNK(info.st_mode):
                raise OutputError(f"{current} is a symbolic link (to {os.readlink(current)}); outputs are never "
                                  f"written through links: remove it or choose another output folder")
            if last and not folder and stat.S_ISDIR(info.st_mode):
                raise OutputError(f"{current} is a folder; remove it or choose another output folder")
            if (folder or not last) and not stat.S_ISDIR(info.st_mode):
                raise OutputError(f"{current} is a file where a folder is needed; remove it or choose another "
                                  "output folder")
        return current

    def problem(self, names: Sequence[Union[str, Path]]) -> str | None:
        """Why one of `names` cannot be written (see `path`), else None: checked before costly work."""
        try:
            for name in names:
                self.path(name)
        except OutputError as e:
            return str(e)
        return None

    def write(self, relative: Union[str, Path], content: Content) -> Path:
        """Writes one file atomically; returns its path."""
        return self.write_set([(relative, content)])[0]

    def write_set(self, items: Sequence[Tuple[Union[str, Path], Content]], durable: bool = True) -> List[Path]:
        """Writes several files as a set: every one staged and flushed, then all renamed in the given order, so a
        file that is there means the ones before it are too (put a report before its image). A failure before
        the renames leaves none of them changed. `durable=False` skips the fsyncs (still never a half-written
        file, but a power cut may lose the new content): for bulk files that a later durable file commits."""
        targets = [self.path(relative, create_folders=True) for relative, _ in items]
        staged: List[Path] = []
        try:
            for target, (_, content) in zip(targets, items):
                staged.append(_stage(target, content, durable))
            with _interrupts_held():
                for temp, target in zip(staged, targets):
                    os.replace(temp, target)
        except BaseException:
            for temp in staged:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            raise
        if durable:
            for folder in dict.fromkeys(t.parent for t in targets):
                sync_folder(folder)
        return targets

    def mkdir(self, relative: Union[str, Path]) -> Path:
        """A (checked) folder inside this one, created with its parents."""
        path = self.path(relative, create_folders=True, folder=True)
        if not path.exists():
            _mkdir(path)
        return path


def png(image, **options) -> Callable[[BinaryIO], None]:
    """Content that encodes `image` (a uint8 array or a PIL image) as PNG; `options` go to PIL's save (pnginfo,
    compress_level)."""
    def write(f: BinaryIO) -> None:
        from PIL import Image

        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(f, format="PNG", **options)

    return write


def write_file(path: Union[str, Path], content: Content) -> Path:
    """Writes one file atomically in its own folder (see `OutputFolder`)."""
    path = Path(path)
    return OutputFolder(path.parent).write(path.name, content)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder {path}: {e.strerror or e}") from None


def _stage(target: Path, content: Content, durable: bool = True) -> Path:
    """The content in a new temporary file beside `target`, flushed to the disk."""
    temp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}")
    # O_EXCL: a name already taken (a planted link included) is never opened; 0o666 & umask, as a plain open.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            if durable:
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def sync_folder(folder: Path) -> None:
    """Flushes a folder's entries (a rename) to the disk where the system allows it (not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Union[str, Path]) -> List[Path]:
    """Deletes the temporary files a killed writer left in `folder` (call it only while no other process writes
    there); returns them."""
    removed = []
    for entry in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits until the block is done, then takes effect as it would have (main thread only:
    Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list = []
    try:
        previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(frame))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
