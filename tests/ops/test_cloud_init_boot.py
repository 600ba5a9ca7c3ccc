"""The droplet's first boot, its shell part run for real: cloud-init's template rendered by
Terraform's templatefile(), then ferry-wal-mount and ferry-start (the one runcmd) run here
against a fake WAL volume (an ext4 image on a loop device) and a temp mount point, with
`systemctl` and `docker` stood in for by stubs that log their calls.

A missing volume, a failed mount, or a mount point backed by something else must fail the
boot loudly (stderr, /etc/motd) and start nothing: acked messages must never sit on the
droplet's own disk. With the volume there, it is mounted and prepared, and only then are
docker, ferry and the pull timer started.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import UNIT, unavailable
from tests.ops.support import TERRAFORM_DIR, explain, run
from tests.ops.test_terraform import _template_values, _terraform_render


@pytest.fixture(scope="module")
def boot_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    template = (TERRAFORM_DIR / "cloud-init.yaml.tftpl").read_text()
    names = set(re.findall(r"\$\{(\w+)\}", template)) | set(re.findall(r"%\{ if (\w+)", template))
    rendered = _terraform_render(tmp_path_factory.mktemp("render"), _template_values(names))
    cloud = yaml.safe_load(rendered)
    return {f["path"]: f["content"] for f in cloud["write_files"]}


@pytest.fixture
def host(tmp_path: Path, boot_files: dict[str, str]) -> dict[str, Any]:
    """The two scripts, stubs for systemctl/docker, and the environment pointing them here."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    for name in ("ferry-wal-mount", "ferry-start"):
        script = sbin / name
        script.write_text(boot_files[f"/usr/local/sbin/{name}"])
        script.chmod(0o755)
    calls = tmp_path / "calls.log"
    for stub in ("systemctl", "docker"):
        path = sbin / stub
        path.write_text(f'#!/bin/sh\necho "{stub} $*" >> "{calls}"\n')
        path.chmod(0o755)
    env = {
        "PATH": f"{sbin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "WAL_MOUNT": str(tmp_path / "mnt" / "ferry-wal"),
        "WAL_FSTAB": str(tmp_path / "fstab"),
        "WAL_MOTD": str(tmp_path / "motd"),
        "WAL_DEVICE_WAIT": "0",
        "WAL_MOUNT_CMD": str(sbin / "ferry-wal-mount"),
    }
    return {"sbin": sbin, "calls": calls, "env": env, "mnt": Path(env["WAL_MOUNT"])}


def _start(host: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return run([host["sbin"] / "ferry-start"], env=host["env"], timeout=UNIT * 6)


def _started(host: dict[str, Any]) -> list[str]:
    calls: Path = host["calls"]
    return calls.read_text().splitlines() if calls.exists() else []


def _assert_refused(host: dict[str, Any], proc: subprocess.CompletedProcess[str], why: str) -> None:
    assert proc.returncode != 0, explain(proc)
    assert "NOT starting ferry" in proc.stderr and why in proc.stderr, explain(proc)
    assert _started(host) == [], "nothing may start without the WAL volume"
    assert not (host["mnt"] / "data").exists(), "the WAL directory was made on the root disk"
    assert "NOT starting ferry" in Path(host["env"]["WAL_MOTD"]).read_text()


def test_a_missing_volume_fails_the_boot(host: dict[str, Any], tmp_path: Path) -> None:
    host["env"]["WAL_DEVICE"] = str(tmp_path / "no-such-volume")
    _assert_refused(host, _start(host), "did not appear")


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        unavailable("needs losetup and mkfs.ext4 (root) for a fake volume")
    image = tmp_path / "volume.img"
    with image.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    done = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot attach a loop device here: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def _umount(path: Path) -> None:
    while subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0:
        subprocess.run(["umount", str(path)], check=True)


def test_the_volume_is_mounted_then_ferry_starts(host: dict[str, Any], loop_device: str) -> None:
    host["env"]["WAL_DEVICE"] = loop_device
    try:
        proc = _start(host)
        assert proc.returncode == 0, explain(proc)
        mnt: Path = host["mnt"]
        source = run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", mnt]).stdout.strip()
        assert source == loop_device
        wal = mnt / "data" / "wal"
        assert wal.is_dir() and (wal.stat().st_uid, wal.stat().st_gid) == (10001, 10001)
        fstab = Path(host["env"]["WAL_FSTAB"]).read_text()
        assert f"{loop_device} {mnt} ext4 defaults,nofail,discard,noatime 0 2" in fstab
        assert _started(host) == [
            "systemctl daemon-reload",
            "systemctl enable --now docker",
            "docker compose -f /etc/ferry/compose.yml up -d",
            "systemctl enable --now ferry-pull.timer",
        ]
        # Run again (a re-run of cloud-init, or by hand): already mounted, fstab unchanged.
        again = _start(host)
        assert again.returncode == 0, explain(again)
        assert Path(host["env"]["WAL_FSTAB"]).read_text() == fstab
    finally:
        _umount(host["mnt"])


def test_an_unformatted_volume_fails_the_boot(host: dict[str, Any], loop_device: str) -> None:
    subprocess.run(["wipefs", "-a", loop_device], check=True, capture_output=True)
    host["env"]["WAL_DEVICE"] = loop_device
    try:
        _assert_refused(host, _start(host), "failed")
    finally:
        _umount(host["mnt"])


def test_a_mount_point_backed_by_something_else_fails_the_boot(
    host: dict[str, Any], loop_device: str
) -> None:
    mnt: Path = host["mnt"]
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    host["env"]["WAL_DEVICE"] = loop_device
    try:
        _assert_refused(host, _start(host), "not from the WAL volume")
    finally:
        _umount(mnt)
