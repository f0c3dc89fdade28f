"""The family throughput benchmark runs (a benchmark nothing runs rots): a few steps of two families,
and the report has the numbers `make bench` promises."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_family_throughput_reports_images_per_second_and_share_of_peak(tmp_path):
    from benchmarks.family_throughput import main

    result = main(["--steps", "4", "--batch", "8", "--resolution", "8", "--archs", "dcgan,stylegan-v2",
                   "--flop-steps", "2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "family_throughput.json").read_text())["rows"]
    assert set(rows) == {"dcgan", "stylegan-v2"} and rows == result["rows"]
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 0 and 0 < row["fraction_of_peak"] < 1.5
    assert rows["dcgan"]["speed_vs_dcgan"] == 1.0
    assert "| stylegan-v2 |" in (tmp_path / "family_throughput.md").read_text()
