"""Build the quick start's models: a victim, a derivative of it, and an unrelated model.

All three are tiny random-init Llama-style decoders with a tokenizer trained on the built-in
probe texts (there is no model hub here). The derivative is the victim with Gaussian weight
noise (10% of each tensor's spread) and 30% magnitude pruning; the unrelated model has the same
architecture and tokenizer but independent weights, and so do the three reference models that
calibrate the verdict of `reef-forensics check`.

    python examples/make_toy_models.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from reef_forensics import load_probes
from reef_forensics.demo.toy_models import derive, make_model


def main(out: Path) -> None:
    texts = load_probes().texts
    victim = make_model(out / "victim", texts, family="llama", seed=0)
    derive(victim, out / "suspect-derived", noise=0.1, prune=0.3)
    make_model(out / "suspect-unrelated", texts, family="llama", seed=7)
    for seed in (11, 12, 13):  # the independent reference panel that calibrates a verdict
        make_model(out / f"reference-{seed}", texts, family="llama", seed=seed)
    print(f"models written to {out}: victim, suspect-derived, suspect-unrelated, reference-11..13")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_toy_models.py DIR")
    main(Path(sys.argv[1]))
