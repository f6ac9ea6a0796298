"""The console: the job's lines and marked worker lines on the terminal; everything else in the log file."""

from __future__ import annotations

import logging
import os
import sys

from yxanul.console import Console, name_run, say, worker_line


def test_console_shows_events_and_sends_ray_output_to_the_log(tmp_path, capsys):
    log = tmp_path / "runs" / "grid.log"
    noisy = logging.getLogger("yxanul-test-noisy")
    handler = logging.StreamHandler(sys.stderr)  # bound to the terminal before the console starts
    noisy.addHandler(handler)
    try:
        with Console(log):
            name_run("grid-t01", "t01 curriculum=none")
            say("sweep grid: 4 trials")
            print("(RayTrainWorker pid=123, ip=10.0.0.1) " + worker_line("grid-t01", "step 2/16 loss 4.1 1,234 tok/s eta 0m09s"))
            print("\x1b[36m(TrainController pid=7)\x1b[0m " + worker_line("grid-t02", "validation at 4.1k tokens: bpb 2.1"))
            for line in worker_line("grid-t02", "FP8 plan on a card:\n  group  decision\n  head   fp8").splitlines():
                print("(RayTrainWorker pid=123, ip=10.0.0.1) " + line)  # Ray prefixes every line it forwards
            print("(RayTrainWorker pid=124, ip=10.0.0.1) rank 1 chatter")
            print("== Status ==\nCurrent time: ...", file=sys.stderr)
            noisy.warning("Failed to query Ray Train Controller actor state.")
            sys.stdout.write("a partial line without newline")
        assert sys.stdout is not None and handler.stream is sys.stderr  # restored
    finally:
        noisy.removeHandler(handler)
    shown = capsys.readouterr()
    assert shown.out.splitlines() == ["sweep grid: 4 trials",
                                      "t01 curriculum=none | step 2/16 loss 4.1 1,234 tok/s eta 0m09s",
                                      "grid-t02 | validation at 4.1k tokens: bpb 2.1",
                                      "grid-t02 | FP8 plan on a card:", "grid-t02 |   group  decision",
                                      "grid-t02 |   head   fp8"]
    assert shown.err == ""
    text = log.read_text()
    for line in ("sweep grid: 4 trials", "rank 1 chatter", "== Status ==", "Failed to query Ray Train Controller",
                 "yxanul[grid-t01] step 2/16", "a partial line without newline"):
        assert line in text


def test_verbose_console_changes_nothing_and_say_prints_without_a_console(tmp_path, capsys):
    with Console(tmp_path / "x.log", verbose=True):
        print("(RayTrainWorker pid=1) " + worker_line("r", "step 1/2"))
        say("done")
    say("after")
    assert capsys.readouterr().out.splitlines() == ["(RayTrainWorker pid=1) yxanul[r] step 1/2", "done", "after"]
    assert not (tmp_path / "x.log").exists()


def test_worker_print_writes_once_even_where_print_is_patched(capfd, monkeypatch):
    import builtins

    from yxanul.console import worker_print

    def doubled(*args, **kwargs):  # what Ray Train's print patch amounts to: the line twice
        original(*args, **kwargs)
        original(*args, **kwargs)

    original = builtins.print
    monkeypatch.setattr(builtins, "print", doubled)
    worker_print("pulse", "step 2/8 loss 5.5")
    worker_print("pulse", "warning: skipped", err=True)
    out, err = capfd.readouterr()
    assert out == "yxanul[pulse] step 2/8 loss 5.5\n" and err == "yxanul[pulse] warning: skipped\n"


def test_marked_lines_pass_rays_deduplication_whole_and_in_time(tmp_path, capsys, monkeypatch):
    """Ray's driver holds back forwarded lines of different processes that differ only in numbers (5 s window) and
    shows the last one as "[repeated 2x across cluster]": two trials' progress lines were merged that way. Inside a
    Console the marked lines pass at once, each as it was; an unmarked line Ray still holds is printed into the log
    when the console ends, not on the terminal after it."""
    import ray._private.ray_logging as ray_logging
    import ray._private.worker as ray_worker

    from yxanul.console import _NEVER_DEDUP

    monkeypatch.delenv("RAY_DEDUP_LOGS_ALLOW_REGEX", raising=False)
    monkeypatch.setattr(ray_logging, "RAY_DEDUP_LOGS", True)  # the tests' conftest turns it off; jobs have it on
    dedup = ray_logging.LogDeduplicator(5, None, None, _timesource=lambda: 100.0)
    monkeypatch.setattr(ray_logging, "stdout_deduplicator", dedup)
    monkeypatch.setattr(ray_worker, "_worker_logs_enabled", True)

    def batch(pid: int, line: str) -> dict:
        return {"ip": "127.0.0.1", "pid": pid, "job": "01", "is_err": False, "actor_name": "_trial_fn",
                "task_name": None, "lines": [line]}

    unmarked = ["Checkpoint successfully created at: 0001", "Checkpoint successfully created at: 0002"]
    # Ray as it is: the second process's line, equal but for its numbers, is held (printed nowhere yet)
    assert dedup.deduplicate(batch(1, unmarked[0]))[0]["lines"] == [unmarked[0]]
    assert dedup.deduplicate(batch(2, unmarked[1]))[0]["lines"] == []
    marked = [worker_line("grid-t00", "step 8/8 loss 2.1"), worker_line("grid-t01", "step 8/8 loss 2.3")]
    with Console(tmp_path / "job.log"):
        assert dedup.allow_re.pattern.endswith(_NEVER_DEDUP)
        for pid, line in zip((1, 2), marked):
            assert dedup.deduplicate(batch(pid, line))[0]["lines"] == [line]  # at once, whole
    out = capsys.readouterr().out
    assert "Checkpoint" not in out and "repeated" not in out  # the held line went to the log, not the terminal
    log = (tmp_path / "job.log").read_text()
    assert unmarked[1] in log and not dedup.recent
    assert os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] == _NEVER_DEDUP  # for a Ray imported after the console started
