"""``Stack.down`` signals only the processes its ``up`` started (issue 11, class 11).

A pid file outlives its process: once the server or a worker has exited, the pid may name any other
process. ``down`` must leave such a process alone, and still stop the ones the stack did start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from emotion_cli.stack import Stack
from emotion_core.processes import pid_alive


@pytest.fixture
def unrelated():
    """A live process the stack never started, leading its own process group (as a daemon would)."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def still_running(process: subprocess.Popen) -> bool:
    time.sleep(0.3)  # down() would have sent SIGTERM by now
    return process.poll() is None


@pytest.mark.parametrize("record", ["bare-pid", "wrong-start-time", "other-port"])
def test_down_leaves_an_unrelated_process_alone(tmp_path, unrelated, record):
    stack = Stack(port=4321, state_dir=tmp_path)
    started = psutil.Process(unrelated.pid).create_time()
    content = {
        "bare-pid": str(unrelated.pid),  # what older stacks wrote
        "wrong-start-time": json.dumps({"pid": unrelated.pid, "started": started - 100, "port": 4321}),
        "other-port": json.dumps({"pid": unrelated.pid, "started": started, "port": 4200}),
    }[record]
    (tmp_path / "server.pid").write_text(content)

    stopped = stack.down()

    assert still_running(unrelated), f"down() killed an unrelated process ({record})"
    assert stopped == []
    assert not (tmp_path / "server.pid").exists()  # the stale pid file is gone


def test_down_still_stops_what_the_stack_started(tmp_path):
    stack = Stack(port=4321, state_dir=tmp_path)
    pid = stack._start("server", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert stack._start("server", ["never-run"]) == pid  # a live process of ours is reused, not started again

    stopped = stack.down()

    assert stopped == [f"server (pid {pid})"]
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
