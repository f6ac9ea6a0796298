"""yxanul.fatal: a process that dies of a real segmentation fault leaves its stack in the run's marker folder, read
back as one line naming the fault and where the faulting thread was; a process that ends normally leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from yxanul.fatal import describe, marker_path, summary, worker_markers

PLATFORM = Path(__file__).resolve().parents[2] / "platform"


def run_child(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(PLATFORM)!r})
        from yxanul.fatal import recording
        threading.Thread(target=lambda: time.sleep(60), daemon=True, name="writer").start()
        def inner():
            import faulthandler
            {body}
        def outer():
            inner()
        with recording({str(tmp_path)!r}, 3):
            outer()
        print("ended")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_segmentation_fault_is_one_line_with_where_the_faulting_thread_was(tmp_path):
    done = run_child(tmp_path, "faulthandler._sigsegv()")
    assert done.returncode == -11  # the process really died of SIGSEGV
    [log] = tmp_path.glob("rank3-*.fatal")
    text = log.read_text()
    assert "Thread 0x" in text and "Current thread 0x" in text  # every thread's stack, the sleeping one too
    line = summary(str(tmp_path))
    assert line == (f"Fatal Python error: Segmentation fault in <string>:8 (inner) <- <string>:10 (outer); "
                    f"every thread's stack: {log}")
    pid = int(log.stem.split("-")[1])
    assert summary(str(tmp_path), rank=3, pid=pid) == line
    assert summary(str(tmp_path), rank=0) is None and summary(str(tmp_path), rank=3, pid=pid + 1) is None


def test_a_process_that_ends_normally_leaves_no_file_and_no_line(tmp_path):
    done = run_child(tmp_path, "pass")
    assert done.returncode == 0 and done.stdout == "ended\n"
    assert list(tmp_path.iterdir()) == []
    assert summary(str(tmp_path)) is None and summary(None) is None and summary(str(tmp_path / "missing")) is None


def test_describe_without_a_python_frame_or_a_current_thread():
    assert describe("Fatal Python error: Aborted\n\nCurrent thread 0x00007f (most recent call first):\n"
                    "  <no Python frame>\n") == "Fatal Python error: Aborted in a thread with no Python frame"
    assert describe("Fatal Python error: Bus error\n") == "Fatal Python error: Bus error"
    assert describe("") == "the process died"
    long = ('Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n'
            '  File "/usr/lib/python3.12/site-packages/torch/profiler/profiler.py", line 812 in stop\n'
            '  File "/repo/platform/yxanul/profiling.py", line 121 in profiled\n'
            '  File "/repo/platform/yxanul/train/loop.py", line 555 in _profiled_step\n')
    assert describe(long) == ("Fatal Python error: Segmentation fault in profiler/profiler.py:812 (stop) <- "
                              "yxanul/profiling.py:121 (profiled)")
    # Python 3.12 marks a fault inside the garbage collector above the frame whose allocation ran it (GPU, 2026-12-07)
    collecting = ('Fatal Python error: Segmentation fault\n\nCurrent thread 0x7f8d548fd6c0 (most recent call first):\n'
                  '  Garbage-collecting\n'
                  '  File "/tmp/repo/platform/yxanul/data/loader.py", line 161 in units\n'
                  '  File "/tmp/repo/platform/yxanul/data/loader.py", line 166 in _bucket_rows\n'
                  '  File "/tmp/repo/platform/yxanul/data/loader.py", line 144 in <genexpr>\n\n'
                  'Thread 0x00007f89fbfff6c0 (most recent call first):\n  <no Python frame>\n')
    assert describe(collecting) == ("Fatal Python error: Segmentation fault in the garbage collector, in "
                                    "data/loader.py:161 (units) <- data/loader.py:166 (_bucket_rows)")
    assert describe("Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n"
                    "  Garbage-collecting\n  <no Python frame>\n") == (
        "Fatal Python error: Segmentation fault in the garbage collector, in a thread with no Python frame")


def test_a_dead_training_worker_line_gets_its_fatal_error(tmp_path):
    """jobs.train's "training worker rank 1 (pid N) died" line, plus that rank's fatal error where it wrote one."""
    from yxanul.errors import WorkerDeath
    from yxanul.train.launch import _with_fatal_error

    death = WorkerDeath(rank=1, pid=4242, node="10.0.0.7", why="Worker unexpectedly exits")
    died = "training worker rank 1 (pid 4242, node 10.0.0.7) died: Worker unexpectedly exits"
    assert str(death) == died
    assert _with_fatal_error(death, str(tmp_path)) == died  # nothing written: a SIGKILL
    (tmp_path / "rank0-4242.fatal").write_text("Fatal Python error: Aborted\n")  # another rank's: not this one
    assert _with_fatal_error(death, str(tmp_path)) == died
    log = tmp_path / "rank1-4242.fatal"
    log.write_text("Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n"
                   '  File "/x/yxanul/model.py", line 184 in forward\n')
    assert _with_fatal_error(death, str(tmp_path)) == (
        f"{died}; Fatal Python error: Segmentation fault in yxanul/model.py:184 (forward); every thread's stack: {log}")
    assert _with_fatal_error(death, None) == died
    unknown = WorkerDeath(rank=1, pid=None, node=None, why="Worker unexpectedly exits")  # Ray named no pid
    assert _with_fatal_error(unknown, str(tmp_path)) == "training worker rank 1 died: Worker unexpectedly exits"


def test_worker_markers_are_read_by_rank_and_a_half_written_one_is_skipped(tmp_path):
    assert worker_markers(str(tmp_path / "missing")) == {} and worker_markers(None) == {}
    marker_path(tmp_path, 0).write_text('{"pid": 100, "rank": 0, "event": "start"}')
    marker_path(tmp_path, 1).write_text('{"pid": 10')  # a crash while writing (the loop writes atomically, a user may not)
    (tmp_path / "rank2.json").write_text('{"pid": 300}')  # no rank: not a marker of this format
    assert worker_markers(str(tmp_path)) == {0: {"pid": 100, "rank": 0, "event": "start"}}
    assert marker_path(tmp_path, 3) == tmp_path / "rank3.json"


def test_latest_reads_the_rank_s_latest_process_only(tmp_path):
    """A restarted trial's later death is not blamed on its earlier process's fault."""
    (tmp_path / "rank0-100.fatal").write_text("Fatal Python error: Segmentation fault\n")
    assert summary(str(tmp_path), rank=0, latest=True) is None  # no marker: which process was last is unknown
    (tmp_path / "rank0.json").write_text('{"pid": 200, "rank": 0}')
    assert summary(str(tmp_path), rank=0, latest=True) is None  # process 200 wrote nothing (e.g. SIGKILL)
    (tmp_path / "rank0.json").write_text('{"pid": 100, "rank": 0}')
    assert summary(str(tmp_path), rank=0, latest=True).startswith("Fatal Python error: Segmentation fault; ")


def test_a_recording_inside_one_to_the_same_file_leaves_it_to_the_outer_one(tmp_path):
    """An in-process sweep trial records from its start and its training loop again (same process, rank, file): a
    fault after the loop's recording ended, still in the trial (opening the next MLflow run), lands in the file."""
    done = run_child(tmp_path, f"""
            with recording({str(tmp_path)!r}, 3):
                pass
            faulthandler._sigsegv()""")
    assert done.returncode == -11
    [log] = tmp_path.glob("rank3-*.fatal")
    assert summary(str(tmp_path), rank=3) == ("Fatal Python error: Segmentation fault in <string>:11 (inner) <- "
                                              f"<string>:13 (outer); every thread's stack: {log}")


def test_the_dead_process_is_the_one_ray_names():
    """Ray's ActorDiedError (as Ray 2.60 wrote it on an H100, 2026-12-07) names the dead process's pid; other errors
    name none."""
    from yxanul.sweep.records import dead_pid

    text = ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ImplicitFunc\n\tactor_id: d7be65a278ce2d2c317d56b401000000\n\tpid: 7680\n"
            "\tnamespace: 0d5b55b7-3372-4be9-a5c2-f5a73e32d7bc\n\tip: 127.0.0.1\n"
            "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR")
    assert dead_pid(text) == 7680
    assert dead_pid("ValueError: bad value\n\tpid: 12") is None and dead_pid("") is None
    assert dead_pid("The actor died unexpectedly before finishing this task.\n\tclass_name: X") is None
