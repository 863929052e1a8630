"""Creating files and folders: the low-level steps of atomic writes, claims and shared
caches (``permissions``: the mode applied to what is created, e.g. 0o777 for a cache
several users write to; None leaves the umask's)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
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
    except BaseException:  # (a full disk: no empty or partial file left for good)
        os.close(fd)
        try:
            os.remove(path)
        except OSError:
            pass
        raise
    os.close(fd)


# what a write meets on a full disk, over a quota or over a file size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# ... and in a folder this process may not write to (another user's, a read-only mount)
DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


# how the notes of note_write_error begin (a summary of many errors keeps them: the bare
# errno says nothing of the folder, nor what to do)
WRITE_NOTE_STARTS = ("no space left for ", "this process cannot write into ")


def note_write_error(error: BaseException, folder: str | os.PathLike[str] | None) -> None:
    """Say what to do on an error of a write that found no space for ``folder``, or no
    right to write there (its message, "[Errno 28] No space left on device", names no
    file, nor what to do)."""
    if not isinstance(error, OSError):
        return
    if error.errno in NO_SPACE:
        note = (
            f"no space left for {folder} (a full disk, a quota or a file size limit): free "
            "space there, or use a folder on another disk, then try again (what failed to "
            "be written is not read back as an entry)"
        )
    elif error.errno in DENIED:
        note = (
            f"this process cannot write into {folder} ({error.strerror}): use a folder it "
            "can write to (what is there can still be read)"
        )
    else:
        return
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)


def blocking_folder(path: str | os.PathLike[str]) -> str:
    """The folder that keeps this process from ``path``: its first ancestor it may not
    enter, else the deepest existing folder of the path (which it may not list)."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for end in range(2, len(parts) + 1):
        folder = os.sep.join(parts[:end])
        if not os.path.isdir(folder):  # (stat needs only the ancestors' search right)
            return os.path.dirname(folder)
        if not os.access(folder, os.X_OK) and folder != path:
            return folder
    return path


def whose(folder: str | os.PathLike[str]) -> str:
    """What to say of a folder's owner and mode: ' (owner uid N, mode 0oM)', '' when it
    cannot be looked at."""
    try:
        status = os.stat(folder)
    except OSError:
        return ""
    return f" (owner uid {status.st_uid}, mode {oct(status.st_mode & 0o7777)})"


def note_read_error(error: BaseException, path: str | os.PathLike[str]) -> None:
    """Say which folder a read of ``path`` was refused by, whose, and what to do (its
    message named a file under that folder, maybe one that does not exist: a shared
    cache's folder that another user made without the cache's permissions)."""
    if not isinstance(error, OSError) or error.errno not in (errno.EACCES, errno.EPERM):
        return
    folder = blocking_folder(path)
    note = (
        f"this process may not read {folder}{whose(folder)}: another user's folder in a shared "
        "cache, made without the cache's permissions (permissions=None, a strict umask)? "
        "Ask its owner to open it (chmod -R a+rwX, or g+rwX for a group), or use a cache "
        "folder of your own"
    )
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)


NAME_MAX = 255  # bytes per file name on common file systems (ext4, xfs, tmpfs, NFS)


def name_too_long(path: str | os.PathLike[str] | None) -> str:
    """The first part of ``path`` longer than a file name may be (shortened to show,
    with its size), or ""."""
    raw = os.fsencode(path or "")
    if len(raw) <= NAME_MAX:  # (the common case: no part can be too long)
        return ""
    for part in raw.split(os.fsencode(os.sep)):
        if len(part) > NAME_MAX:
            name = os.fsdecode(part)
            shown = name if len(name) <= 60 else f"{name[:40]}...{name[-12:]}"
            return f"{shown!r} ({len(part)} bytes)"
    return ""


def check_name_lengths(path: str | os.PathLike[str], what: str, advice: str) -> None:
    """ValueError when a part of ``path`` is too long a file name (else a bare "File name
    too long" at its first use), naming ``what`` it is and what to do (``advice``)."""
    too_long = name_too_long(path)
    if too_long:
        raise ValueError(
            f"{what}: the name {too_long} is longer than the {NAME_MAX} bytes file systems "
            f"allow in a name: {advice}"
        )


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
    """chmod that only logs a warning when it fails (e.g. a file of another user); a path
    gone meanwhile (a folder a concurrent clean or clear removed) needs none: nothing said."""
    try:
        os.chmod(path, permissions)
    except FileNotFoundError:
        pass
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


def make_folder(
    folder: str | os.PathLike[str],
    permissions: int | None,
    levels: int = 1,
    parent_mode: int | None = None,
) -> bool:
    """mkdir -p, applying permissions to the folders it creates; True when it created
    ``folder`` itself (then it was empty a moment ago). ``parent_mode``: the mode of its
    parent, just looked at (see ``chmod_folder``).

    Missing folders are made from the top down, each given its permissions before
    anything is made in it: a process killed between a mkdir and its chmod leaves that
    one folder with its umask's mode (0o755 under 0o022: the other users of a shared
    cache could never write in it), and empty. So the folders this user owns and finds
    without some of the permission bits are given them (``repair``): ``folder`` and its
    ancestors up to ``levels`` - 1 above it (the folders exca names, e.g. 2 for a node
    folder and its step folder; 0: none, a folder the user named), whatever they hold;
    a folder above those, or one the user named, only when found empty and with the
    umask's mode (as such a kill leaves it: an empty folder of the user's own there, made
    with the umask's mode, gets the permissions too, as if exca had made it; one made
    with a mode of its own, e.g. 0o700, is left as it is). Never renamed into place (a rename over the empty folder another
    thread just made removed it under that thread's feet): a folder another user has
    just made, found there or refusing a mkdir in it before its maker's chmod, is
    waited for (``await_chmod``)."""
    folder = os.fspath(folder)
    if folder.endswith(os.sep) and folder.strip(os.sep):  # ("a/b/": its parent is "a")
        folder = folder.rstrip(os.sep)
    try:
        _mkdir(folder)
    except FileExistsError:
        if permissions is not None:
            repair(folder, permissions, empty_only=levels < 1)
            if levels > 1:
                repair(os.path.dirname(folder), permissions)
        return False
    except FileNotFoundError:  # parents missing: create them first, from the top
        parent_mode = None  # (its parent is made again below)
        missing = []
        current = os.path.dirname(folder)
        while current and not os.path.exists(current):  # ("": the top of a relative path)
            missing.append(current)
            current = os.path.dirname(current)
        if permissions is not None and current:  # (maybe left by a kill before its chmod)
            repair(current, permissions, empty_only=len(missing) + 1 >= levels)
        for path in reversed(missing):
            try:
                _mkdir(path)
            except FileExistsError:  # (made meanwhile by someone else, who chmods it)
                continue
            if permissions is not None:
                chmod_folder(path, permissions)
        try:
            _mkdir(folder)
        except FileExistsError:  # (made meanwhile by someone else, who chmods it)
            if permissions is not None:
                await_chmod(folder)
            return False
    else:
        if permissions is not None and levels > 1:  # (its parent: maybe left by a kill)
            parent = os.path.dirname(folder)
            try:
                status = os.stat(parent)
            except OSError:
                pass
            else:
                repair(parent, permissions, status=status)
                parent_mode = status.st_mode
    if permissions is not None:
        chmod_folder(folder, permissions, parent_mode)
    return True


def ensure_folder(folder: str | os.PathLike[str], permissions: int | None, levels: int = 1) -> None:
    """A folder about to be written into: made when missing (``make_folder``), else given
    the permissions when it lacks some of their bits (see ``repair``). One stat when it is there with them,
    as the ``exists()`` it replaces."""
    try:
        status = os.stat(folder)
    except OSError:
        make_folder(folder, permissions, levels)
        return
    if permissions is not None and permissions & ~status.st_mode & 0o7777:
        repair(folder, permissions, empty_only=levels < 1, status=status)


# the folders whose chmod by repair did not take (a file system that ignores it), by
# inode: not tried again, and logged once. Only those: one whose chmod took, removed since
# and made again by a process killed before its chmod, mostly has the same inode (ext4
# gives a freed inode again at once), and was left with the umask's mode for good
_REPAIRED: dict[str, int] = {}


def repair(
    folder: str | os.PathLike[str],
    permissions: int,
    empty_only: bool = False,
    status: os.stat_result | None = None,
) -> None:
    """Give a folder of a shared cache lacking some of the ``permissions`` bits the mode
    its maker gives it (``chmod_folder``: ``permissions``, keeping its setgid bit), when it
    is this user's (only its owner may chmod it): a process killed between its mkdir and
    its chmod left it with the umask's mode, and the other users could not write in it for
    good. Not the bits it lacked added to the mode seen: that mode may be stale, seen just
    before another thread's or process's chmod of the folder it just made, and adding to
    it gave back the umask's bits that chmod had removed (0o775 for permissions=0o770).
    ``empty_only``: a folder exca cannot tell from the user's own (the cache root, or a
    folder above it, or one the user names): only if it is empty and has the mode mkdir
    gives under this process's umask (what a kill leaves): one the user made with a mode
    of their own (``mkdir -m 700``, ``tempfile.mkdtemp``: a private folder) is theirs,
    and was made 0o777 (the default permissions) by the first call using it. Never
    raises: a chmod that fails is logged."""
    folder = os.fspath(folder)
    try:
        status = status if status is not None else os.stat(folder)
    except OSError:
        return
    mode = stat.S_IMODE(status.st_mode)
    if not permissions & ~mode & 0o7777:
        return
    if status.st_uid != os.getuid():  # (another user's: maybe just made, before its chmod)
        await_chmod(folder, status)
        return
    if _REPAIRED.get(folder) == status.st_ino or not stat.S_ISDIR(status.st_mode):
        return
    if empty_only:
        umask = _umask()
        if umask is None or mode & 0o777 != 0o777 & ~umask:
            return
        try:
            with os.scandir(folder) as entries:
                if next(entries, None) is not None:
                    return
        except OSError:
            return
    logger.debug(
        "Giving %s the cache's permissions (%s, it had %s: made by a process killed before "
        "its chmod?)",
        folder,
        oct(permissions),
        oct(mode),
    )
    chmod(folder, permissions | (mode & stat.S_ISGID))
    try:
        took = not permissions & ~os.stat(folder).st_mode & 0o7777
    except OSError:  # (gone meanwhile)
        return
    if not took:
        if len(_REPAIRED) >= 10_000:
            _REPAIRED.clear()
        _REPAIRED[folder] = status.st_ino


def _umask() -> int | None:
    """This process's umask, read without setting it (os.umask sets it for every thread,
    the files they create meanwhile included); None when unknown (no /proc)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


# how long after its mkdir another user's folder may still lack its chmod (await_chmod)
CHMOD_WAIT_S = 5.0


def _mkdir(path: str) -> None:
    """``os.mkdir``, waiting for the chmod of a parent another user has just made when it
    may not be written yet (``await_chmod``)."""
    try:
        os.mkdir(path)
    except PermissionError:
        if not await_chmod(os.path.dirname(path) or "."):
            raise
        os.mkdir(path)


def await_chmod(folder: str | os.PathLike[str], status: os.stat_result | None = None) -> bool:
    """Whether this user may create files in ``folder``, once another user who has just
    made it (its ctime within ``CHMOD_WAIT_S``) gave it the cache's permissions: two
    users using a new shared cache at once, the one that makes a folder makes it with
    its umask's mode (0o755) and chmods it just after; the other one, finding it in
    between, could not write in it (PermissionError). Waits for that chmod, at most
    ``CHMOD_WAIT_S``: an older folder, or one of this user's, is not waited for (False
    when it may not be written). Only where a folder was found there or a write was
    refused, never on a cache hit."""
    try:
        status = status if status is not None else os.stat(folder)
    except OSError:
        return False
    if os.access(folder, os.W_OK | os.X_OK):
        return True
    if status.st_uid == os.getuid() or abs(time.time() - status.st_ctime) > CHMOD_WAIT_S:
        return False
    logger.debug("Waiting for the owner of %s (uid %d) to chmod it", folder, status.st_uid)
    deadline, delay = time.monotonic() + CHMOD_WAIT_S, 0.001
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        if os.access(folder, os.W_OK | os.X_OK):
            return True
    return False


def chmod_folder(
    folder: str | os.PathLike[str], permissions: int, parent_mode: int | None = None
) -> None:
    """``chmod`` of a folder keeping its setgid bit (a new folder inherits it from its
    parent, in a group's cache): without it, the files made there take their maker's own
    group, which the other users of the cache may not read. ``parent_mode``: of the
    folder's parent, looked at just before its mkdir (its setgid bit is the one the new
    folder inherited: no stat of it)."""
    if parent_mode is not None:
        inherited = parent_mode & stat.S_ISGID
    else:
        try:
            inherited = os.stat(folder).st_mode & stat.S_ISGID
        except OSError:
            inherited = 0
    chmod(folder, permissions | inherited)
