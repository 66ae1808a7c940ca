"""Motion amplitude of MA2MI's macro pre-training pairs against the micro clips' onset → apex motion (issue 21).

    python -m benchmarks.motion_amplitude [--params params.yaml] [--pairs 400] [--horizon-s 0.05 0.5 ...]
        [--plot motion_amplitude.png]

MA2MI pre-trains on (frame, future frame) pairs of macro videos ``pretrain.horizon_s`` apart; fine-tuning sees a
micro clip's (onset, apex). If the macro pairs move far more than micro clips do, pre-training teaches motion at
the wrong scale. This measures both on the same footing: TV-L1 optical flow (:func:`pipeline.face.optical_flow.
tvl1_flow`, the micro stage's solver and settings) between the two frames, both at ``model.image_size_px`` as
the models see them, and per pair the 95th and 99th percentiles and the mean of the flow magnitude ``|(u, v)|``
in px (a micro clip moves only its AU regions, a few percent of the crop: the 99th percentile is nearer their
motion, the 95th nearer the still face).
It reads what the pipeline wrote (``paths.macro_dir``'s shards of ``macro.sources``, ``paths.micro_dir``'s
samples: run ``dvc repro pretrain ingest_micro`` first) and prints, per set, the quantiles over pairs of these
numbers, the share of macro pairs whose p95 lies within the micro clips' 5–95% range, and the TV-L1 cost per
pair (wall time, this process, one thread unless torch/OpenCV say otherwise): the cost of caching flow for
pre-training. ``--horizon-s`` takes (min, max) pairs of seconds to try besides ``pretrain.horizon_s``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import load_params
from pipeline.data.macro import FuturePairSampler, MacroFrames, macro_shards
from pipeline.data.micro_table import read_samples
from pipeline.data.tensors import images_to_tensor
from pipeline.face.optical_flow import tvl1_flow


def pair_motion(first: np.ndarray, second: np.ndarray) -> tuple[float, float, float, float]:
    """(p95 |flow| px, p99 |flow| px, mean |flow| px, TV-L1 seconds) of two (H, W, 3) uint8 RGB frames."""
    start = time.perf_counter()
    flow = tvl1_flow(first, second)  # (H, W, 2) px
    seconds = time.perf_counter() - start
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    p95, p99 = np.percentile(magnitude, [95, 99])
    return float(p95), float(p99), float(magnitude.mean()), seconds


def _hwc(image) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (3, S, S) uint8 tensor -> (S, S, 3)


def measure(params, n_pairs: int, horizons: list[tuple[float, float]], seed: int = 0) -> pd.DataFrame:
    """One row per pair: ``set`` (``micro`` or ``macro <min>-<max> s``), ``p95_px``, ``p99_px``, ``mean_px``,
    ``tvl1_s``."""
    size = params.model.image_size_px
    rows = []
    samples = read_samples(params.paths.micro_dir, columns=["onset_image", "apex_image"])
    onsets = images_to_tensor(list(samples["onset_image"]), size)
    apexes = images_to_tensor(list(samples["apex_image"]), size)
    for onset, apex in tqdm(zip(onsets, apexes, strict=True), total=len(onsets), desc="micro clips", unit="clip"):
        rows.append(("micro", *pair_motion(_hwc(onset), _hwc(apex))))
    frames = MacroFrames(macro_shards(params.paths.macro_dir, params.macro.sources), size,
                         params.pretrain.loader.cache_mb)
    for low, high in horizons:
        sources, futures = FuturePairSampler(frames.index, (low, high)).sample(n_pairs, np.random.default_rng(seed))
        for source, future in tqdm(zip(sources, futures, strict=True), total=n_pairs, unit="pair",
                                   desc=f"macro pairs {low:g}-{high:g} s"):
            rows.append((f"macro {low:g}-{high:g} s", *pair_motion(_hwc(frames.image(source)),
                                                                  _hwc(frames.image(future)))))
    return pd.DataFrame(rows, columns=["set", "p95_px", "p99_px", "mean_px", "tvl1_s"])


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per set: pairs, p95, p99 and mean |flow| quantiles over pairs (10/50/90%), the share of pairs within the
    micro clips' p95 range (its 5–95% quantiles), TV-L1 ms per pair."""
    micro = table.loc[table["set"] == "micro", "p95_px"]
    low, high = micro.quantile(0.05), micro.quantile(0.95)
    rows = []
    for name, part in table.groupby("set", sort=False):
        p95, p99, mean = part["p95_px"], part["p99_px"], part["mean_px"]
        rows.append({"set": name, "pairs": len(part),
                     "p95 flow magnitude px, 10/50/90%": "/".join(f"{p95.quantile(q):.2f}" for q in (0.1, 0.5, 0.9)),
                     "p99 flow magnitude px, 10/50/90%": "/".join(f"{p99.quantile(q):.2f}" for q in (0.1, 0.5, 0.9)),
                     "mean flow magnitude px, 10/50/90%": "/".join(f"{mean.quantile(q):.2f}" for q in (0.1, 0.5, 0.9)),
                     "share in micro p95 range": round(float(p95.between(low, high).mean()), 3),
                     "TV-L1 ms per pair": round(1000 * part["tvl1_s"].mean(), 1)})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: str) -> None:
    """Histograms of the per-pair p95 |flow| of every set, on one log-x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    values = table["p95_px"].clip(lower=1e-3)
    bins = np.geomspace(values.min(), values.max(), 40)
    for name, part in table.groupby("set", sort=False):
        axis.hist(part["p95_px"].clip(lower=1e-3), bins=bins, density=True, histtype="step", linewidth=1.5,
                  label=f"{name} ({len(part)})")
    axis.set_xscale("log")
    axis.set_xlabel("95th percentile of |TV-L1 flow| per pair, px at the model's input size")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pairs", type=int, default=400, help="macro pairs per horizon")
    parser.add_argument("--horizon-s", type=float, nargs="*", default=[],
                        help="extra (min, max) horizons in seconds, flattened: 0.02 0.1 0.1 0.3")
    parser.add_argument("--plot", default=None, help="write the histograms to this PNG")
    args = parser.parse_args(argv)
    if len(args.horizon_s) % 2:
        parser.error("--horizon-s takes (min, max) pairs")
    params = load_params(args.params)
    horizons = [tuple(params.pretrain.horizon_s)]
    horizons += [(args.horizon_s[i], args.horizon_s[i + 1]) for i in range(0, len(args.horizon_s), 2)]
    table = measure(params, args.pairs, horizons)
    print(f"{params.model.image_size_px} px, pretrain.horizon_s = {tuple(params.pretrain.horizon_s)}:")
    print(summarise(table).to_markdown(index=False))
    if args.plot:
        plot(table, args.plot)
        print(f"histograms: {args.plot}")


if __name__ == "__main__":
    main()
