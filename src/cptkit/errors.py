"""The error family: everything a user can fix is a `CptError`; the CLI prints it on one line, exit 2."""

import errno
import io
import os
from contextlib import contextmanager


class CptError(Exception):
    """A problem with the user's input (recipe, files, flags), stated with what to do about it."""


class RecipeError(CptError):
    """A recipe that failed validation; `problems` lists every issue found, not just the first."""

    def __init__(self, path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


# What the OS said, in words, and what to do about it. Every command's OS errors end up here
# (cli.main), so a full disk or a read-only folder reads the same whatever the command was.
_OS_FIXES = {
    errno.EACCES: ("permission denied", "check the file's permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check the file's permissions or choose another path"),
    errno.EISDIR: ("is a folder", "give a file path"),
    errno.ENOTEMPTY: ("folder not empty", "empty it or choose another path"),
    errno.ENOSPC: ("no space left on device", "free space or choose another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another disk"),
    errno.EFBIG: ("file too large for this file system", "choose another disk"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.ENOENT: ("not found", "check the path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links along the path"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    errno.ENFILE: ("too many open files in the system", "close other programs and run again"),
    errno.EIO: ("input/output error", "check the disk, then run again"),
    errno.EBUSY: ("busy", "stop what is using it, then run again"),
    errno.EPIPE: ("the reader closed the output early (broken pipe)", "let it read to the end or write to a file"),
}


def _user_path(e: OSError) -> str | None:
    """The path to name: a rename's destination, and for `fileio`'s `.NAME.tmp` the NAME the
    user gave (the temporary file is ours, not theirs)."""
    if e.filename2 is not None:
        return os.fsdecode(e.filename2)
    if e.filename is None:
        return None
    path = os.fsdecode(e.filename)
    head, name = os.path.split(path)
    if name.startswith(".") and name.endswith(".tmp") and len(name) > 5:
        return os.path.join(head, name[1:-4])
    return path


@contextmanager
def naming(path):
    """OS errors raised inside that carry no file name (a write to a full disk) get `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise


def describe_os_error(e: OSError, where: str = "") -> str:
    """`<path>: <what happened>; <the fix>` for an OS error. `where` names the path when the
    error carries none (a write to a full disk raises ENOSPC with no file name): the flag and
    the path it was given, or the command."""
    path = _user_path(e) or where or "cpt"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        # ENOTDIR: the path (or a folder on the way to it) is a file; EEXIST from mkdir: a file
        # stands where a folder is needed (mkdir -p through a file), else the thing exists.
        is_file = os.path.lexists(path) and not os.path.isdir(path)
        if e.errno == errno.ENOTDIR:
            what, fix = (("is a file, not a folder", "give a folder") if is_file else
                         ("a parent is a file, not a folder", "choose another path"))
        else:
            what, fix = (("exists and is not a folder", "choose another path") if is_file else
                         ("already exists", "remove it or choose another path"))
    elif e.errno in _OS_FIXES:
        what, fix = _OS_FIXES[e.errno]
    else:
        what, fix = (e.strerror or str(e) or type(e).__name__).lower(), "check the path and run again"
    return f"{path}: {what}; {fix}"


def describe_decode_error(e: UnicodeDecodeError, where: str = "") -> str:
    """`<file>: not UTF-8 text ...` for a decode error that escaped a reader. The error does not
    carry the file, so it is found as the open file in the innermost frame that has one."""
    path = None
    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        names = [getattr(v, "name", None) for v in frame.f_locals.values() if isinstance(v, io.IOBase)]
        path = next((os.fsdecode(n) for n in names if isinstance(n, (str, bytes, os.PathLike))), None)
        if path:
            break
    bad = e.object[e.start:e.start + 1].hex() if isinstance(e.object, bytes) else "?"
    return (f"{path or where or 'an input'}: not {e.encoding.upper()} text (byte 0x{bad}: {e.reason}); "
            "save it as UTF-8 or check the format")


def unknown_name(what: str, name: str, known) -> str:
    """`unknown source `wikj`; did you mean `wiki`?` (or the list of known names when none is close)."""
    import difflib

    known = list(known)
    near = difflib.get_close_matches(name, known, n=1)
    return f"unknown {what} `{name}`" + (f"; did you mean `{near[0]}`?" if near else f" (known: {', '.join(known)})")
