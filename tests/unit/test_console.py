"""The console: the job's lines and marked worker lines on the terminal; everything else in the log file."""

from __future__ import annotations

import logging
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
                                      "grid-t02 | validation at 4.1k tokens: bpb 2.1"]
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
