"""Every exception class the wal package defines sits under `WalError` (and so under
`common.errors.FerryError`), and the error tree's diagram names each of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import wal
import wal.errors
from common.errors import FerryError, RecordRefused
from wal.errors import RecordTooLarge, WalError


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(wal.__path__, "wal."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("wal")
            ):
                found[name] = obj
    return found


def test_every_wal_exception_is_a_wal_error_defined_in_wal_errors() -> None:
    classes = _exception_classes()
    assert {"SinkError", "ReplayLocked", "HeadsStoreError", "WalLocked"} <= classes.keys()
    for name, cls in classes.items():
        assert issubclass(cls, WalError) and issubclass(cls, FerryError), name
        assert cls.__module__ == "wal.errors", name


def test_the_diagram_names_every_error() -> None:
    doc = wal.errors.__doc__ or ""
    for name in _exception_classes():
        assert re.search(rf"\b{name}\b", doc), name


def test_record_too_large_is_the_seams_record_refused() -> None:
    """core's router catches RecordRefused from `append` as "the log refuses this record";
    no ValueError signals across the seam."""
    assert issubclass(RecordTooLarge, RecordRefused)
    assert not issubclass(RecordTooLarge, ValueError)
