"""``davit benchmark`` runs end to end on a tiny model (the figures themselves are not checked)."""
import importlib.util
import json
import os
import sys

import pytest
import torch

from davit import benchmark
from davit.benchmark import BenchmarkOptions, run
from davit.cli.app import run_subcommand
from davit.dtypes import cpu_has_bf16
from davit.errors import InvalidArgumentError

TINY = '{"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}'
FAST = ["--model", TINY, "--batch-size", "2", "--input-size", "64", "64", "--repeats", "1",
        "--warmup", "1", "--device", "cpu"]


def test_inference_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_subcommand("benchmark", [*FAST, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| model | images/s (median) |" in table and "| davit |" in table
    report = json.loads(out.read_text())
    assert report["config"]["batch_size"] == 2 and report["config"]["mode"] == "inference"
    assert report["flops_per_step"] == 2 * report["flops_per_image"]
    assert report["ceiling_gflops"] > 0
    ours = report["results"]["davit"]
    assert ours["images_per_second"]["median"] > 0 and len(ours["step_seconds"]) == 1
    assert ours["peak_memory_bytes"] > 0
    assert 0 < ours["share_of_ceiling"] < 1
    if importlib.util.find_spec("timm"):
        assert "| timm |" in table and report["speedup_vs_timm"] > 0


def test_train_step_in_bfloat16(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(benchmark, "cpu_has_bf16", lambda: False)  # a CPU that emulates bf16 is refused
    assert run_subcommand("benchmark", [*FAST, "--dtype", "bf16", "--no-timm"]) == 1
    assert "this CPU has no bfloat16 matrix support; use --dtype fp32" in capsys.readouterr().err
    monkeypatch.undo()
    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    assert run_subcommand("benchmark", [*FAST, "--mode", "train", "--dtype", "bf16", "--no-timm",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == ["davit"]
    assert report["flops_per_step"] == 3 * 2 * report["flops_per_image"]
    assert "no reference timing" in capsys.readouterr().out


def test_bad_model_is_one_line_error(capsys):
    assert run_subcommand("benchmark", ["--model", "davit-enormous", "--repeats", "1"]) == 1
    assert "davit benchmark: error:" in capsys.readouterr().err


def test_without_timm_no_timm_works_and_the_reference_asks_for_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    out = tmp_path / "bench.json"
    assert run_subcommand("benchmark", [*FAST, "--no-timm", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["results"]) == ["davit"]
    capsys.readouterr()
    assert run_subcommand("benchmark", FAST) == 1
    assert capsys.readouterr().err == (
        "davit benchmark: error: timing timm's DaViT needs the 'timm' package, which is not "
        "installed: pip install 'davit-toolkit[benchmark]'\n")


def test_options_are_typed_and_checked():
    options = BenchmarkOptions(model=TINY, batch_size=2, input_size=(64, 64), repeats=1, warmup=0,
                               device="cpu", timm=False)
    report = run(options)
    assert report["config"]["input_size"] == [64, 64] and report["config"]["warmup"] == 0
    assert list(report["results"]) == ["davit"]
    for bad in [{"dtype": "fp16"}, {"mode": "eval"}, {"batch_size": 0}, {"input_size": (0, 64)},
                {"warmup": -1}, {"threads": 0}]:
        with pytest.raises(InvalidArgumentError):
            BenchmarkOptions(**bad)


def test_profiler_chatter_is_held_back_and_other_stderr_passes(capfd):
    from davit.timing import _without_profiler_chatter

    with _without_profiler_chatter():
        os.write(2, b"USDT:2026-11-25 12:06:50 28137:28137 SyncActivityProfilerHandler.cpp:39] "
                    b"profiler_start\n")
        os.write(2, b"ERROR:2026-11-25 12:06:51 28137:28137 DeviceProperties.cpp:56] "
                    b"gpuGetDeviceCount failed with code 35\n")
        os.write(2, b"a real warning\n")
    assert capfd.readouterr().err == "a real warning\n"


@pytest.mark.slow
def test_table_script_runs_rows_and_prints_the_markdown_table(tmp_path, capsys):
    from tests.paths import REPO

    spec = importlib.util.spec_from_file_location("bench_table", REPO / "benchmarks" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.main(["--rows", "fp32-b1", "--model", TINY, "--runs", "2", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| case | davit images/s")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| fp32 inference, batch 1"]
    assert all("x** (" in line for line in lines[2:])  # the ratio's range over the two runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32-b1-run1.json", "fp32-b1-run2.json"]


def test_saved_results_reprint_the_tables_of_the_log_and_docs(capsys):
    """The lab log and the documentation's performance page quote the table the saved JSON files give."""
    from tests.paths import REPO

    spec = importlib.util.spec_from_file_location("bench_table", REPO / "benchmarks" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert table.main(["--from", str(REPO / "benchmarks" / "results" / "2026-11-25-cpu")]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == len(table.ROWS)
    log = (REPO / "benchmarks" / "LOG.md").read_text()
    docs = (REPO / "docs" / "performance.md").read_text()
    for row in rows:
        assert row in log
        assert row.rsplit(" | ", 1)[0] + " |" in docs


FLORENCE = json.dumps({"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
                       "num_heads": [1, 2, 4, 8], "window_size": 12, "patch_kernels": [7, 3, 3, 3],
                       "patch_strides": [4, 2, 2, 2], "patch_paddings": [3, 1, 1, 1],
                       "pad_to_stride": False, "channel_attention": "florence2", "head": False})


@pytest.mark.slow
def test_florence2_tower_against_timm_and_transformers_on_the_same_weights(tmp_path, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    import torch

    from davit.benchmark import reference_models
    from davit.checkpoint.resolve import resolve_model
    from davit.model import build_model

    ref = resolve_model(FLORENCE)
    ours = build_model(ref.arch, 0, projection_dim=0).eval()
    options = BenchmarkOptions(model=FLORENCE, reference="all")
    references = reference_models(ref, options, ours)
    assert list(references) == ["timm", "transformers-eager", "transformers-sdpa"]
    x = torch.randn(2, 3, 100, 77)
    with torch.no_grad():
        expected = ours(x)
        for name, model in references.items():
            torch.testing.assert_close(model.eval()(x), expected, atol=1e-4, rtol=1e-4, msg=name)
    out = tmp_path / "bench.json"
    fast = ["--model", FLORENCE, "--batch-size", "1", "--input-size", "64", "64", "--repeats", "1",
            "--warmup", "0", "--device", "cpu"]
    assert run_subcommand("benchmark", [*fast, "--reference", "all", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["speedups"]) == ["timm", "transformers-eager", "transformers-sdpa"]
    assert report["config"]["num_classes"] == 0
    assert "davit / transformers-sdpa:" in capsys.readouterr().out


def test_transformers_reference_is_for_florence2_only(capsys):
    assert run_subcommand("benchmark", [*FAST, "--reference", "transformers"]) == 1
    assert "Florence-2" in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError):
        BenchmarkOptions(reference="onnx")


@pytest.mark.slow
def test_runtimes_side_by_side_with_int8_in_blocks(tmp_path, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "bench.json"
    assert run_subcommand("benchmark", [*FAST, "--no-timm", "--backend", "torch,openvino", "--int8",
                                        "--calibration-images", "4", "--repeats", "2", "--block", "1",
                                        "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    torch_int8 = ["torch-int8"] if importlib.util.find_spec("torchao") else []  # torch's own int8, with torchao
    assert list(report["results"]) == ["davit", *torch_int8, "openvino", "openvino-int8"]
    assert report["baseline"] == "davit" and list(report["speedups"]) == [*torch_int8, "openvino", "openvino-int8"]
    config = report["config"]
    assert config["backends"] == ["torch", "openvino"] and config["int8"] and config["block"] == 1
    assert config["runtimes"]["openvino"] == config["runtimes"]["openvino-int8"] == {
        "threads": 1, "precision": "f32", "performance_hint": "LATENCY"}
    assert config["calibration"] == "random" and config["calibration_images"] == 4
    for name, result in report["results"].items():
        assert len(result["step_seconds"]) == 2 and result["images_per_second"]["median"] > 0
        assert (result["peak_memory_bytes"] is None) == (name != "davit")  # not PyTorch's allocator
    table = capsys.readouterr().out
    assert "| openvino-int8 |" in table and "| n/a |" in table
    assert "openvino 1 threads, f32; openvino-int8 1 threads, f32" in table
    assert "davit / openvino-int8:" in table


def test_blocks_run_each_model_in_turn_after_an_untimed_step():
    from davit.timing import time_in_blocks

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    seconds = time_in_blocks(steps, repeats=5, warmup=1, block=2)
    assert {name: len(s) for name, s in seconds.items()} == {"a": 5, "b": 5}
    # warm-up, then rounds of (untimed + block) per model, the order turning each round
    assert "".join(calls) == "ab" + "aaa" + "bbb" + "bbb" + "aaa" + "aa" + "bb"


@pytest.mark.parametrize(("options", "message"), [
    ({"backends": ("torch", "tensorrt")}, "backends must be distinct names of torch, onnxruntime, openvino"),
    ({"backends": ("torch", "torch")}, "backends must be distinct"),
    ({"int8": True, "mode": "train"}, "int8 models are timed for inference"),
    ({"backends": ("openvino",), "calibration": "images"}, "calibration images are for --int8"),
    ({"backends": ("openvino",), "mode": "train"}, "timed for inference"),
    ({"backends": ("openvino",), "device": "cuda"}, "timed on the CPU"),
    ({"backends": ("onnxruntime",), "dtype": "bf16"}, "no bfloat16 path"),
    ({"backends": ("openvino",), "block": 0}, "block must be a positive integer"),
])
def test_runtime_options_are_checked(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        BenchmarkOptions(**options)


def test_backend_option_takes_commas_and_repeats(capsys):
    with pytest.raises(SystemExit):
        run_subcommand("benchmark", [*FAST, "--backend", "torch,onnx"])
    assert "runtimes are torch, onnxruntime, openvino, got 'torch,onnx'" in capsys.readouterr().err
    assert run_subcommand("benchmark", [*FAST, "--backend", "onnxruntime", "--backend", "torch",
                                        "--dtype", "bf16"]) == 1
    assert "ONNX Runtime's CPU provider has no bfloat16 path" in capsys.readouterr().err


def test_an_empty_calibration_folder_is_a_clear_error(tmp_path, capsys):
    assert run_subcommand("benchmark", [*FAST, "--no-timm", "--backend", "openvino", "--int8",
                                        "--calibration", str(tmp_path)]) == 1
    assert "holds no readable images" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_on_torch_is_timed_beside_the_float_model(tmp_path, capsys):
    pytest.importorskip("torchao")
    out = tmp_path / "bench.json"
    assert run_subcommand("benchmark", [*FAST, "--no-timm", "--int8", "--calibration-images", "4",
                                        "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"]["torch-int8"]["images_per_second"]["median"] > 0
    assert report["config"]["runtimes"]["torch-int8"]["precision"].startswith("int8")
    assert "| torch-int8 |" in capsys.readouterr().out


def _timed(images_per_second: float) -> dict:
    return {"images_per_second": {"median": images_per_second, "min": images_per_second, "max": images_per_second},
            "peak_memory_bytes": None, "gflops": 1.0, "share_of_ceiling": 0.1}


@pytest.mark.parametrize(("int8_instructions", "torch_int8", "expected"), [
    (None, 8.0, "torch-int8: 0.80x davit: int8 is not faster on this machine (this CPU has no VNNI or AMX int8 "
                "dot-product instructions); use the float model"),
    ("AVX512-VNNI", 8.0, "torch-int8: 0.80x davit: int8 is not faster on this machine; use the float model"),
    ("AMX-INT8", 13.0, "torch-int8: 1.30x davit: int8 pays on this machine"),
])
def test_the_report_says_whether_int8_pays_on_this_cpu(int8_instructions, torch_int8, expected):
    from davit.benchmark.report import format_report

    config = {"model": "tiny", "batch_size": 16, "input_size": [224, 224], "dtype": "fp32", "mode": "inference",
              "compile": False, "threads": 2, "device": "cpu", "repeats": 3, "warmup": 1,
              "cpu": {"capability": "AVX2", "bf16": False, "int8_instructions": int8_instructions}}
    report = {"config": config, "flops_per_image": 9e9, "ceiling_gflops": 100.0, "baseline": "davit",
              "results": {"davit": _timed(10.0), "torch-int8": _timed(torch_int8),
                          "openvino": _timed(12.0), "openvino-int8": _timed(15.0)},
              "speedups": {}}
    table = format_report(report)
    assert expected in table.splitlines()
    assert "openvino-int8: 1.25x openvino: int8 pays on this machine" in table
    assert "int8 dot products " + (int8_instructions or "none (no VNNI or AMX)") in table


def test_compiled_inference_is_timed_with_frozen_weights():
    import torch._inductor.config as inductor_config

    from davit.benchmark import make_step
    from davit.benchmark.report import _execution

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(inductor_config.freezing)  # read while torch.compile traces the forward
            return x * 2

    make_step(Probe(), torch.ones(2, 3), torch.zeros(2), "inference", autocast=False, compile_model=True)()
    assert seen == [True] and not inductor_config.freezing  # frozen for the step only
    assert _execution({"compile": True, "mode": "inference"}) == "compiled, frozen weights"
    assert _execution({"compile": True, "mode": "train"}) == "compiled"
    assert _execution({"compile": False, "mode": "inference"}) == "eager"
