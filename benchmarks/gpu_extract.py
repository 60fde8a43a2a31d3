"""Stand-alone GPU check: MammoCLIP (EfficientNet-B5) at 1520×912, bf16, CUDA, channels-last.

Prints images/s of the encoder (and of the CPU preprocessing, which feeds it) and the
peak GPU memory. Without ``--weights`` the model gets random fan-in scaled weights, which
time like real ones. Also checks that bf16 features agree with fp32 (cosine similarity).

    python benchmarks/gpu_extract.py [--weights b5-model-best-epoch-7.tar] [--batch-size 16]
        [--batches 8] [--device cuda] [--tiny]    # --tiny --device cpu: a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from client.extractors.base import load_extractor, randomize_


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def encoder_rate(extractor, device: torch.device, batch_size: int, batches: int, bf16: bool) -> float:
    """Images/s of the encoder on pre-normalised random batches already on the device."""
    x = torch.randn(batch_size, 3, *extractor.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        extractor.encode(x)  # warm-up: cuDNN autotuning, allocator
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            extractor.encode(x)
        sync(device)
    return batch_size * batches / (time.perf_counter() - start)


def agreement(extractor, device: torch.device) -> float:
    """Lowest cosine similarity between bf16 and fp32 features of two real-looking images."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1520, 912), dtype=np.uint8) for _ in range(2)]
    x = torch.stack([extractor.preprocess(i) for i in images]).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        full = extractor.encode(x).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = extractor.encode(x).float()
    return float(torch.nn.functional.cosine_similarity(full, half).min())


def preprocess_rate(extractor, n: int = 8) -> float:
    """Images/s of the CPU preprocessing (one thread of the loader)."""
    image = np.random.default_rng(1).integers(0, 256, (1520, 912), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(n):
        extractor.preprocess(image)
    return n / (time.perf_counter() - start)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="Mammo-CLIP .tar; random weights when omitted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="EfficientNet-B0 at 380×228 (smoke run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    extractor = load_extractor("mammoclip", args.weights, tiny=args.tiny)
    if args.weights is None:
        randomize_(extractor.model)
    extractor.model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "input": list(extractor.input_size), "batch_size": args.batch_size,
              "weights": args.weights or "random",
              "images_per_s_bf16": encoder_rate(extractor, device, args.batch_size, args.batches, True),
              "images_per_s_fp32": encoder_rate(extractor, device, args.batch_size, args.batches, False),
              "bf16_vs_fp32_min_cosine": agreement(extractor, device),
              "preprocess_images_per_s_cpu": preprocess_rate(extractor)}
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
