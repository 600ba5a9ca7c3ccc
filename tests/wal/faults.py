"""Fault injection into a child Python process (e.g. a `ferry serve` under test), with no
hook in the product code: a `sitecustomize.py` in a temp dir, put first on PYTHONPATH,
wraps `os.fdatasync` before anything else runs. The WAL looks `os.fdatasync` up at call
time, so the wrapper sees every sync.

    env = fdatasync_fault_env(tmp_path / "site", trigger=tmp_path / "fail-now")
    child = subprocess.Popen([sys.executable, "-m", "core.cli", "serve", ...], env=env)
    ...  # healthy until:
    (tmp_path / "fail-now").touch()  # every later fdatasync raises EIO
"""

from __future__ import annotations

import errno as errno_codes
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SITE = '''"""Test-only fault injection (tests/wal/faults.py): os.fdatasync fails on demand."""
import os as _os

_real = _os.fdatasync
_calls = [0]
_AFTER = {after!r}
_TRIGGER = {trigger!r}
_ERRNO = {errno!r}


def _fdatasync(fd):
    _calls[0] += 1
    if (_AFTER is not None and _calls[0] > _AFTER) or (
        _TRIGGER is not None and _os.path.exists(_TRIGGER)
    ):
        raise OSError(_ERRNO, _os.strerror(_ERRNO))
    return _real(fd)


_os.fdatasync = _fdatasync
'''


def fdatasync_fault_env(
    site_dir: Path,
    *,
    after: int | None = None,
    trigger: Path | None = None,
    errno: int = errno_codes.EIO,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a child whose fdatasync fails with `errno` after `after` calls
    and/or once the file `trigger` exists."""
    site_dir.mkdir(parents=True, exist_ok=True)
    text = _SITE.format(after=after, trigger=str(trigger) if trigger else None, errno=errno)
    (site_dir / "sitecustomize.py").write_text(text)
    env = dict(os.environ if base is None else base)
    paths = [str(site_dir), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env
