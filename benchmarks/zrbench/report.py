"""The outputs of a run: the printed table, the verdict on each target, the JSON and the chart."""

from __future__ import annotations

import json
import math
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

#: The issue's targets, for the pidfd backend and the owned scope.
THROUGHPUT_TARGET = 0.9
LATENCY_TARGET = 0.005
SCALING_TARGET = 1.5
MEMORY_TARGET = 5 * 1024 * 1024
TARGET_KEY = "pidfd/owned"
#: Issue 12's targets: zombiereaper in an event loop against asyncio's own subprocesses (set for
#: Python 3.11), and a lean start.
ASYNCIO_TARGET = 1.2
ASYNCIO_KEY = "zombiereaper[pidfd] wait_async"
IMPORT_TARGET = 2.0
INIT_TARGET = 2.5
INIT_RSS_TARGET = 12 * 1024 * 1024


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in [headers, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def _us(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e6:.0f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x"


def _mb(size: float | None) -> str:
    return "-" if size is None else f"{size / 1024 / 1024:+.2f}"


def _start_ratio(data: dict[str, Any], target: float) -> tuple[float | None, bool | None]:
    """The target row's ratio to its baseline (import or init start-up), and the verdict."""
    ratio = data["contenders"].get(data["target_row"], {}).get("ratio_to_baseline")
    return ratio, None if ratio is None else ratio <= target


def _init_rss(data: dict[str, Any]) -> tuple[float | None, bool | None]:
    """The init's median resident size in an init memory result, and the verdict."""
    rss = data["contenders"].get(data["target_row"], {}).get("median_vm_rss")
    return rss, None if rss is None else rss <= INIT_RSS_TARGET


def _size(size: float | None) -> str:
    return "-" if size is None else f"{size / 1024 / 1024:.1f}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge the issue's targets against ``results``; an absent benchmark is "not run"."""
    verdicts: list[dict[str, Any]] = []

    def judge(name: str, shown: str, met: bool | None) -> None:
        verdicts.append({"target": name, "value": shown, "met": met})

    throughput = results.get("throughput")
    if throughput is not None:
        ratio = throughput["contenders"].get("zombiereaper[pidfd]", {}).get("ratio_to_popen")
        judge(
            f"throughput >= {THROUGHPUT_TARGET}x bare Popen+wait",
            _x(ratio),
            None if ratio is None else ratio >= THROUGHPUT_TARGET,
        )
        ratio = throughput["contenders"].get(ASYNCIO_KEY, {}).get("ratio_to_asyncio")
        judge(
            f"spawn + wait_async >= {ASYNCIO_TARGET}x asyncio subprocess (set for Python 3.11; "
            f"this run: {results['meta']['python']})",
            _x(ratio),
            None if ratio is None else ratio >= ASYNCIO_TARGET,
        )
    latency = results.get("latency")
    if latency is not None:
        level = latency["target_level"]
        p99 = latency["results"].get(TARGET_KEY, {}).get(str(level), {}).get("p99")
        judge(
            f"p99 exit-to-record latency < {LATENCY_TARGET * 1e3:g} ms with {level:,} idle",
            f"{_ms(p99)} ms",
            None if p99 is None else p99 < LATENCY_TARGET,
        )
    scaling = results.get("scaling")
    if scaling is not None:
        ratio = scaling["results"].get(TARGET_KEY, {}).get("ratio", {}).get("wall")
        judge(
            f"cost per child with {scaling['idle_children']:,} idle <= {SCALING_TARGET}x none",
            _x(ratio),
            None if ratio is None else ratio <= SCALING_TARGET,
        )
    memory = results.get("memory")
    if memory is not None:
        readings = memory["results"].get("zombiereaper[pidfd]", {}).get("readings", [])
        growth = readings[-1]["growth"] if readings else None
        cycles = readings[-1]["cycles"] if readings else 0
        judge(
            f"RSS growth < {MEMORY_TARGET // 1024 // 1024} MB over {cycles:,} cycles",
            f"{_mb(growth)} MB",
            None if growth is None else growth < MEMORY_TARGET,
        )
    imports = results.get("import")
    if imports is not None:
        ratio, met = _start_ratio(imports, IMPORT_TARGET)
        judge(f"{imports['target_row']} <= {IMPORT_TARGET}x {imports['baseline']}", _x(ratio), met)
    init = results.get("init")
    if init is not None:
        ratio, met = _start_ratio(init, INIT_TARGET)
        judge(f"{init['target_row']} <= {INIT_TARGET}x {init['baseline']}", _x(ratio), met)
    init_rss = results.get("init_rss")
    if init_rss is not None:
        rss, met = _init_rss(init_rss)
        judge(
            f"init RSS <= {INIT_RSS_TARGET // 1024 // 1024} MB while its program runs",
            f"{_size(rss)} MB",
            met,
        )
    if any(key in results for key in ("throughput", "latency", "scaling", "memory", "zombies")):
        judge("the sigchld backend reported beside pidfd", "in every table", True)
    return verdicts


def render(results: dict[str, Any]) -> str:
    """The whole printed report."""
    meta = results["meta"]
    parts = [
        f"zombiereaper {meta['zombiereaper']} benchmarks, {meta['mode']} run ({meta['started']})",
        f"{meta['cores']} cores {meta['cpu']}, Linux {meta['kernel']}, Python {meta['python']}",
    ]
    if meta["mode"] != "full":
        parts.append("QUICK RUN: a smoke test with scaled-down sizes; the numbers mean little.")
    sections: list[tuple[str, Callable[[Any], list[str]]]] = [
        ("throughput", _render_throughput),
        ("latency", _render_latency),
        ("scaling", _render_scaling),
        ("memory", _render_memory),
        ("zombies", _render_zombies),
        ("import", _render_import),
        ("init", _render_init),
        ("init_rss", _render_init_rss),
    ]
    for key, section in sections:
        if results.get(key) is not None:
            parts += ["", *section(results[key])]
    verdicts = results.get("targets", [])
    if verdicts:
        parts += ["", f"Targets (reaping: {TARGET_KEY.replace('/', ' backend, ')} scope)"]
        if meta["mode"] != "full":
            parts.append(
                "  (quick run: scaled-down sizes, so these are not the issue's conditions)"
            )
        for verdict in verdicts:
            state = {True: "met", False: "MISSED", None: "not measured"}[verdict["met"]]
            parts.append(f"  {state:12} {verdict['target']}: {verdict['value']}")
    return "\n".join(parts)


def _render_throughput(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            name,
            f"{entry['median_seconds']:.3f}",
            f"{entry['children_per_second']:,.0f}",
            _x(entry["ratio_to_popen"]),
            _x(entry.get("ratio_to_asyncio")),
        ]
        for name, entry in data["contenders"].items()
    ]
    lines = [
        f"1. Throughput: {data['children']:,} x {data['program']}, at most {data['window']} "
        f"alive, {data['rounds']} alternating rounds (medians; ratio = Popen (or asyncio) time / "
        "contender time, median of per-round ratios)",
        _table(["contender", "seconds", "children/s", "vs Popen+wait", "vs asyncio"], rows),
        f"asyncio reaps through {data['asyncio_child_watcher']} on this Python.",
    ]
    ratio = data["contenders"].get(ASYNCIO_KEY, {}).get("ratio_to_asyncio")
    if ratio is not None:
        lines.append(
            f"{ASYNCIO_KEY} vs asyncio subprocess: {_x(ratio)} "
            f"(target >= {ASYNCIO_TARGET}x on Python 3.11: {_verdict(ratio >= ASYNCIO_TARGET)})"
        )
    return lines


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def _role(data: dict[str, Any], name: str, target: str) -> str:
    """The target column of a start-up row: the target and its verdict, or what the row is."""
    if name == data["target_row"]:
        return target
    if name == data.get("baseline"):
        return "baseline"
    if name == data.get("reference_row"):
        return "reference"
    return "informational"


def _start_lines(data: dict[str, Any], target: float) -> list[str]:
    _, met = _start_ratio(data, target)
    rows = [
        [
            name,
            _ms(entry["median_seconds"]),
            _ms(entry["p90_seconds"]),
            _x(entry["ratio_to_baseline"]),
            _role(data, name, f"<= {target}x: {_verdict(met)}"),
        ]
        for name, entry in data["contenders"].items()
    ]
    lines = [_table(["command", "median ms", "p90 ms", f"vs {data['baseline']}", "target"], rows)]
    missing = [name for name, cached in data["bytecode_cached"].items() if not cached]
    if missing:
        lines.append(f"warning: no .pyc for {', '.join(missing)}: compiling is in these times.")
    return lines


def _render_import(data: dict[str, Any]) -> list[str]:
    return [
        f"6. Import time: a fresh {data['python']} per sample, {data['rounds']} alternating "
        f"rounds after {data['warmups']} warm-up run(s) that write the .pyc files (medians; "
        "ratio = time / baseline time, median of per-round ratios)",
        *_start_lines(data, IMPORT_TARGET),
    ]


def _render_init(data: dict[str, Any]) -> list[str]:
    return [
        f"7. Init start-up: each init started (not as PID 1) and reaped with its program, "
        f"{data['rounds']} alternating rounds after {data['warmups']} warm-up run(s) (medians; "
        "ratio = time / baseline time, median of per-round ratios)",
        *_start_lines(data, INIT_TARGET),
        f"zombiereaper ran as {data['zombiereaper_found_as']}: "
        f"{' '.join(data['zombiereaper_command'])}",
        *(f"{tool} not measured: {why}." for tool, why in data["skipped"].items()),
    ]


def _render_init_rss(data: dict[str, Any]) -> list[str]:
    _, met = _init_rss(data)
    target = f"<= {INIT_RSS_TARGET // 1024 // 1024} MB: {_verdict(met)}"
    rows = [
        [
            name,
            _size(entry["median_vm_rss"]),
            _size(entry["median_vm_hwm"]),
            _role(data, name, target),
        ]
        for name, entry in data["contenders"].items()
    ]
    return [
        f"8. Init memory: the init's resident size once its program ({' '.join(data['program'])})"
        f" runs, {data['rounds']} reading(s) each, in turns (medians; MB from /proc/PID/status)",
        _table(["init", "VmRSS MB", "VmHWM MB", "target"], rows),
        *(f"{tool} not measured: {why}." for tool, why in data["skipped"].items()),
    ]


def _render_latency(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            key,
            f"{int(level):,}",
            str(entry["samples"]),
            _ms(entry["p50"]),
            _ms(entry["p99"]),
            _ms(entry["max"]),
            str(entry["lost"]),
        ]
        for key, per_level in data["results"].items()
        for level, entry in per_level.items()
    ]
    return [
        "2. Exit-to-record latency: SIGKILL sent -> on_exit runs, with N idle children alive",
        _table(["backend/scope", "idle", "samples", "p50 ms", "p99 ms", "max ms", "lost"], rows),
    ]


def _render_scaling(data: dict[str, Any]) -> list[str]:
    idle = f"{data['idle_children']:,}"
    rows = []
    for key, entry in data["results"].items():
        row = [key]
        for metric in ("wall", "process_cpu", "reaper_thread_cpu"):
            row += [
                _us(entry["none"][metric]),
                _us(entry["idle"][metric]),
                _x(entry["ratio"][metric]),
            ]
        rows.append(row)
    headers = ["backend/scope"]
    for label in ("wall", "CPU", "reaper CPU"):
        headers += [f"{label} 0", f"{label} {idle}", "ratio"]
    lines = [
        f"3. Scaling: cost per spawned and reaped child (us) with 0 and {idle} idle children "
        f"alive (batches of {data['batch']:,} /bin/true, at most {data['window']} alive)",
        _table(headers, rows),
        "wall = elapsed time per child; CPU = this process's CPU time per child (all threads, "
        "plus zombiereaper's relay process); reaper CPU = the reaping thread's alone.",
    ]
    lines += [
        f"scope {scope!r} not measured: this version of zombiereaper has no such scope ({why})."
        for scope, why in data["scopes_missing"].items()
    ]
    return lines


def _render_memory(data: dict[str, Any]) -> list[str]:
    checkpoints = data["checkpoints"]
    rows = []
    for name, entry in data["results"].items():
        by_cycles = {r["cycles"]: r for r in entry["readings"]}
        records = entry["readings"][-1]["registry_records"] if entry["readings"] else None
        rows.append(
            [
                name,
                f"{entry['baseline_rss'] / 1024 / 1024:.1f}",
                *(_mb(by_cycles[c]["growth"]) if c in by_cycles else "-" for c in checkpoints),
                "-" if records is None else f"{records:,}",
            ]
        )
    return [
        "4. Memory: RSS growth (MB) after N spawn/reap cycles, default history, a fresh "
        "interpreter each",
        _table(["contender", "base MB", *(f"{c:,}" for c in checkpoints), "records kept"], rows),
    ]


def _render_zombies(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            backend,
            _ms(entry["on_exit_minus_death"]["max"]),
            _ms(entry["on_exit_minus_death"]["p99"]),
            _ms(entry["on_exit_minus_death"]["p50"]),
            _ms(entry["gone_minus_death"]["max"]),
            _ms(entry["gone_minus_death"]["p99"]),
            _ms(entry["on_exit_minus_kill"]["max"]),
            str(entry["zombies_left"]),
        ]
        for backend, entry in data["results"].items()
    ]
    headers = [
        "backend",
        "max on_exit-death",
        "p99",
        "p50",
        "max /proc gone-death",
        "p99",
        "max on_exit-kill",
        "zombies left",
    ]
    return [
        f"5. Zombie lifetime: {data['burst']:,} children SIGKILLed at once, {data['rounds']} "
        "burst(s) per backend (ms; death = the observer's pidfd turning readable)",
        _table(headers, rows),
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write every number of the run, raw samples included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n", encoding="utf-8")


def write_png(results: dict[str, Any], path: Path, log: Callable[[str], None]) -> bool:
    """Draw the chart; skip it (saying so) when matplotlib is not installed.

    Returns:
        Whether the chart was written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart (pip install 'zombiereaper[bench]')")
        return False
    figure, axes = plt.subplots(3, 3, figsize=(18, 15.5))
    meta = results["meta"]
    figure.suptitle(
        f"zombiereaper {meta['zombiereaper']} ({meta['mode']} run): {meta['cores']} cores "
        f"{meta['cpu']}, Linux {meta['kernel']}, Python {meta['python']}"
    )
    _plot_throughput(axes[0][0], results.get("throughput"))
    _plot_latency(axes[0][1], results.get("latency"))
    _plot_scaling(axes[0][2], results.get("scaling"))
    _plot_memory(axes[1][0], results.get("memory"))
    _plot_zombies(axes[1][1], results.get("zombies"))
    _plot_start(axes[1][2], "6. Import time (lower is better)", results.get("import"))
    _plot_start(axes[2][0], "7. Init start-up (lower is better)", results.get("init"))
    _plot_init_rss(axes[2][1], results.get("init_rss"))
    _plot_targets(axes[2][2], results.get("targets", []))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_throughput(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title("1. Throughput (higher is better)")
    if data is None:
        ax.set_axis_off()
        return
    names = list(data["contenders"])
    values = [data["contenders"][n]["children_per_second"] for n in names]
    bars = ax.barh(names, values, color="tab:blue")
    for bar, name in zip(bars, names, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {data['contenders'][name]['ratio_to_popen']:.2f}x",
            va="center",
        )
    ax.invert_yaxis()
    ax.set_xlabel(f"children/s ({data['children']:,} x /bin/true, <= {data['window']} alive)")
    ax.set_xlim(0, max(values) * 1.2)


def _plot_latency(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title("2. Exit-to-record latency (lower is better)")
    if data is None:
        ax.set_axis_off()
        return
    levels = [str(level) for level in data["levels"]]
    positions = list(range(len(levels)))
    for index, (key, per_level) in enumerate(data["results"].items()):
        color = f"C{index}"
        p99 = [per_level[level]["p99"] * 1e3 for level in levels]
        p50 = [per_level[level]["p50"] * 1e3 for level in levels]
        ax.plot(positions, p99, "s-", color=color, label=key)
        ax.plot(positions, p50, "o:", color=color, alpha=0.6)
    ax.axhline(LATENCY_TARGET * 1e3, color="red", linewidth=0.8, label="target (p99)")
    ax.text(0.99, 0.02, "solid: p99, dotted: p50", transform=ax.transAxes, ha="right")
    ax.set_xticks(positions, [f"{int(level):,}" for level in levels])
    ax.set_yscale("log")
    ax.set_xlabel("idle children alive")
    ax.set_ylabel("SIGKILL -> on_exit (ms)")
    ax.legend(fontsize="x-small", loc="upper left")


def _plot_scaling(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title("3. Cost per reaped child (lower is better)")
    if data is None:
        ax.set_axis_off()
        return
    keys = list(data["results"])
    width = 0.38
    positions = range(len(keys))
    none = [data["results"][k]["none"]["wall"] * 1e6 for k in keys]
    idle = [data["results"][k]["idle"]["wall"] * 1e6 for k in keys]
    ax.bar([p - width / 2 for p in positions], none, width, label="0 idle")
    bars = ax.bar(
        [p + width / 2 for p in positions], idle, width, label=f"{data['idle_children']:,} idle"
    )
    for bar, key in zip(bars, keys, strict=True):
        ratio = data["results"][key]["ratio"]["wall"]
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            _x(ratio),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    labels = []
    for key in keys:
        label = key.replace(" (", "\n(")
        reaper_ratio = data["results"][key]["ratio"]["reaper_thread_cpu"]
        if reaper_ratio is not None:
            label += f"\n(reaper {_x(reaper_ratio)})"
        labels.append(label)
    ax.set_xticks(list(positions), labels, fontsize="x-small", rotation=30, ha="right")
    ax.set_ylabel("wall time per spawn + reap (us)")
    ax.legend(fontsize="small")


def _plot_memory(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title("4. RSS growth over spawn/reap cycles")
    if data is None:
        ax.set_axis_off()
        return
    styles = ["o-", "s--", "^:", "d-."]
    for index, (name, entry) in enumerate(data["results"].items()):
        cycles = [0] + [r["cycles"] for r in entry["readings"]]
        growth = [0.0] + [r["growth"] / 1024 / 1024 for r in entry["readings"]]
        ax.plot(cycles, growth, styles[index % len(styles)], label=name)
    ax.axhline(MEMORY_TARGET / 1024 / 1024, color="red", linewidth=0.8, label="target")
    ax.set_xlabel("cycles")
    ax.set_ylabel("RSS growth (MB)")
    ax.legend(fontsize="small")


def _plot_zombies(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title(f"5. Zombie lifetime, burst of {data['burst']:,} exits" if data else "5.")
    if data is None:
        ax.set_axis_off()
        return
    backends = list(data["results"])
    measures = (
        ("on_exit_minus_death", "on_exit - death"),
        ("gone_minus_death", "/proc gone - death"),
        ("on_exit_minus_kill", "on_exit - kill"),
    )
    width = 0.8 / len(measures)
    for index, (measure, label) in enumerate(measures):
        ax.bar(
            [p + (index - 1) * width for p in range(len(backends))],
            [data["results"][b][measure]["max"] * 1e3 for b in backends],
            width,
            label=f"max {label}",
        )
    ax.set_xticks(list(range(len(backends))), backends)
    ax.set_ylabel("ms")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize="small", loc="upper left")


def _plot_start(ax: Any, title: str, data: dict[str, Any] | None) -> None:
    ax.set_title(title)
    if data is None:
        ax.set_axis_off()
        return
    names = list(data["contenders"])
    values = [data["contenders"][n]["median_seconds"] * 1e3 for n in names]
    colors = ["tab:orange" if n == data["target_row"] else "tab:blue" for n in names]
    bars = ax.barh([textwrap.fill(n, 24) for n in names], values, color=colors)
    for bar, name in zip(bars, names, strict=True):
        ratio = data["contenders"][name]["ratio_to_baseline"]
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {_x(ratio)}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel(f"median ms per fresh process (ratio to {data['baseline']})")
    ax.set_xlim(0, max(values) * 1.2)
    ax.tick_params(axis="y", labelsize="small")


def _plot_init_rss(ax: Any, data: dict[str, Any] | None) -> None:
    ax.set_title("8. Init resident memory (lower is better)")
    if data is None:
        ax.set_axis_off()
        return
    names = list(data["contenders"])
    values = [data["contenders"][n]["median_vm_rss"] / 1024 / 1024 for n in names]
    colors = ["tab:orange" if n == data["target_row"] else "tab:blue" for n in names]
    ax.barh([textwrap.fill(n, 24) for n in names], values, color=colors)
    ax.axvline(INIT_RSS_TARGET / 1024 / 1024, color="red", linewidth=0.8, label="target")
    ax.invert_yaxis()
    ax.set_xlabel("VmRSS while the program runs (MB)")
    ax.tick_params(axis="y", labelsize="small")
    ax.legend(fontsize="small")


def _plot_targets(ax: Any, verdicts: list[dict[str, Any]]) -> None:
    ax.set_axis_off()
    ax.set_title(f"Targets ({TARGET_KEY})")
    lines = []
    for verdict in verdicts:
        state = {True: "met", False: "MISSED", None: "n/a"}[verdict["met"]]
        lines.append(textwrap.fill(f"[{state}] {verdict['target']}:", 58, subsequent_indent="  "))
        lines.append(f"        {verdict['value']}")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9)
