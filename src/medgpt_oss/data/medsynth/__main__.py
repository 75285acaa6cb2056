"""Generate the MedSynth data set and print its record counts: ``python -m medgpt_oss.data.medsynth``."""

from __future__ import annotations

import argparse
import json

from medgpt_oss.data.medsynth.generate import ensure_medsynth, generate_medsynth, read_manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m medgpt_oss.data.medsynth",
                                description="Generate the MedSynth data set and print its record counts.")
    p.add_argument("--root", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--force", action="store_true", help="regenerate even if a matching set exists")
    a = p.parse_args(argv)
    kw = dict(seed=a.seed, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, image_size=a.image_size)
    root = (generate_medsynth if a.force else ensure_medsynth)(a.root, **kw)
    print(json.dumps({"root": str(root), **read_manifest(root)["records"]}, indent=2))


if __name__ == "__main__":
    main()
