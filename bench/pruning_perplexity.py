"""How much unstructured magnitude pruning breaks the accuracy benchmark's victim.

    python bench/pruning_perplexity.py [MODEL_DIR]

MODEL_DIR defaults to the dequantized SmolLM2-135M-Instruct that bench/bench_extraction.py and
bench/accuracy.py write under bench/output/models/. Prints the next-token loss and perplexity
on the first 60 built-in probe texts, unpruned and with 30% and 50% of every block weight
matrix zeroed by magnitude and by Wanda, and with 5% Gaussian weight noise then 40% magnitude
pruning (the same changes as the benchmark's derived suspects).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reef_forensics import load_probes

DEFAULT = Path(__file__).parent / "output" / "models" / "SmolLM2-135M-Instruct.Q4_1"


def mean_loss(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids  # type: ignore[operator]
            tokens = ids.shape[1] - 1
            total += model(ids, labels=ids).loss.item() * tokens
            count += tokens
    return total / count


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = list(load_probes().texts[:60])
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import noisy_pruning, wanda_prune

    all_texts = list(load_probes().texts)
    runs = (
        ("none", 0.0),
        ("magnitude", 0.3),
        ("magnitude", 0.5),
        ("Wanda", 0.3),
        ("Wanda", 0.5),
        ("noise 5% + magnitude", 0.4),
    )
    for method, fraction in runs:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        if method == "magnitude":
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if parameter.ndim == 2 and "embed" not in name and "lm_head" not in name:
                        count = int(fraction * parameter.numel())
                        threshold = parameter.abs().flatten().kthvalue(count).values
                        parameter.masked_fill_(parameter.abs() <= threshold, 0.0)
        elif method == "Wanda":
            base = SimpleNamespace(model=model.model, tokenizer=tokenizer)
            wanda_prune(fraction, all_texts)(base, 1)  # type: ignore[arg-type]
        elif method.startswith("noise"):  # the blocks and the (tied) embeddings, as in accuracy.py
            noisy_pruning(fraction, 0.05)(SimpleNamespace(model=model.model), 1)  # type: ignore[arg-type]
        loss = mean_loss(model, tokenizer, texts)
        print(f"{method} pruning {fraction:.0%}: loss {loss:.2f}, perplexity {math.exp(loss):.1f}")


if __name__ == "__main__":
    main()
