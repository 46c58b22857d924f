"""The local executor with real (small, torch-free) subprocesses."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

from advtui.core.process import live_process, why_not_alive
from advtui.jobs.launcher import LaunchSpec, LocalExecutor, describe_exit, log_tail, stop_process


def wait_exit(executor, handle, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = executor.poll(handle)
        if status is not None:
            return status
        time.sleep(0.02)
    raise AssertionError("the process did not exit")


def test_start_runs_an_argument_list_in_its_own_session_with_output_to_the_log(tmp_path):
    log = tmp_path / "run" / "log.txt"
    script = "import os, sys; print('out', os.environ['EXTRA'], sys.argv[1]); print('err', file=sys.stderr); sys.exit(3)"
    executor = LocalExecutor()
    handle = executor.start(LaunchSpec([sys.executable, "-c", script, "a; rm -rf /tmp/x"], log, {"EXTRA": "yes"}))
    assert handle.create_time == psutil.Process(handle.pid).create_time()
    assert os.getsid(handle.pid) == handle.pid != os.getsid(0)  # its own session: outlives us, no Ctrl-C
    status = wait_exit(executor, handle)
    assert status.code == 3 and not status.ok
    text = log.read_text()
    assert text.startswith("==== ") and "launched: " in text
    # the argument reached the program as one literal string: no shell saw it
    assert "out yes a; rm -rf /tmp/x\n" in text and "err\n" in text
    assert executor.output(handle) == log
    # a second launch appends (a resumed run keeps its earlier output)
    wait_exit(executor, executor.start(LaunchSpec([sys.executable, "-c", "print('second')"], log)))
    assert "out yes" in log.read_text() and log.read_text().count("==== ") == 2


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_sigterm(tmp_path):
    script = ("import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('re' + 'ady', flush=True); time.sleep(60)")  # the log's header shows the script
    executor = LocalExecutor()
    handle = executor.start(LaunchSpec([sys.executable, "-c", script], tmp_path / "log.txt"))
    deadline = time.monotonic() + 20
    while "\nready" not in (tmp_path / "log.txt").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert executor.stop(handle, grace_s=0.5) == "killed"
    assert time.monotonic() - started < 8
    assert wait_exit(executor, handle).code == -signal.SIGKILL


def test_stop_terminates_the_whole_process_group(tmp_path):
    # the job starts a grandchild; SIGTERM to the group ends both
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(p.pid, flush=True); time.sleep(60)")
    executor = LocalExecutor()
    handle = executor.start(LaunchSpec([sys.executable, "-c", script], tmp_path / "log.txt"))
    deadline = time.monotonic() + 20
    grandchild = None
    while grandchild is None and time.monotonic() < deadline:
        lines = [l for l in (tmp_path / "log.txt").read_text().splitlines() if l.isdigit()]
        grandchild = int(lines[0]) if lines else None
        time.sleep(0.02)
    gc = psutil.Process(grandchild)
    assert executor.stop(handle, grace_s=10) == "terminated"
    assert wait_exit(executor, handle).code == -signal.SIGTERM
    gc.wait(timeout=10)
    assert not gc.is_running() or gc.status() == psutil.STATUS_ZOMBIE


def test_adopted_processes_are_watched_by_pid_and_start_time(tmp_path):
    first = LocalExecutor()
    handle = first.start(LaunchSpec([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log.txt"))
    other = LocalExecutor()  # a later scheduler: not the parent
    assert other.attach(handle.pid, handle.create_time + 100) is None  # a reused pid is not ours
    adopted = other.attach(handle.pid, handle.create_time)
    assert adopted is not None and other.poll(adopted) is None
    assert other.stop(adopted, grace_s=10) == "terminated"
    first.reap()  # the real parent collects it; the adopter only sees it gone, code unknown
    assert other.poll(adopted).code is None
    assert first.poll(handle).code == -signal.SIGTERM
    assert stop_process(handle.pid, handle.create_time, 1) == "gone"


def test_process_identity_helpers():
    me = psutil.Process()
    assert live_process(os.getpid(), me.create_time()) is not None
    assert live_process(os.getpid(), me.create_time() - 3600) is None
    assert "now belongs to another process" in why_not_alive(os.getpid(), me.create_time() - 3600)
    assert live_process(None, None) is None and why_not_alive(None, None) == "no pid was recorded"
    assert describe_exit(0) == "exit 0" and describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(143) == "exit 143 (SIGTERM)" and describe_exit(None) == "unknown exit"


def test_log_tail_keeps_the_last_lines_and_the_last_progress_redraw(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "epoch 1 10%\repoch 1 50%\repoch 1 90%\n\n")
    tail = log_tail(log, lines=3).splitlines()
    assert tail == ["line 98", "line 99", "epoch 1 90%"]
    assert log_tail(tmp_path / "missing.txt") == "" and log_tail(None) == ""
