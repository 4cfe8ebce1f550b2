"""How much training memory does DiffewS's bank-replaying gradient checkpointing save, at what time? One run.

One DiffewS training forward and backward (batch 1: one query, one support; frozen-VAE posterior samples; MSE of
the UNet output to -z_mask) is run plain and with `DiffewsNet.enable_gradient_checkpointing()` (diffusers' block
checkpointing through `kv_fusion.bank_checkpointing`, which replays the KV bank when a block is recomputed), on
the same weights and inputs, alternating, after one warm-up each. Measured:
  kept for backward  bytes of the tensors autograd keeps for backward outside checkpointed regions (unique storages,
                     parameters excluded; counted with torch.autograd.graph.saved_tensors_hooks): the activation
                     memory of a training step on any device
  peak memory        on CUDA, torch.cuda.max_memory_allocated over the step
  time               median seconds per forward + backward
  gradients          max |difference| between the two sides' UNet gradients (the replay makes them the same)
Last line: `diffews_checkpointing: kept-for-backward bytes checkpointed/plain = R (target <= 0.5)`; JSON with every
figure.

    python bench/diffews_checkpointing.py                    # CPU: shipped toy SD, 64 px, fp32
    python bench/diffews_checkpointing.py --full-size        # SD 2.1 architecture, random weights, 512 px (GPU, bf16)
    python bench/diffews_checkpointing.py --full-size --size 256 --repeats 1   # the same architecture on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from diffews import GIB, TOY_SD, build_models, episode_pixels, quiet, sync  # noqa: E402

from maskforge.models.device import resolve_device
from maskforge.models.diffews.codec import encode
from maskforge.models.diffews.network import DiffewsNet


class KeptBytes:
    """Counts the bytes of the distinct non-parameter storages autograd saves for backward while active."""

    def __init__(self, net: DiffewsNet) -> None:
        """Skip the storages of `net`'s parameters (weights saved by matmuls are no activation memory)."""
        self.skip = {p.untyped_storage().data_ptr() for p in net.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Record the tensor's storage; keep the tensor itself (the hook only counts)."""
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        """Bytes of the distinct storages recorded."""
        return sum(self.seen.values())


def step(net: DiffewsNet, latents: tuple[torch.Tensor, ...], autocast: torch.dtype | None, device) -> dict:
    """One forward and backward; returns seconds, kept-for-backward bytes, peak CUDA GiB and the UNet gradients."""
    q, s, m, z_mask = latents
    net.zero_grad(set_to_none=True)
    counter = KeptBytes(net)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = -net(q, s, m)
        loss = F.mse_loss(out.float(), -z_mask)
    loss.backward()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    grads = {n: p.grad.detach().float().clone() for n, p in net.unet.named_parameters() if p.grad is not None}
    return {"seconds": seconds, "kept_bytes": counter.total, "peak_gib": peak, "grads": grads, "loss": loss.item()}


def main() -> None:
    """Parse arguments, run both sides alternately, print the figures and the ratio last, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD 2.1 architecture, random weights (GPU)")
    parser.add_argument("--sd", default=str(TOY_SD), help="SD pipeline folder of the default run (the toy SD)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="autocast: bfloat16 on CUDA, none on CPU")
    parser.add_argument("--size", type=int, help="image side (default 64, 512 with --full-size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each side after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench/out/diffews_checkpointing.json", help="where to write the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    device = resolve_device(args.device, "--device")
    autocast = {"bfloat16": torch.bfloat16, "float32": None}[
        args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    ]
    size = args.size or (512 if args.full_size else 64)
    if size % 64 or not 1 <= args.repeats <= 100:
        parser.error(f"--size must be a multiple of 64 (got {size}), --repeats 1 to 100 (got {args.repeats})")
    net, plain, what = build_models(args.full_size, args.sd, device, torch.float32)  # fp32 master weights
    del plain
    net.unet.train()
    query, image, mask, target = episode_pixels(1, size, device, 0, query_mask=True)
    with torch.no_grad():
        latents = encode(net.vae, torch.cat([query, image, mask, target]), sample=True).float().split(1)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device_name}, {what}, {size} px, autocast {autocast}, {torch.get_num_threads()} thread(s)")

    def run(checkpointed: bool) -> dict:
        """One measured step with or without the bank-replaying checkpointing (switched off again after)."""
        if checkpointed:
            net.enable_gradient_checkpointing()
        try:
            return step(net, latents, autocast, device)
        finally:
            net.disable_gradient_checkpointing()

    runs: dict[str, list[dict]] = {"plain": [], "checkpointed": []}
    for i in range(args.repeats + 1):  # the first of each side is the warm-up
        for name in runs:
            result = run(name == "checkpointed")
            if i:
                runs[name].append(result)
    plain, replayed = runs["plain"][-1], runs["checkpointed"][-1]
    grad_diff = max((plain["grads"][n] - g).abs().max().item() for n, g in replayed["grads"].items())
    figures = {}
    for name, results in runs.items():
        figures[name] = {
            "step_s": statistics.median(r["seconds"] for r in results),
            "kept_mib": results[-1]["kept_bytes"] / 2**20,
            "peak_gib": results[-1]["peak_gib"],
            "loss": results[-1]["loss"],
        }
        peak = f", peak {figures[name]['peak_gib']:.2f} GiB" if figures[name]["peak_gib"] is not None else ""
        print(
            f"{name}: kept for backward {figures[name]['kept_mib']:.1f} MiB{peak}, "
            f"{figures[name]['step_s']:.3f} s per forward + backward, loss {figures[name]['loss']:.6f}"
        )
    ratio = figures["checkpointed"]["kept_mib"] / figures["plain"]["kept_mib"]
    time_ratio = figures["checkpointed"]["step_s"] / figures["plain"]["step_s"]
    print(f"largest UNet gradient difference: {grad_diff:.3g}; time checkpointed/plain = {time_ratio:.2f}")
    write_json(
        args.out,
        {
            "device": device_name,
            "model": "sd21-random" if args.full_size else "toy-sd",
            "size": size,
            "autocast": str(autocast),
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            **figures,
            "max_grad_difference": grad_diff,
            "time_ratio": time_ratio,
            "ratio": ratio,
        },
    )
    print(f"diffews_checkpointing: kept-for-backward bytes checkpointed/plain = {ratio:.3f} (target <= 0.5)")


if __name__ == "__main__":
    main()
