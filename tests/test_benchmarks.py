"""The benchmarks run (a benchmark nothing runs rots): each script at tiny sizes, and `make bench` (benchmarks/all.py)
runs them all into one report with the numbers it promises."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_family_throughput_reports_images_per_second_and_share_of_peak(tmp_path):
    from benchmarks.family_throughput import main

    result = main(["--steps", "4", "--batch", "8", "--resolution", "8", "--archs", "dcgan,stylegan-v2,biggan",
                   "--modes", "fp32,bf16cl", "--flop-steps", "2", "--quick-peak", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "family_throughput.json").read_text())["rows"]
    assert set(rows) == {f"{f}/{m}" for f in ("dcgan", "stylegan-v2", "biggan") for m in ("fp32", "bf16cl")}
    assert rows == result["rows"]
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["flops_per_image"] > 0 and row["fraction_of_peak"] > 0
    assert rows["dcgan/fp32"]["speed_vs_dcgan"] == 1.0 and rows["dcgan/fp32"]["speed_vs_fp32"] == 1.0
    # a mode's speed-up is against the same family's fp32 row, and its FLOPs are the fp32 step's
    bf = rows["stylegan-v2/bf16cl"]
    assert bf["speed_vs_fp32"] == bf["images_per_s"] / rows["stylegan-v2/fp32"]["images_per_s"]
    assert bf["flops_per_image"] == rows["stylegan-v2/fp32"]["flops_per_image"]
    peak = result["peak"]
    assert peak["gflops"] == max(peak["nominal_gflops"], peak["measured_gflops"]) > 0
    assert "| stylegan-v2 | bf16cl |" in (tmp_path / "family_throughput.md").read_text()


SCRIPTS = {p.stem for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")} - {"__init__", "report", "peak"}
# where each script runs with tiny sizes: all.py --quick below, or a fixture that already has what it needs
RUN_ELSEWHERE = {"orchestration": "tests/test_pipeline_e2e.py (reads the e2e run's recorded timings)",
                 "serve_load": "tests/test_serving.py (loads the module's running deployment)",
                 "all": "test_every_benchmark_runs_with_tiny_sizes_into_one_report",
                 "scaling_model": "test_the_scaling_model_computes_a_table_per_family"}


def test_the_scaling_model_computes_a_table_per_family(tmp_path):
    """benchmarks/scaling_model.py on the family benchmark's result (FLOPs) and parameter counts it takes itself."""
    from benchmarks.family_throughput import main as families
    from benchmarks.scaling_model import GPUS, main

    families(["--steps", "2", "--batch", "8", "--resolution", "8", "--archs", "dcgan", "--flop-steps", "1",
              "--modes", "fp32,cl", "--quick-peak", "--out", str(tmp_path)])
    out = main(["--families", str(tmp_path / "family_throughput.json"), "--out", str(tmp_path)])
    rows = out["families"]["dcgan"]["rows"]
    assert [r["gpus"] for r in rows] == list(GPUS) and rows[0]["efficiency_no_overlap"] == 1.0
    assert all(a["efficiency_no_overlap"] >= b["efficiency_no_overlap"] for a, b in zip(rows, rows[1:]))
    assert out["families"]["dcgan"]["params_g"] > 0 and "| 64 |" in (tmp_path / "scaling_model.md").read_text()


def test_every_benchmark_script_is_run_by_a_test_and_make_bench_runs_them_all():
    from benchmarks import all as bench

    runs = {m.__name__.rsplit(".", 1)[1] for m in (bench.family_throughput, bench.fid_throughput, bench.s3_store,
                                                   bench.train_throughput, bench.orchestration, bench.stack_floor)}
    assert SCRIPTS <= runs | set(RUN_ELSEWHERE), f"no test runs {sorted(SCRIPTS - runs - set(RUN_ELSEWHERE))}"
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    target = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "benchmarks/all.py" in target, target


@pytest.mark.slow
def test_every_benchmark_runs_with_tiny_sizes_into_one_report(tmp_path):
    """Ray Train (1 worker), the S3 stores, Inception and the families at tiny sizes: that they run and
    write their results, not what the numbers are (the orchestration part: test_pipeline_e2e.py)."""
    from benchmarks.all import main

    out = main(["--quick", "--skip", "orchestration", "--out", str(tmp_path)])
    assert set(out["results"]) == {"family", "train", "fid", "s3", "floor"}
    for name in ("family_throughput", "train_throughput", "fid_throughput", "s3_store", "stack_floor", "bench"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) and (tmp_path / f"{name}.md").read_text()
    report = (tmp_path / "bench.md").read_text()
    for heading in ("## Training loop: plain PyTorch vs Ray Train", "## Families", "## FID feature extraction",
                    "## Local S3 store", "## The stack's floor", "| prefect_again |", "| ray_1w |", "| dcgan | fp32 |", "| dcgan | bf16cl |", "| inception-v3-fid"):
        assert heading in report, report
    rows = out["results"]["train"]["rows"]
    assert rows["plain"]["images_per_s"] > 0 and rows["ray_1w"]["images_per_s"] > 0
    floor = out["results"]["floor"]
    assert set(floor["parts_s"]) == {"cli_import", "prefect_new", "prefect_again", "ray_start", "ray_train_fit",
                                     "ray_stop"} and all(v > 0 for v in floor["parts_s"].values())
    assert floor["floor_s"] == pytest.approx(sum(v for k, v in floor["parts_s"].items() if k != "prefect_new"))
