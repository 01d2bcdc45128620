"""Fixtures: a real `sluice server` on a free port, and ADBC connections."""

import os
import subprocess
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import pytest

SLUICE = os.environ.get("SLUICE_BIN", "sluice")


class Server:
    def __init__(self, tmp: Path, *extra: str):
        self.tmp = tmp
        self.listen = tmp / "listen"
        self.log = open(tmp / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                SLUICE,
                "server",
                "--bind",
                "127.0.0.1:0",
                "--listen-file",
                str(self.listen),
                "--state",
                str(tmp / "state"),
                "--target-partitions",
                "2",
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while not self.listen.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice server exited: {(tmp / 'server.log').read_text()}")
            if time.time() > deadline:
                raise RuntimeError("sluice server did not start within 60 s")
            time.sleep(0.05)
        self.address = self.listen.read_text().splitlines()[0]
        self.uri = f"grpc://{self.address}"

    def connect(self, **db_kwargs):
        kwargs = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}
        kwargs.update(db_kwargs)
        return flight_sql.connect(self.uri, db_kwargs=kwargs, autocommit=True)

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture
def conn(server):
    c = server.connect()
    yield c
    c.close()
