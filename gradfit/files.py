"""How gradfit touches the file system: it reads only regular files, with a size bound, and writes only regular
files, atomically, never over something that exists unless told to (``force``).

A path someone hands over may be a FIFO (reading it hangs), a link to ``/dev/zero`` (reading it never ends), a
device node (replacing it breaks the system) or an .npz whose header declares 10^12 elements in a few bytes
(allocating it fails). Every such case is refused here with one line naming the path and what it is, before
anything is read or written. ``-`` is standard output wherever a command writes a file. No jax.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gradfit.abort import removed_on_abort
from gradfit.errors import GradfitError

if TYPE_CHECKING:  # numpy is imported where arrays are read: reading a config must not pay for it
    import numpy as np

STDOUT = "-"
MAX_JSON_BYTES = 256 << 20  # summary.json, preprocessing.json (a million features' mean and std is ~40 MB)
MAX_TEXT_BYTES = 16 << 20  # a config file
MAX_LINE_CHARS = 16 << 20  # one line of a CSV: a million numeric columns; a longer one is not a table
MAX_DEFLATE_RATIO = 1100  # DEFLATE cannot expand more than 1032:1; a larger claim is a zip bomb or a lie
FULL_DISK = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for a stat mode that is not a regular file's."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _missing(path: Path, what: str) -> str:
    if path.is_symlink():
        return f"{path}: {what} not found (it is a link to {os.readlink(path)}, which does not exist)"
    return f"{path}: {what} not found{_close_name(path)}"


SIBLINGS_READ = 10_000  # names of a folder compared with a missing file's: a huge data folder is not listed whole


def _close_name(path: Path) -> str:
    """'; did you mean configs/mlp.yaml?' for a file beside ``path`` whose name is close to its name, else ''."""
    try:
        with os.scandir(path.parent) as entries:
            names = [entry.name for _, entry in zip(range(SIBLINGS_READ), entries) if entry.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f"; did you mean {path.parent / close[0]}?" if close else ""


# ---------------------------------------------------------------------------------------------------- reading


def open_regular(
    path: Path, what: str = "file", error: type[GradfitError] = GradfitError, max_bytes: int | None = None
) -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file (after links) of at most ``max_bytes``.

    Opened non-blocking and checked on the open descriptor, so a FIFO never hangs the open and a file swapped
    for something else between a check and the open is still refused.

    Raises:
        ``error``: the path is missing, unreadable, not a regular file, or too large.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(_missing(path, what)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {what} is {kind(info.st_mode)}, not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(
                f"{path}: {what} is {format_bytes(info.st_size)}, more than the {format_bytes(max_bytes)} "
                "gradfit reads for one; is it the right file?"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(
    path: Path, what: str = "file", error: type[GradfitError] = GradfitError, max_bytes: int = MAX_TEXT_BYTES
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (see ``open_regular``)."""
    with open_regular(path, what, error, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        raise error(f"{path}: {what} is larger than the {format_bytes(max_bytes)} gradfit reads for one")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def bounded_lines(
    handle: IO[str],
    path: Path,
    error: type[GradfitError] = GradfitError,
    first_line: int = 1,
    max_chars: int = MAX_LINE_CHARS,
) -> Iterator[str]:
    """The lines of a text file, refusing one longer than ``max_chars`` before it is read whole."""
    number = first_line
    while True:
        line = handle.readline(max_chars + 1)
        if not line:
            return
        if len(line) > max_chars:
            raise error(
                f"{path}:{number}: line longer than {max_chars:,} characters; is this a CSV file (one row per line)?"
            )
        yield line
        number += 1


# ---------------------------------------------------------------------------------------------------- .npz


class NpyMember:
    """One array of an open .npz archive, its header checked; ``read()`` reads it (``member`` is at its data)."""

    def __init__(self, archive: zipfile.ZipFile, name: str, path: Path, error: type[GradfitError]):
        import numpy as np

        self.name, self.path, self.error = name, path, error
        info = archive.getinfo(f"{name}.npy")
        self.member = archive.open(info)
        try:
            version = np.lib.format.read_magic(self.member)
            if version == (1, 0):
                self.shape, self.fortran_order, self.dtype = np.lib.format.read_array_header_1_0(self.member)
            elif version == (2, 0):
                self.shape, self.fortran_order, self.dtype = np.lib.format.read_array_header_2_0(self.member)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, EOFError, SyntaxError) as exc:
            self.member.close()
            raise error(f"{path}: array {name} is not a NumPy array ({exc})") from None
        if any(not isinstance(n, int) or n < 0 for n in self.shape) or self.dtype.itemsize == 0:
            self.member.close()
            raise error(
                f"{path}: array {name} has shape {self.shape} of {self.dtype}, which is not an array of "
                "numbers or text; the file is damaged"
            )
        if self.dtype.hasobject:
            self.member.close()
            raise error(
                f"{path}: array {name} holds Python objects; gradfit never unpickles objects. Save "
                "numbers or strings (np.asarray(values, dtype=str))"
            )
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        stored = info.file_size - self.member.tell()
        if self.nbytes != stored:
            self.member.close()
            raise error(
                f"{path}: array {name} declares shape {self.shape} of {self.dtype} ({format_bytes(self.nbytes)}) "
                f"but the archive holds {format_bytes(max(stored, 0))} for it; the file is damaged"
            )
        handle = archive.fp
        on_disk = (
            os.fstat(handle.fileno()).st_size
            if handle is not None and hasattr(handle, "fileno")
            else info.compress_size
        )
        stored_whole = info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
        if info.compress_size > on_disk or stored_whole:
            self.member.close()
            raise error(
                f"{path}: array {name} claims {format_bytes(info.compress_size)} in an archive of "
                f"{format_bytes(on_disk)}; the file is damaged"
            )
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
            self.member.close()
            raise error(
                f"{path}: array {name} claims {format_bytes(info.file_size)} compressed into "
                f"{format_bytes(info.compress_size)}, more than compression allows; the file is damaged"
            )

    def read(self) -> np.ndarray:
        import numpy as np

        data = bytearray(self.nbytes)
        view = memoryview(data)
        filled = 0
        while filled < self.nbytes:
            chunk = self.member.read(min(self.nbytes - filled, 1 << 24))
            if not chunk:
                raise self.error(f"{self.path}: array {self.name} is truncated; the file is damaged")
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        array = np.frombuffer(data, self.dtype)
        return array.reshape(self.shape[::-1]).T if self.fortran_order else array.reshape(self.shape)

    def close(self) -> None:
        self.member.close()


@contextlib.contextmanager
def open_npz(
    path: Path, what: str = ".npz file", error: type[GradfitError] = GradfitError
) -> Iterator[tuple[zipfile.ZipFile, list[str]]]:
    """(archive, names of its arrays) of a regular .npz file; damaged archives become ``error``."""
    path = Path(path)
    with open_regular(path, what, error) as handle:
        if not zipfile.is_zipfile(handle):
            raise error(f"{path}: {what} is not a .npz archive (np.savez writes a zip archive of .npy arrays)")
        try:
            with zipfile.ZipFile(handle) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                yield archive, names
        # NotImplementedError: zipfile's answer to a compression method it lacks; RuntimeError: an encrypted member
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise error(f"{path}: {what} is damaged ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            raise error(f"{path}: {what} is damaged ({exc})") from None


def load_npz(
    path: Path,
    what: str = ".npz file",
    error: type[GradfitError] = GradfitError,
    expected: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Every array of an .npz, each header checked against the archive's size (and against ``expected`` shapes,
    where given) before anything is allocated. Object arrays are refused: nothing is ever unpickled."""
    arrays = {}
    with open_npz(path, what, error) as (archive, names):
        for name in names:
            member = NpyMember(archive, name, Path(path), error)
            try:
                want = None if expected is None else expected.get(name)
                if want is not None and tuple(member.shape) != tuple(want):
                    raise error(f"{path}: array {name} has shape {member.shape}, expected {tuple(want)}")
                arrays[name] = member.read()
            finally:
                member.close()
    return arrays


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write named arrays as an uncompressed .npz (object arrays are refused by NumPy)."""
    import numpy as np

    with write_atomic_stream(path, binary=True) as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]  # numpy's annotations read **kwds as allow_pickle


def format_bytes(count: int) -> str:
    """``1,234 bytes``, ``3.5 GiB``, ``12,345.0 PiB``: binary units, one decimal."""
    if count < 1024:
        return f"{count:,} bytes"
    value = float(count) / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} PiB"


# ---------------------------------------------------------------------------------------------------- writing


def check_output(path: Path, option: str, force: bool, protected: Sequence[Path] = (), stdout: bool = True) -> Path:
    """The regular file a command may write for ``option`` (a link is followed to the file it names).

    Refused with exit code 2: a target that exists and is not a regular file (a device, a FIFO, a folder), an
    existing file without ``force``, a file among ``protected`` (the command's inputs and the run's own files,
    even with ``force``), and a folder where a file cannot be created.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    instead = f"use {option} - for standard output" if stdout else "name a file"
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise GradfitError(f"{option} {path}: cannot write there ({exc.strerror})") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise GradfitError(
            f"{option} {path}: {kind(info.st_mode)}, not a regular file; gradfit writes only regular files ({instead})"
        )
    stream = _stream_link(path)
    if stream is not None:
        leads = "is" if stream == os.path.abspath(path) else "leads to"
        raise GradfitError(
            f"{option} {path}: {leads} {stream}, a device or standard stream, not a regular file; {instead}"
        )
    for other in protected:
        if os.path.realpath(other) == str(target) or (info is not None and _same_file(other, info)):
            raise GradfitError(
                f"{option} {path}: that is {other}, which this command reads or gradfit keeps; choose another file"
            )
    if info is not None and not force:
        raise GradfitError(f"{option} {path}: already exists; pass --force to replace it, or choose another name")
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise GradfitError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return target


def _stream_link(path: Path) -> str | None:
    """Where a chain of links from ``path`` enters /dev or /proc (``/dev/stdout`` -> ``/proc/self/fd/1``), or None.

    Following such a link would atomically replace whatever file the shell redirected a stream to.
    """
    current = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        if current.parts[1:2] == ("proc",) or (current.parts[1:2] == ("dev",) and current.parts[2:3] != ("shm",)):
            return str(current)
        if not current.is_symlink():
            return None
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return None


def _same_file(other: Path, info: os.stat_result) -> bool:
    try:
        mine = os.stat(other)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)


def open_append(path: Path, error: type[GradfitError] = GradfitError) -> IO[str]:
    """``path`` opened for appending text, created if missing; refused unless it is a regular file (a FIFO in a
    run directory someone handed over must not hang the command, a device must not be written)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    with contextlib.suppress(OSError):  # a FIFO without a reader would fail the open below with a vaguer error
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {kind(info.st_mode)}, not a regular file; gradfit writes only regular files")
    fd = os.open(path, flags, 0o666)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{path}: {kind(info.st_mode)}, not a regular file; gradfit writes only regular files")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


@contextlib.contextmanager
def write_atomic_stream(path: Path, binary: bool = False):
    """A file handle whose contents replace ``path`` only if the block completes (fsync, rename, fsync folder).

    The temporary file is removed on any failure and on a signal that ends the process; an OSError (a full disk)
    names ``path`` and says what to do (``write_error``).
    """
    path = Path(path)
    opened: list = []  # [descriptor, temporary path], filled as the temporary file is made and registered
    try:
        with removed_on_abort(lambda: _temporary(path, opened)) as tmp:
            fd = opened[0]
            with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as exc:
        if opened:
            opened[1].unlink(missing_ok=True)
        # a write to a descriptor names no file, a failed rename names the temporary one: name what was asked for
        if isinstance(exc, OSError) and (exc.filename is None or (opened and exc.filename == str(opened[1]))):
            raise write_error(exc, path) from None
        raise
    _sync_directory(path.parent)


def write_error(exc: OSError, path: Path) -> OSError:
    """The error to raise for ``exc``, met while writing ``path``: it names ``path``, and a full disk (or quota)
    says what to do about it. The command line prints it as ``PATH: REASON``."""
    reason = exc.strerror or str(exc)
    if exc.errno in FULL_DISK:
        reason += "; free space on that disk or write to another one"
    return OSError(exc.errno, reason, str(path))


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    with write_atomic_stream(path, binary=True) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def _temporary(path: Path, opened: list) -> Path:
    """A temporary file next to ``path``, with the permissions a plain open() would give (mkstemp makes 0600);
    its descriptor and path are appended to ``opened``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(exc, path) from None
    opened += [fd, Path(tmp)]
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return Path(tmp)


def _sync_directory(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
