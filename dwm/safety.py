"""Failure paths shared by long runs: unwritable or full output folders, and stopping on a signal.

A long run should fail before its work starts when its output folder cannot be written, turn a full
disk into one line that names the folder and the fix, and stop on SIGINT/SIGTERM at a point where it
can save. The signal handlers are installed explicitly, so the behaviour never depends on the
disposition a process inherits (``nohup``, ``&`` in a script and CI runners start processes with
SIGINT ignored).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading

from .errors import DWMCancelled, DWMError

FULL = (errno.ENOSPC, errno.EDQUOT)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
NEARLY_FULL_BYTES = 16 << 20  # a failed write with less than this left is a full disk
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_writable(folder: str, what: str) -> str:
    """Create ``folder`` if needed and prove a file can be written in it (before any long work)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise write_error(err, what, folder) from None
    return folder


def disk_full(folder: str) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _related(path: str, folder: str) -> bool:
    """``path`` lies in ``folder`` or is one of its parents (creating the folder failed there)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return os.path.commonpath([path, folder]) in (path, folder)
    except ValueError:  # another drive
        return False


def write_error(err: BaseException, what: str, folder: str, then: str = "") -> DWMError | None:
    """The one-line error for a failed write into ``folder``; None when ``err`` is not about it.

    Writers report a full disk in several ways (OSError, torch's "file write failed", safetensors'
    IoError), so besides the errno a failure with the disk (nearly) full counts as a full disk.
    """
    code = getattr(err, "errno", None)
    where = getattr(err, "filename", None) or folder
    after = f", then {then}" if then else ""
    if code not in FULL and not _related(str(where), folder):
        return None  # e.g. an input that cannot be read
    if code in FULL or disk_full(folder):
        return DWMError(what, f"no space left on the disk of {folder} (writing {where})",
                        f"free disk space there or choose another folder{after}")
    if code in DENIED:
        return DWMError(what, f"{folder} is not writable ({os.strerror(code)}: {where})",
                        f"fix its permissions or choose another folder{after}")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return DWMError(what, f"{where} is not a folder path ({os.strerror(code)}: a file is in the way)",
                        f"choose a folder path{after}")
    if isinstance(err, OSError):
        return DWMError(what, f"cannot write {where} ({err.strerror or err})", f"check the disk of {folder}{after}")
    return None


class Interrupted(DWMCancelled):
    """The run was stopped by a signal; ``exit_code`` follows the shell convention (128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalStop:
    """What ``stop_on_signals`` yields. Outside ``deferred()`` a signal raises :class:`Interrupted` at
    once; inside it the first signal is only recorded (``requested``), so the caller finishes its unit
    of work and saves; a second one raises."""

    def __init__(self):
        self.signum: int | None = None
        self._defer = False
        self._notice = b""
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def interrupted(self, message: str) -> Interrupted:
        return Interrupted(self.signum or signal.SIGINT, message)

    def handle(self, signum: int, _frame=None) -> None:
        if os.getpid() != self._pid:
            return  # a child forked before it set its own dispositions: the parent decides
        if self._defer and self.signum is None:
            self.signum = signum
            os.write(2, f"\n{signal.Signals(signum).name}: ".encode() + self._notice + b"\n")  # reentrant-safe
            return
        self.signum = signum
        raise Interrupted(signum, f"{signal.Signals(signum).name} received")

    @contextlib.contextmanager
    def deferred(self, notice: str):
        """Record the first signal instead of raising; ``notice`` is printed when it comes."""
        self._defer, self._notice = True, notice.encode()
        try:
            yield self
        finally:
            self._defer = False


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Install handlers for ``signals`` (whatever the inherited disposition) and restore them after.
    Off the main thread Python cannot install handlers: the yielded object then never fires."""
    stop = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def worker_signals(_worker_id: int | None = None) -> None:
    """For helper processes (data-loader workers). Ctrl-C reaches the whole process group but only the
    main process decides how to stop, so SIGINT is ignored. SIGTERM (a scheduler ends the whole group)
    ends the worker with status 0: torch then reports it only when the main process next asks it for
    data, not by raising at an arbitrary point of the main process as it does for a killed worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(_signum, _frame) -> None:
    os._exit(0)


@contextlib.contextmanager
def interrupt_on_signals():
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (so our queued prompts are removed) whatever the
    disposition this process inherited: a shell starts `&` and nohup jobs with SIGINT ignored."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
