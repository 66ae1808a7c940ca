"""The run's results as a short Markdown table a person reads: arms × accuracy / UF1 / UAR, mean ± std over seeds.

``python -m pipeline.evaluate.summary`` prints it from evaluate's ``metrics.json`` (and the localisation scores of the
``attention`` stage, when present), then where the HTML report is; the ``report`` stage writes the same text to
``report.summary`` (``results/summary.md``); ``make demo`` ends by printing it.

Example:
    >>> metrics = {"run": {"seeds": [0, 1], "protocol": "p", "git_revision": "abc", "params_hash": "h"},
    ...            "ma2mi": {"accuracy": 0.7, "accuracy_std": 0.01, "uf1": 0.6, "uf1_std": 0.02, "uar": 0.65,
    ...                      "uar_std": 0.03, "n": 9, "seeds": 2}}
    >>> print(summary_markdown(metrics).splitlines()[4])
    | ma2mi | 0.700 ± 0.010 | 0.600 ± 0.020 | 0.650 ± 0.030 | 9 | 2 |
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from pipeline.evaluate.metrics import BASELINE_DIFFERENCE, DIFFERENCE, DIFFERENCES, SCORES

__all__ = ["arm_entries", "format_mean_std", "localisation_rows", "main", "summary_markdown"]



def format_mean_std(summary: Mapping, key: str, digits: int = 3, signed: bool = False) -> str:
    """``'0.663 ± 0.016'`` of ``summary[key]`` and ``summary[key + '_std']`` (no ``±`` part when the std is None)."""
    sign = "+" if signed else ""
    std = summary.get(f"{key}_std")
    return f"{summary[key]:{sign}.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def arm_entries(metrics: Mapping) -> dict[str, Mapping]:
    """The arms of evaluate's ``metrics.json``: entries with every score and a sample count ``n``."""
    return {label: entry for label, entry in metrics.items()
            if isinstance(entry, Mapping) and label not in DIFFERENCES and all(s in entry for s in (*SCORES, "n"))}


def summary_markdown(metrics: Mapping, localisation: Mapping | None = None) -> str:
    """The results as Markdown: the arms' pooled LOSO scores, the paired difference, and the localisation scores.

    Args:
        metrics: evaluate's ``metrics.json``.
        localisation: the ``attention`` stage's ``metrics.json``, or None.

    Returns:
        Markdown text, ending in a newline.
    """
    run = metrics.get("run", {})
    lines = [f"# Results: protocol {run.get('protocol', '?')}, seeds {run.get('seeds', '?')}", "",
             "| arm | accuracy | UF1 | UAR | n | seeds |", "|---|---|---|---|---|---|"]
    for label, entry in arm_entries(metrics).items():
        lines.append(f"| {label} | " + " | ".join(format_mean_std(entry, s) for s in SCORES)
                     + f" | {entry['n']} | {entry.get('seeds', '')} |")
    if DIFFERENCE in metrics:
        difference = metrics[DIFFERENCE]
        lines.append("| ma2mi − scratch (paired by seed) | "
                     + " | ".join(format_mean_std(difference, s, signed=True) + _interval(difference, s)
                                  for s in SCORES)
                     + f" |  | {difference.get('seeds', '')} |")
    if BASELINE_DIFFERENCE in metrics:
        difference = metrics[BASELINE_DIFFERENCE]
        lines.append(f"| ma2mi − {difference['baseline']} (best baseline, paired by seed) | "
                     + " | ".join(format_mean_std(difference, s, signed=True) + _interval(difference, s)
                                  for s in SCORES)
                     + f" |  | {difference.get('seeds', '')} |")
    lines += ["", "Pooled LOSO scores, mean ± sample std over seeds, [95% t-interval of the mean difference] "
              f"(git {str(run.get('git_revision', '?'))[:10]}, params {run.get('params_hash', '?')})."]
    efficiency = metrics.get("label_efficiency", {}).get(DIFFERENCE, {})
    for budget, entry in efficiency.items():
        if budget != "all":
            lines += ["", f"With {budget} training clip(s) per class and subject, ma2mi − scratch UF1: "
                          f"{format_mean_std(entry, 'uf1', signed=True)}{_interval(entry, 'uf1')}."]
    if localisation is not None:
        lines += ["", *_localisation_lines(localisation)]
        lines += _position_ablation_lines(localisation.get("position_ablation", {}))
    return "\n".join(lines) + "\n"


def _interval(entry: Mapping, key: str) -> str:
    """`` [low, high]`` of ``entry[key + '_ci95']``, or nothing where there is none (a single seed)."""
    interval = entry.get(f"{key}_ci95")
    return "" if interval is None else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"


def localisation_rows(localisation: Mapping) -> list[tuple[str, Mapping]]:
    """The scored entries of the attention stage's ``metrics.json``: the arms, the paired difference, then chance."""
    entries = {k: v for k, v in localisation.items() if isinstance(v, Mapping) and "mass_in_region" in v}
    last = [k for k in (DIFFERENCE, "chance") if k in entries]
    return [(k, entries[k]) for k in [k for k in entries if k not in last] + last]


def _localisation_lines(localisation: Mapping) -> list[str]:
    if not localisation.get("ground_truth"):
        return [f"Heat-map localisation: {localisation.get('note', 'no ground truth')}"]
    lines = [f"## Heat-map localisation ({localisation.get('method')}) in the true AU region, held-out clips", "",
             "| arm | mass in region | pointing game | pointing game on the map's grid (grid: chance) |",
             "|---|---|---|---|"]
    for label, entry in localisation_rows(localisation):
        signed = label == DIFFERENCE
        name = "ma2mi − scratch" if signed else label
        grid = (f"{format_mean_std(entry, 'grid_pointing_hit_rate')} ({entry['grid']}: {entry['grid_chance']:.3f})"
                if "grid_pointing_hit_rate" in entry else "")
        lines.append(f"| {name} | {format_mean_std(entry, 'mass_in_region', signed=signed)} | "
                     f"{format_mean_std(entry, 'pointing_hit_rate', signed=signed)} | {grid} |")
    return lines


def _position_ablation_lines(ablation: Mapping) -> list[str]:
    """The position-branch ablation (:mod:`pipeline.evaluate.decoupling`) as a Markdown table; none without it."""
    if not ablation:
        return []
    lines = ["", "## MIACNet's position branch ablated on the held-out clips (UF1)", "",
             "| arm | intact | shuffled between subjects | removed |", "|---|---|---|---|"]
    for label, entry in ablation.items():
        changed = [format_mean_std(entry[mode], "uf1") + " (Δ " + format_mean_std(
            entry[f"{mode}_minus_intact"], "uf1", signed=True) + _interval(entry[f"{mode}_minus_intact"], "uf1") + ")"
                   for mode in ("shuffled", "removed")]
        lines.append(f"| {label} | {format_mean_std(entry['intact'], 'uf1')} | {changed[0]} | {changed[1]} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the summary of the run in the current directory (paths from ``params.yaml``); 1 if not run yet."""
    from pipeline.config import load_params

    params = load_params(argv[0] if argv else "params.yaml")
    path = params.paths.evaluate_dir / "metrics.json"
    if not path.is_file():
        print(f"{path}: missing; run `dvc repro` first", file=sys.stderr)
        return 1
    attention = params.attention.dir / "metrics.json"
    localisation = json.loads(attention.read_text()) if attention.is_file() else None
    print(summary_markdown(json.loads(path.read_text()), localisation), end="")
    if params.report.path.is_file():
        print(f"\nThe whole run, one self-contained page: {params.report.path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
