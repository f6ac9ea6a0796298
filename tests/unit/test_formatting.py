"""Numbers as people read them, from the one home of formatting: human counts without exponents or raw
integers, fixed decimals per quantity, signed differences, one time format."""

from __future__ import annotations

import pytest

from yxanul.formatting import bpb, clock, count_or_blank, gib, human_count, percent, ratio, seconds, signed


@pytest.mark.parametrize(("n", "text"), [
    (10_485_760, "10.5M"), (2_621_440, "2.62M"), (20_971_520, "21M"), (7_366_820, "7.37M"), (655_360, "655k"),
    (32_768, "32.8k"), (999_999, "1M"), (999_499, "999k"), (1_000, "1k"), (512, "512"), (0.375, "0.375"),
    (126e6, "126M"), (3.5e9, "3.5B"), (0, "0"), (-2_500_000, "-2.5M")])
def test_human_counts_have_three_significant_digits_and_no_exponent(n, text):
    assert human_count(n) == text
    assert "e+" not in human_count(n) and "e-" not in human_count(n)


def test_fixed_decimals_per_quantity():
    assert bpb(3.016912) == "3.0169" and bpb(None) == ""
    assert signed(-0.04237) == "-0.0424" and signed(0.0038) == "+0.0038" and signed(-0.00001) == "+0.0000"
    assert ratio(0.8301) == "0.830x" and percent(0.4081) == "40.8%" and gib(47.61) == "47.6 GiB"
    assert seconds(56.44) == "56.4 s" and seconds(74.0) == "74.0 s" and seconds(1234.56) == "1,234.6 s"
    assert clock(245) == "4m05s" and clock(3725) == "1h02m" and clock(float("inf")) == "?"
    assert count_or_blank(None) == "" and count_or_blank(7_366_820.0) == "7.37M"


def test_paths_in_committed_text_are_relative_or_shortened(tmp_path, monkeypatch):
    from yxanul.formatting import shown_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    text = (f"tracking.uri=sqlite:///{tmp_path}/docs/mlflow.db data.output_dir=/tmp/gpu-box/data "
            f"--out {tmp_path}/docs ['/srv/x/y/z.parquet'] docs/results/a.db http://127.0.0.1:5000/#/x")
    assert shown_paths(text) == ("tracking.uri=sqlite:///docs/mlflow.db data.output_dir=.../gpu-box/data --out docs "
                                 "['.../y/z.parquet'] docs/results/a.db http://127.0.0.1:5000/#/x")


def test_a_timestamp_reads_back_to_its_second():
    from yxanul.formatting import parse_timestamp, timestamp

    assert timestamp(1_796_616_270.7) == "2026-12-07T04:04:30Z"
    assert parse_timestamp("2026-12-07T04:04:30Z") == 1_796_616_270.0
    assert parse_timestamp(None) is None and parse_timestamp("") is None and parse_timestamp("04:04:30") is None
