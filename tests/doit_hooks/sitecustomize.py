"""Loaded by a doit process that a test starts with this directory on PYTHONPATH
(support.project.system_clock_at, support.project.killed_at_write); never by the tool itself.

KTHW_TEST_SYSTEM_CLOCK=<ISO 8601>   the system clock kthw reads (kthw.clock.system_now) stands
                                    at that moment, as on a machine whose clock says so: how a
                                    test lives through "a year later" in seconds
KTHW_TEST_SYSTEM_CLOCK_FILE=<file>  the same, read from <file> at every look: a test moves the clock
                                    between runs without changing their environment
KTHW_TEST_INTERRUPT_AT=<module>:<function>
                                    the process sends itself SIGINT (as Ctrl-C does) at the first
                                    call of that function
KTHW_TEST_KILL_AT_WRITE=<N>         the process SIGKILLs itself at its N-th rename into build/
                                    (the last step of every kthw.fsutil.atomic_write), before
                                    making it: the temp file stays behind, the target keeps what
                                    it held. With KTHW_TEST_KILL_EMPTY_TEMP=1 the temp file is
                                    emptied first, as a kill right after its creation leaves it.
KTHW_TEST_COUNT_WRITES=<file>       the number of renames into build/ is written to <file> at exit
"""

import os
import signal

_clock = os.environ.get("KTHW_TEST_SYSTEM_CLOCK")
if _clock:
    from datetime import datetime

    from kthw import clock

    _frozen = clock.in_utc(datetime.fromisoformat(_clock))
    clock.system_now = lambda: _frozen

_clock_file = os.environ.get("KTHW_TEST_SYSTEM_CLOCK_FILE")
if _clock_file:
    from datetime import datetime
    from pathlib import Path

    from kthw import clock

    def _clock_from_file():
        return clock.in_utc(datetime.fromisoformat(Path(_clock_file).read_text().strip()))

    clock.system_now = _clock_from_file

_interrupt_at = os.environ.get("KTHW_TEST_INTERRUPT_AT")
if _interrupt_at:
    import importlib

    _module_name, _function_name = _interrupt_at.split(":")
    _module = importlib.import_module(_module_name)
    _original = getattr(_module, _function_name)

    def _interrupting(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return _original(*args, **kwargs)

    setattr(_module, _function_name, _interrupting)

_kill_at = int(os.environ.get("KTHW_TEST_KILL_AT_WRITE") or 0)
_count_file = os.environ.get("KTHW_TEST_COUNT_WRITES")
if _kill_at or _count_file:
    import atexit

    _replace = os.replace
    _seen = 0

    def _counted_replace(src, dst, *args, **kwargs):
        global _seen
        if "build" in os.fspath(dst).split(os.sep):
            _seen += 1
            if _seen == _kill_at:
                if os.environ.get("KTHW_TEST_KILL_EMPTY_TEMP") == "1":
                    os.truncate(src, 0)
                os.kill(os.getpid(), signal.SIGKILL)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _counted_replace
    def _write_count():
        with open(_count_file, "w") as out:
            out.write(str(_seen))

    if _count_file:
        atexit.register(_write_count)
