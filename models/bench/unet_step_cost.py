"""What one 3D U-Net training step costs, under the variants that could make every U-Net row cheaper.

The issue's 3-hour aim for the 1/64 comparison is about a third of the CPU it takes now (1050
training CPU-minutes, nearly all of it 3D U-Net steps: models/README.md, "Where (d)'s 253 CPU-min
go"), so this asks whether the step itself can get cheaper. One training step (forward, the
benchmark's loss, backward, Adam) of the config's network on a batch of the config's crop size,
under each variant, interleaved round by round so a drifting load hits every variant alike; median
CPU seconds (process time) and wall seconds per step, and each variant's speed-up over the first.

    models/.venv/bin/python models/bench/unet_step_cost.py --variants bf16,bf16-cl,fp32 --threads 2
    models/.venv/bin/python models/bench/unet_step_cost.py --device cuda --variants bf16,bf16-cl,fp32

Variants: `fp32`; `bf16` (autocast; what every Lucchi config trains with where the CPU has AVX512-BF16
or AMX, `amp: auto`, else fp32); `-cl` adds the
channels-last 3D memory format to weights and input; `-compile` wraps the network in torch.compile
(its compile time is reported apart, as "first steps"). The input values do not change the cost of
a dense network, so the crops are random; the loss is train_unet's (`losses.unet_loss`).
`--crops 32x192x192,32x128x128` times every variant at each crop size (default: the config's), the
first crop the baseline. `--profile` also prints the operators that take the time in the first variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from spatialsam.cli import parse_zyx
from spatialsam.config import load_train_config
from spatialsam.device import machine, resolve_amp, use_device
from spatialsam.losses import unet_loss
from spatialsam.train_unet import build_model

VARIANTS = ("fp32", "bf16", "fp32-cl", "bf16-cl", "fp32-compile", "bf16-compile", "bf16-cl-compile")


class _Arm:
    """One variant's network, optimiser and batch, ready to step."""

    def __init__(self, name: str, config: str, seed: int, crop_zyx: tuple[int, int, int] | None = None):
        self.name = name
        cfg = load_train_config(config)
        if crop_zyx is not None:
            cfg = dataclasses.replace(cfg, crop_zyx=crop_zyx)
        torch.manual_seed(seed)
        self.model = build_model(cfg)
        self.x = torch.randn(cfg.batch_size, self.model.cfg.in_channels, *cfg.crop_zyx)
        self.tgt = torch.rand(cfg.batch_size, 1, *cfg.crop_zyx) * 2 - 1
        self.w = torch.ones_like(self.tgt)
        if "-cl" in name:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
            self.x = self.x.contiguous(memory_format=torch.channels_last_3d)
        self.net = torch.compile(self.model) if name.endswith("-compile") else self.model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.bf16 = name.startswith("bf16")
        self.cfg = cfg
        self.steps: list[tuple[float, float]] = []
        self.first_s = 0.0

    def step(self) -> None:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            sdf, fg = self.net(self.x)
        loss, _ = unet_loss(sdf.float(), fg.float(), self.tgt, self.w, self.cfg.sdf_weight, self.cfg.sign_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.x.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, n: int) -> None:
        for _ in range(n):
            c, w = time.process_time(), time.perf_counter()
            self.step()
            self.steps.append((time.process_time() - c, time.perf_counter() - w))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="bf16,bf16-cl,fp32", help=f"comma-separated, the first is the baseline; of {', '.join(VARIANTS)}")
    p.add_argument("--config", default="unet3d_lucchi_learned", help="U-Net training config (network, crop, batch)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per variant (compilation, allocator)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--crops", help="comma-separated ZxYxX crop sizes, each timed with every variant; the first is the "
                                   "baseline (default: the config's crop)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="print the top operators of the first variant")
    a = p.parse_args(argv)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        p.error(f"--variants: unknown {bad} (known: {', '.join(VARIANTS)})")
    if len(set(names)) != len(names):
        p.error("--variants: each variant once")
    for name in ("steps", "reps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: must be >= 1")
    if a.warmup < 0:
        p.error("--warmup: must be >= 0")
    crops: list[tuple[int, int, int] | None] = [None]
    if a.crops:
        try:
            crops = [parse_zyx(c.strip().lower().replace("x", ","), "--crops") for c in a.crops.split(",") if c.strip()]
        except ValueError:
            crops = []
        if not crops or any(min(c) < 1 for c in crops) or len(set(crops)) != len(crops):
            p.error(f"--crops: want distinct ZxYxX sizes of positive integers, e.g. 32x192x192,32x128x128; got {a.crops!r}")
    try:
        dev = use_device(a.device, "--device")
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    arms = [_Arm(n, a.config, 0, c) for c in crops for n in names]
    if len(crops) > 1:
        for arm in arms:
            arm.name += f" {'x'.join(map(str, arm.cfg.crop_zyx))}"
    for arm in arms:
        c = time.process_time()
        for _ in range(a.warmup):
            arm.step()
        arm.first_s = time.process_time() - c
    for _ in range(a.reps):
        for arm in arms:
            arm.timed(a.steps)
    print(f"machine: {machine(dev)} (amp auto trains in {'bf16' if resolve_amp('auto', dev) == 'bf16' else 'fp32'}), load average "
          f"{os.getloadavg()[0]:.1f}, {a.threads} threads, device {dev}")
    cfg = arms[0].cfg
    sizes = ", ".join(str(tuple(arm.cfg.crop_zyx)) for arm in arms[::len(names)])
    print(f"step: {cfg.batch_size} x {sizes} crops ({a.config}), {a.steps} steps x {a.reps} rounds per variant")
    print("| variant | CPU s per step (median) | wall s per step (median) | first steps, CPU s | speed-up (CPU) | speed-up (wall) |")
    print("|---|---|---|---|---|---|")
    base_c = statistics.median(s[0] for s in arms[0].steps)
    base_w = statistics.median(s[1] for s in arms[0].steps)
    for arm in arms:
        mc = statistics.median(s[0] for s in arm.steps)
        mw = statistics.median(s[1] for s in arm.steps)
        print(f"| {arm.name} | {mc:.3f} | {mw:.3f} | {arm.first_s:.1f} | {base_c / mc:.2f}x | {base_w / mw:.2f}x |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            arms[0].timed(a.steps)
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        print(f"\noperators of {arms[0].name}, {a.steps} steps:")
        print(prof.key_averages().table(sort_by=key, row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
