"""`./deploy/bench`: runs every benchmark, each beside its baseline, and writes the report.

Each benchmark script prints JSON lines: ``{"name", "value", "unit", "baseline",
"baseline_value", "target", ...}``. This runner collects them into
``bench/results/latest.json`` and a Markdown table ``bench/results/latest.md`` with the ratio
to the baseline and the target of each figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

BENCHMARKS = (
    "bench_registry",
    "bench_access",
    "bench_pipeline",
    "bench_load",
    "bench_stream_targets",
    "bench_catalog",
)
RESULTS = Path(__file__).parent / "results"


# How long a benchmark past its time has, after SIGTERM, to stop the servers it started.
STOP_GRACE_SECONDS = 60.0


def run_benchmark(
    module: str, quick: bool, timeout: float, extra: list[str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    command = [sys.executable, "-m", f"bench.{module}"] + (["--quick"] if quick else [])
    return run_command(command + (extra or []), module, timeout)


def run_command(
    command: list[str], module: str, timeout: float, grace: float = STOP_GRACE_SECONDS
) -> tuple[list[dict[str, Any]], str]:
    """The figures the command printed, and what went wrong (empty if nothing). Past its
    ``timeout`` it is asked to stop (SIGTERM: the benchmarks then stop their servers, see
    ``common.stop_cleanly_on_sigterm``) and killed only if it has not within ``grace``
    seconds; the figures it printed before count either way. (``subprocess.run`` killed it
    at once, and then waited for its output to end, which a server it had started kept open:
    for ever.)"""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=grace)
        except subprocess.TimeoutExpired as still_running:
            process.kill()
            process.wait()
            # what it left running may hold the pipes open: the output so far, no more
            stdout, stderr = _text(still_running.stdout), _text(still_running.stderr)
    figures = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                figure = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "name" in figure and "value" in figure:
                figure["benchmark"] = module
                figures.append(figure)
    if timed_out:
        problem = f"{module}: timed out after {timeout:.0f}s (the figures it printed are kept)"
    elif process.returncode != 0:
        last = stderr.strip().splitlines() or ["(no output)"]
        problem = f"{module}: exit {process.returncode}: {last[-1]}"
    else:
        problem = ""
    return figures, problem


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def kept_figures(previous: Path, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The previous report's figures not measured again now, each marked with its run: those
    of the benchmarks not run, and of the parts of a benchmark left out (``--pass
    'bench_pipeline=--only analytics'`` keeps its throughput and lag figures)."""
    if not previous.exists():
        return []
    report = json.loads(previous.read_text())
    stamp = report.get("generated_at")
    again = {(figure["benchmark"], figure["name"]) for figure in measured}
    return [
        {key: value for key, value in figure.items() if key != "ratio"}
        | {"from_run": figure.get("from_run", stamp)}
        for figure in report.get("figures", [])
        if (figure.get("benchmark"), figure.get("name")) not in again
    ]


def ratio(figure: dict[str, Any]) -> float | None:
    value, baseline = figure.get("value"), figure.get("baseline_value")
    if isinstance(value, int | float) and isinstance(baseline, int | float) and baseline:
        return round(value / baseline, 3)
    return None


def markdown_table(figures: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | value | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for figure in figures:
        baseline = figure.get("baseline")
        baseline_text = (
            f"{baseline}: {figure.get('baseline_value')}" if baseline is not None else "-"
        )
        met = {True: "yes", False: "no"}.get(figure.get("met"), "-")  # type: ignore[arg-type]
        figure_ratio = ratio(figure)
        name = figure["name"] + (f" ({figure['endpoint']})" if figure.get("endpoint") else "")
        lines.append(
            f"| {name} | {figure['value']} {figure.get('unit', '')} | {baseline_text} "
            f"| {'-' if figure_ratio is None else figure_ratio} | {figure.get('target', '-')} "
            f"| {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, minutes")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument(
        "--pass",
        dest="passed",
        action="append",
        default=[],
        metavar="MODULE=ARGS",
        help="arguments for one benchmark, e.g. 'bench_pipeline=--only throughput lag'",
    )
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the previous report's figures not measured now (marked with their run)",
    )
    args = parser.parse_args(argv)
    selected = args.only or list(BENCHMARKS)
    extra = {
        module: arguments.split()
        for module, _, arguments in (item.partition("=") for item in args.passed)
    }
    console = Console(stderr=True)
    figures: list[dict[str, Any]] = []
    problems: list[str] = []
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("benchmarks", total=len(selected))
        for module in selected:
            progress.update(task, description=f"running {module}")
            found, problem = run_benchmark(
                module, args.quick, timeout=1800 if not args.quick else 600, extra=extra.get(module)
            )
            figures.extend(found)
            if problem:
                problems.append(problem)
            progress.advance(task)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.keep_others:
        figures += kept_figures(args.out / "latest.json", figures)
    report = {
        "generated_at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [figure | {"ratio": ratio(figure)} for figure in figures],
        "problems": problems,
    }
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(figures)
    (args.out / "latest.md").write_text(
        f"# Benchmark report ({'quick' if args.quick else 'full'}, {report['generated_at']})\n\n"
        + table
        + ("\nProblems:\n" + "\n".join(f"- {p}" for p in problems) + "\n" if problems else "")
    )
    console.print(table)
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
