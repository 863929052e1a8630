"""Creating files and folders: the low-level steps of atomic writes, claims and shared
caches (``permissions``: the mode applied to what is created, e.g. 0o777 for a cache
several users write to; None leaves the umask's)."""

from __future__ import annotations

import logging
import os
import stat
import typing as tp

logger = logging.getLogger("exca")


def write_new(path: str, data: bytes, permissions: int | None = None) -> None:
    """Create ``path`` (it must not exist: ``FileExistsError``) and write all of ``data``
    into it, finishing short writes (``permissions``: its mode, else the umask's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if permissions is not None:
            fchmod(fd, path, permissions)
        written = os.write(fd, data)
        if written != len(data):
            finish_write(fd, [data], written)
    finally:
        os.close(fd)


def finish_write(fd: int, buffers: list[tp.Any], written: int) -> None:
    """After a short write (a signal, or Linux's ~2 GiB limit per call) of ``written``
    bytes of the buffers: write the rest, byte-exactly, without copying."""
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        if written >= len(view):
            written -= len(view)
            continue
        view = view[written:]
        written = 0
        while view:
            view = view[os.write(fd, view) :]


def check_permissions(value: int | None) -> int | None:
    """A file mode for a cache (ValueError otherwise): 0 to 0o7777, without the setuid or
    sticky bit, which a shared cache never wants and which ``permissions=777`` (decimal:
    0o1411, the sticky bit and almost no access) sets by mistake."""
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise ValueError(
            f"permissions={value!r} is not a file mode (0 to 0o7777): use e.g. 0o777, "
            "0o2775, 'a+rwx', or None"
        )
    if value & 0o5000:
        octal = set(str(value)) <= set("01234567") and not int(str(value), 8) & 0o5000
        guess = f": did you mean 0o{value}?" if octal else "."
        raise ValueError(
            f"permissions={value} is {oct(value)}, which sets the setuid or sticky bit (a "
            f"sticky folder lets only its owner remove what others wrote){guess} Write "
            "modes in octal, e.g. 0o777 or 0o2775 (setgid), or as the string '777'"
        )
    return value


def parse_permissions(value: tp.Any) -> int | None:
    """A file mode given as an int, an octal string ('777', '2775'), 'a+rwx', '' or None
    (no chmod): ValueError otherwise (see ``check_permissions``)."""
    if isinstance(value, str):
        if not value:
            return None
        if value == "a+rwx":
            return 0o777
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(
                f"permissions={value!r}: use an int such as 0o777, an octal string such as "
                "'777', 'a+rwx', or None"
            ) from None
        if mode & 0o5000 and 0 <= mode <= 0o7777:  # (read as octal: no decimal mix-up to guess)
            raise ValueError(
                f"permissions={value!r} is {oct(mode)}, which sets the setuid or sticky bit (a "
                "sticky folder lets only its owner remove what others wrote): drop that digit, "
                "e.g. '777' or '2775' (setgid)"
            )
        value = mode
    return check_permissions(value)


def chmod(path: str | os.PathLike[str], permissions: int) -> None:
    """chmod that only logs a warning when it fails (e.g. a file of another user)."""
    try:
        os.chmod(path, permissions)
    except OSError as e:
        logger.warning("Could not chmod %s to %s: %s", path, oct(permissions), e)


def fchmod(fd: int, path: str | os.PathLike[str], permissions: int) -> None:
    """``chmod`` of a file just opened (only a warning when it fails)."""
    try:
        os.fchmod(fd, permissions)
    except OSError as e:
        logger.warning("Could not chmod %s to %s: %s", path, oct(permissions), e)


def folder_mode(folder: str | os.PathLike[str]) -> int | None:
    """The mode of a folder of a cache (made with its permissions: what is created in
    there by a process that does not know them, a cleaning, takes this), None if gone.
    With its setgid bit (permissions=0o2770, or inherited): a claims folder made without
    it, in a group's cache, would give the files made there their maker's own group,
    which the other users may not read. (Not sticky nor setuid: breakers remove the
    files of others.)"""
    try:
        return stat.S_IMODE(os.stat(folder).st_mode) & 0o2777
    except OSError:
        return None


def make_folder(folder: str | os.PathLike[str], permissions: int | None) -> bool:
    """mkdir -p, applying permissions to the folders it creates; True when it created
    ``folder`` itself (then it was empty a moment ago)."""
    folder = os.fspath(folder)
    try:
        os.mkdir(folder)
    except FileExistsError:
        return False
    except FileNotFoundError:  # parents missing: create them first
        missing = []
        current = os.path.dirname(folder)
        while current and not os.path.exists(current):  # ("": the top of a relative path)
            missing.append(current)
            current = os.path.dirname(current)
        try:
            os.makedirs(folder)
        except FileExistsError:  # (created meanwhile by someone else)
            return False
        if permissions is not None:
            for path in missing:
                chmod_folder(path, permissions)
    if permissions is not None:
        chmod_folder(folder, permissions)
    return True


def chmod_folder(folder: str | os.PathLike[str], permissions: int) -> None:
    """``chmod`` of a folder keeping its setgid bit (a new folder inherits it from its
    parent, in a group's cache): without it, the files made there take their maker's own
    group, which the other users of the cache may not read."""
    try:
        inherited = os.stat(folder).st_mode & stat.S_ISGID
    except OSError:
        inherited = 0
    chmod(folder, permissions | inherited)
