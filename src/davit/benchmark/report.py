"""The benchmark's report as people read it: a Markdown table with the set-up and the speed-ups."""
from __future__ import annotations

from typing import Any, cast

import torch

from ..runtime import Backend, TorchBackend
from ..timing import CEILING_SIZE


def runtime_settings(backend: Backend) -> dict[str, Any]:
    """How a runtime was set up to run: its threads, and spinning or precision."""
    session = getattr(backend, "session", None)
    if session is not None:
        settings = session.get_session_options()
        return {"intra_op_threads": settings.intra_op_num_threads,
                "spinning": settings.get_session_config_entry("session.intra_op.allow_spinning") != "0"}
    if isinstance(backend, TorchBackend):  # PyTorch (the int8 model compiled by inductor)
        between = getattr(backend.model, "float_precision", "fp32")  # of the layers left in floating point
        return {"threads": torch.get_num_threads(), "precision": f"int8 with {between} (torchao PT2E, inductor)"}
    compiled = cast(Any, backend).compiled
    return {"threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT"))}


def format_report(report: dict) -> str:
    """The report as a Markdown table with a header line and the speed-up."""
    c = report["config"]
    lines = [
        f"model {c['model']}, batch {c['batch_size']}, {c['input_size'][0]}x{c['input_size'][1]}, "
        f"{c['dtype']}, {c['mode']}, {_execution(c)}, "
        f"{c['threads']} threads, {c['device']}, {c['repeats']} repeats after {c['warmup']} "
        f"warm-up",
        f"model FLOPs {report['flops_per_image'] / 1e9:.2f} GFLOP per image; matmul ceiling "
        f"{report['ceiling_gflops']:.0f} GFLOP/s ({CEILING_SIZE}^3, "
        f"{'fp32' if c['dtype'] == 'fp32' else 'bf16'})",
        *_cpu_lines(c),
        *_runtime_lines(c),
        "",
        "| model | images/s (median) | min - max | peak memory | GFLOP/s | share of ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        ips = r["images_per_second"]
        memory = r["peak_memory_bytes"]
        shown = "n/a" if memory is None else f"{memory / 2 ** 20:.1f} MiB"
        lines.append(f"| {name} | {ips['median']:.2f} | {ips['min']:.2f} - {ips['max']:.2f} | "
                     f"{shown} | {r['gflops']:.1f} | {100 * r['share_of_ceiling']:.0f}% |")
    lines.append("")
    baseline = report.get("baseline", "davit")
    for name, ratio in report.get("speedups", {}).items():
        lines.append(f"{baseline} / {name}: {ratio['median']:.2f}x (median images/s), "
                     f"{ratio['best']:.2f}x (best step)")
    if not report.get("speedups"):
        lines.append("--no-timm: no reference timing")
    lines += int8_verdicts(report)
    return "\n".join(lines)


def _cpu_lines(config: dict) -> list[str]:
    cpu = config.get("cpu")
    if not cpu:
        return []
    return [f"CPU: {cpu['capability']} kernels, native bf16 {'yes' if cpu['bf16'] else 'no'}, int8 dot products "
            f"{cpu['int8_instructions'] or 'none (no VNNI or AMX)'}"]


def int8_verdicts(report: dict) -> list[str]:
    """For each int8 model timed, whether it is faster than the same runtime's float model here;
    where it is not, and the CPU has no int8 dot-product instructions, it says that this is why."""
    results = report["results"]
    baseline = report.get("baseline", "davit")
    float_names = [name for name in results if not name.endswith("-int8")]
    lines = []
    for name in results:
        if not name.endswith("-int8"):
            continue
        runtime = name.removesuffix("-int8")
        counterpart = baseline if runtime == "torch" else next(
            (other for other in float_names if other == runtime or other.startswith(runtime + "-")), None)
        if counterpart is None:
            continue
        ratio = results[name]["images_per_second"]["median"] / results[counterpart]["images_per_second"]["median"]
        if ratio > 1:
            lines.append(f"{name}: {ratio:.2f}x {counterpart}: int8 pays on this machine")
            continue
        why = ""
        cpu = report["config"].get("cpu")
        if cpu and not cpu["int8_instructions"]:
            why = " (this CPU has no VNNI or AMX int8 dot-product instructions)"
        lines.append(f"{name}: {ratio:.2f}x {counterpart}: int8 is not faster on this machine{why}; "
                     "use the float model")
    return lines


def _runtime_lines(config: dict) -> list[str]:
    """How the runtimes were set up, for the report's header."""
    if not config.get("runtimes"):
        return []
    described = []
    for name, settings in config["runtimes"].items():
        if "spinning" in settings:
            described.append(f"{name} {settings['intra_op_threads']} threads, "
                             f"{'spinning' if settings['spinning'] else 'no spinning'}")
        else:
            described.append(f"{name} {settings['threads']} threads, {settings['precision']}")
    line = f"runtimes timed in blocks of {config['block']} steps: {'; '.join(described)}"
    if config.get("int8"):
        line += f"; int8 calibrated on {config['calibration_images']} {config['calibration']} images"
    return [line]


def _execution(config: dict) -> str:
    """How the PyTorch models ran: eager, or compiled (with frozen weights, for inference)."""
    if not config["compile"]:
        return "eager"
    return "compiled, frozen weights" if config["mode"] == "inference" else "compiled"
