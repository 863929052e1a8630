"""Keys are written as UTF-8 (index lines, claim files, digests of long item uids): the
error for a key that cannot be, named and with what to do."""

from __future__ import annotations


def check_utf8(key: str) -> None:
    """ValueError if ``key`` cannot be written as UTF-8 (a map item's uid made of a file
    name that ``os.listdir`` decoded with surrogates)."""
    try:
        key.encode("utf8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"Key {key!r} cannot be written as UTF-8 ({error.reason}): e.g. a file name "
            "decoded with surrogates; make it valid text, e.g. with "
            "os.fsencode(name).decode('utf8', 'replace')"
        ) from None
