"""DAVIS label propagation without the model: windowed (ditf) vs dense (the authors' layout), side by side.

    python bench/bench_davis.py                          # 480p at stride 16: 30x54 cells, C=3072
    python bench/bench_davis.py --channels 768 --tiles 4,8,16

One propagation step = one target frame against the first frame plus 7 previous ones (8 context
frames, the steady state of the protocol): cosine affinities, exp(cos/0.1), the ±12-cell window,
top-5 over all context tokens, renormalisation, labels · affinity. The dense path is the authors'
algorithm in numpy float32: an (hw x hw) affinity per context frame times a cached (hw x hw)
neighbourhood mask, top-k over the (n*hw) stacked rows. The windowed path is
ditf_runtime.davis.propagate (target tiles against the context cells their windows reach).
"decode" is the per-frame rest of the protocol (bilinear upsampling to 480x832, min-max, argmax,
nearest resize to 480x854), the same for both. Random features: the timings do not depend on
the values. Time is the best of --repeat runs; peak memory (tracemalloc: numpy allocations) is
measured in a separate run. Not part of CI.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from ditf_runtime.davis.masks import decode_labels
from ditf_runtime.davis.propagation import PropagationSettings, normalized_tokens, propagate


def dense_step(target, sources, labels, radius, topk, temperature, mask):
    """The authors' label_propagation on [h, w, C] normalised tokens and [h, w, L] labels."""
    h, w, channels = target.shape
    hw = h * w
    queries = target.reshape(hw, channels)
    keys = np.stack([s.reshape(hw, channels) for s in sources])  # n x hw x C
    aff = np.exp(np.matmul(queries[None], keys.transpose(0, 2, 1)) / np.float32(temperature))  # n x tar x src
    if radius > 0:
        aff *= mask[None]
    aff = aff.transpose(0, 2, 1).reshape(-1, hw)  # (n * src) x tar
    kth = -np.partition(-aff, topk - 1, axis=0)[topk - 1]
    aff[aff < kth] = 0
    aff /= aff.sum(axis=0, keepdims=True)
    segs = np.concatenate([lab.reshape(hw, -1) for lab in labels]).T  # L x (n * src)
    return (segs @ aff).T.reshape(h, w, -1)


def neighbourhood_mask(h, w, radius):
    rows, cols = np.divmod(np.arange(h * w), w)
    near = (np.abs(rows[:, None] - rows[None]) <= radius) & (np.abs(cols[:, None] - cols[None]) <= radius)
    return near.astype(np.float32)


def measure(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, min(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", default="30x54", help="feature grid h x w (DAVIS 854x480 frames at S=480 give 30x52)"
    )
    parser.add_argument("--channels", type=int, default=3072, help="C (FLUX: 3072)")
    parser.add_argument("--contexts", type=int, default=8, help="context frames: first + n_last_frames")
    parser.add_argument("--labels", type=int, default=4, help="label channels: background + objects")
    parser.add_argument("--radius", type=int, default=12)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--tiles", default="8,16,24", help="windowed tile sizes (cells) to time")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    h, w = (int(v) for v in args.grid.split("x"))
    rng = np.random.default_rng(0)
    maps = [rng.standard_normal((1, args.channels, h, w)).astype(np.float32) for _ in range(args.contexts + 1)]
    tokens = [normalized_tokens(m) for m in maps]
    labels = [rng.dirichlet(np.ones(args.labels), size=(h, w)).astype(np.float32) for _ in range(args.contexts)]
    settings = PropagationSettings(radius=args.radius, topk=args.topk)
    target, sources = tokens[0], tokens[1:]

    mask = neighbourhood_mask(h, w, args.radius)  # built once per video by the authors, so not timed
    rows = []
    dense, seconds, peak = measure(
        lambda: dense_step(target, sources, labels, args.radius, args.topk, 0.1, mask), args.repeat
    )
    rows.append(("dense (authors)", "-", seconds, peak + mask.nbytes, dense))
    for tile in (int(t) for t in args.tiles.split(",")):
        sparse, seconds, peak = measure(lambda: propagate(target, sources, labels, settings, tile=tile), args.repeat)
        rows.append(("windowed", str(tile), seconds, peak, sparse))
    frame = (h * 16, w * 16)
    _, decode_seconds, decode_peak = measure(lambda: decode_labels(dense, frame, (480, 854)), args.repeat)

    print(
        f"grid {h}x{w} cells, C={args.channels}, {args.contexts} context frames, {args.labels} labels, "
        f"radius {args.radius}, top-{args.topk}; best of {args.repeat}"
    )
    header = ("propagation", "tile", "ms/frame", "frames/s", "peak MiB", "max |diff|", "argmax agree")
    print("{:<16} {:>4} {:>9} {:>9} {:>9} {:>11} {:>12}".format(*header))
    for name, tile, seconds, peak, soft in rows:
        diff = float(np.abs(soft - dense).max())
        agree = float(np.mean(soft.argmax(axis=2) == dense.argmax(axis=2)))
        print(
            f"{name:<16} {tile:>4} {1000 * seconds:>9.1f} {1 / seconds:>9.2f} {peak / 2**20:>9.1f} {diff:>11.2e} "
            f"{agree:>12.1%}"
        )
    best = min(rows[1:], key=lambda r: r[2])
    print(
        f"windowed (tile {best[1]}) vs dense: {rows[0][2] / best[2]:.2f}x faster, "
        f"{rows[0][3] / max(best[3], 1):.0f}x less peak memory (dense counts its cached "
        f"{mask.nbytes / 2**20:.0f} MiB mask)"
    )
    print(
        f"decode per frame (upsample to {frame[0]}x{frame[1]}, min-max, argmax, resize to 480x854): "
        f"{1000 * decode_seconds:.1f} ms, peak {decode_peak / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
