"""Tiled vs whole-image ESRGAN upscaling: time and peak memory of a Real-ESRGAN x4plus-sized RRDBNet (64 features,
23 blocks, random weights: the cost does not depend on the values) on one image, each way in its own process so
that each peak is its own.

    python benchmarks/upscale_tiles.py --size 128 --tile 64 --overlap 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(size: int, tile: int, overlap: int, device: str) -> dict:
    import torch

    from guardforge.engine.esrgan import RRDBNet, build_network
    from guardforge.engine.tiling import run_tiled

    torch.manual_seed(0)
    net, arch = build_network(RRDBNet(3, 3, 64, 23, 32, 2).state_dict())
    net = net.to(device)
    image = torch.rand(1, 3, size, size, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.inference_mode():
        out = run_tiled(net, image, arch.scale, tile, overlap)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result = {"size": size, "tile": tile, "overlap": overlap, "seconds": round(elapsed, 2),
              "out": list(out.shape[-2:]), "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    if device.startswith("cuda"):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() // 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.size, args.tile, args.overlap, args.device)))
        return
    for tile in (0, args.tile):
        done = subprocess.run([sys.executable, __file__, "--one", "--size", str(args.size), "--tile", str(tile),
                               "--overlap", str(args.overlap), "--device", args.device],
                              capture_output=True, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
