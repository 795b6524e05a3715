"""Speed of one correction against the released formulation and the memory lower bound.

``python -m lib_safedenoise.bench speed [--json PATH] [--quick] [--device DEVICE] [--scaling [--sizes M ...]
[--batches B ...] [--structures S ...] [--modes MODE ...] [--queries Q ...]]``

For each latent shape (SD1 4x64x64, SDXL 4x128x128, SD3 16x128x128), bank size (515: the paper's nudity
set, 3000: its CoPro set) and batch (1, 4) it times, best of a few runs:

- ``ours_s``: ``SafeDenoiser.correct_x0`` in the ``reference`` mode (the released computation, gate
  threshold given so no calibration is timed), one streaming pass over the bank;
- ``ours_default_s``: the same call in the default mode (after its one-off per-bank set-up);
- ``released_s``: a straightforward re-statement of the released formulation, which materialises a
  ``B x M x (D + 1)`` tensor (``null`` where its estimated peak, three such float32 tensors, exceeds
  ``RELEASED_LIMIT_BYTES``);
- ``memory_bound_s``: one reduction over the adapted bank in the dtype the engine computes with, the
  least any method reading the bank once can take.

``--device cuda`` times that table on a GPU, as the WebUI runs it: the latents on the device, the bank
stored on the CPU and hosted on the device by the engine (once per bank, not timed), each call timed to
the device's completion (``torch.cuda.synchronize``). The scaling benchmark is CPU only.

With ``--scaling`` it measures instead how a whole sampling's correction grows with the bank (section
``scaling``): banks of ``--sizes`` items at SD1 shape (4x64x64, float16) from two generators, ``uniform``
(i.i.d. N(0, 1) values: nothing is near anything, the worst case for pruning) and ``clustered`` (1,000
centres drawn N(0, 1), items = centre + 0.3 N(0, 1)); for the default mode (with a reference bank of 1,000
items around 100 other centres) and the released code's flat kernel (``reference``). One simulated
trajectory per case: a target ``x0`` (``--queries``: ``near`` the negation bank, a banked item plus ``0.3
N(0, 1)``, where the default mode fires at every step; or ``away``, a reference item plus ``0.3 N(0, 1)``,
an ordinary image, where it does not fire; the flat kernel acts at every step, so it runs ``near`` only),
and at each sigma of a 20-step SD1 schedule ``x = x0 + sigma eps`` and a prediction ``x0_hat = x0 + 0.3
sigma / sqrt(1 + sigma^2) eps'``. Per sigma and summed over the sampling (``sigma: null``) it records the
correction's time with certified pruning (``ours_s``) and with the full pass (``brute_force_s``, same run,
same inputs), the largest certified error of any kernel in the step, whether the correction fired
(``fired``), the process CPU times (``*_cpu_s``: steadier than wall time on a machine shared with other
jobs), the bytes read per bank (``bytes_read`` with pruning, ``brute_force_bytes`` without) and which bound
certified (``bounds``); per case the index's build time and its size against the float16 bank, and the
case's peak resident memory beyond what the process held before the bank existed, over the float16 bank's
bytes (``peak_memory_over_bank``; Linux). Each time is
a single run (a 100,000-item brute-force pass takes seconds).

Timings on a shared machine are noisy; ratios within one run are what to compare. ``--threads 1``
steadies them where other jobs compete for the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.banks.fileformat import write_atomically
from lib_safedenoise.bench.build_speed import measure_build_throughput
from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.kernel import pruning, pruning_index
from lib_safedenoise.core.modes import DEFAULT_MODE, MODES, sd1_alpha_bar

SHAPES = ((4, 64, 64), (4, 128, 128), (16, 128, 128))
BANK_SIZES = (515, 3000)
BATCHES = (1, 4)
QUICK = ((4, 32, 32),), (64,), (1, 2)
RELEASED_LIMIT_BYTES = 8 << 30
SCALING_SHAPE = (4, 64, 64)
SCALING_SIZES = (1000, 10000, 100000)
STRUCTURES = ("uniform", "clustered")
SCALING_MODES = ("default", "reference")
QUERIES = ("near", "away")
SCALING_STEPS = 20
CENTRES = 1000
REFERENCE_SIZE = 1000
REFERENCE_CENTRES = 100  # ten items each: every reference item has neighbours, as ordinary images do
GENERATE_ROWS = 2000  # items generated per float32 chunk (130 MB at SD1 shape)


def released_formulation(x0_hat: torch.Tensor, bank: torch.Tensor, bandwidth: float, scale: float) -> torch.Tensor:
    """The released ``kernel_fast`` computation as written there: distances broadcast to ``B x M x (D+1)``."""
    batch, count = x0_hat.shape[0], bank.shape[0]
    items = bank.reshape(count, -1)
    width = items.shape[1]
    distance = torch.cdist(x0_hat.reshape(1, batch, -1), items[None])[0]
    kernel = -distance.reshape(batch, count, 1).repeat(1, 1, width + 1) / (2.0 * bandwidth ** 2)
    kernel = (kernel.exp() * torch.cat([items, torch.ones(count, 1, device=items.device)], 1)[None]).sum(1)
    unsafe = kernel[:, :-1] / (kernel[:, -1:] + 1e-8)
    return x0_hat - scale * unsafe.reshape(x0_hat.shape)


def released_bytes(batch: int, count: int, width: int) -> int:
    return 3 * batch * count * (width + 1) * 4


def best_times(functions: dict, repeats: int, synchronize=lambda: None) -> dict:
    """Best-of-``repeats`` seconds per function, timed round-robin so a burst of load on a shared machine
    hits every contender alike. ``None`` entries are skipped; ``(fn, runs)`` limits a slow one's runs and
    skips its warm-up (its huge allocations are part of its cost); the others get one warm-up call (caches,
    one-off per-bank set-up). ``synchronize`` waits for queued device work, before and after each timing."""
    best = {}
    for name, entry in functions.items():
        if entry is not None:
            if not isinstance(entry, tuple):
                entry()
            best[name] = float("inf")
    for round_index in range(repeats):
        for name, entry in functions.items():
            fn, runs = entry if isinstance(entry, tuple) else (entry, repeats)
            if entry is None or round_index >= runs:
                continue
            synchronize()
            started = time.perf_counter()
            fn()
            synchronize()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: best.get(name) for name in functions}


def run_case(shape, count: int, batch: int, repeats: int, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(count, *shape, generator=generator)
    latents /= latents.norm(dim=1, keepdim=True)
    bank = LatentBank("bench", latents, channel_normalized=True)
    x0_hat = torch.randn(batch, *shape, generator=generator).to(device)
    x = x0_hat + 3 * torch.randn(batch, *shape, generator=generator).to(device)
    reference = SafeDenoiser([(bank, 1.0)], mode="reference", window=(0, 1), threshold=-1e9)
    default = SafeDenoiser([(LatentBank("bench-raw", latents), 1.0)], window=(0, 1), threshold=0.0)
    view = bank.adapted(device=x0_hat.device, dtype=x0_hat.dtype, size=shape[-2:])
    settings = MODES["reference"]
    released = None
    if released_bytes(batch, count, latents[0].numel()) <= RELEASED_LIMIT_BYTES:
        on_device = latents.to(device)
        released = (lambda: released_formulation(x0_hat, on_device, settings.bandwidth, settings.options["scale"]),
                    max(1, repeats // 2))
    synchronize = torch.cuda.synchronize if x0_hat.is_cuda else (lambda: None)
    times = best_times({"ours_s": lambda: reference.correct_x0(x0_hat, x, 3.0, 0, 1),
                        "ours_default_s": lambda: default.correct_x0(x0_hat, x, 3.0, 0, 1),
                        "memory_bound_s": lambda: view.sum(), "released_s": released}, repeats, synchronize)
    return {"shape": list(shape), "bank_size": count, "batch": batch, **times}


def sd1_sigmas(steps: int = SCALING_STEPS) -> list[float]:
    """The sigmas of a ``steps``-step SD1 sampling: timesteps evenly from 999 to 0, ``sqrt((1 - a) / a)``."""
    timesteps = torch.linspace(999, 0, steps).round().long().tolist()
    return [math.sqrt((1 - sd1_alpha_bar(t)) / sd1_alpha_bar(t)) for t in timesteps]


def centres(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(CENTRES, *shape, generator=generator)


def generate(structure: str, count: int, shape, generator: torch.Generator,
             centre_set: torch.Tensor | None) -> torch.Tensor:
    """A float16 bank of ``count`` items from ``structure``, generated in float32 chunks."""
    bank = torch.empty(count, *shape, dtype=torch.float16)
    for start in range(0, count, GENERATE_ROWS):
        rows = min(GENERATE_ROWS, count - start)
        noise = torch.randn(rows, *shape, generator=generator)
        if structure == "clustered":
            labels = torch.randint(0, len(centre_set), (rows,), generator=generator)
            noise = centre_set[labels] + 0.3 * noise
        bank[start:start + rows] = noise
    return bank


def normalize_in_place(bank: torch.Tensor) -> None:
    """Every position a unit channel vector (the released code's cache format), in chunks."""
    for start in range(0, len(bank), GENERATE_ROWS):
        part = bank[start:start + GENERATE_ROWS].float()
        bank[start:start + GENERATE_ROWS] = part / part.norm(dim=1, keepdim=True)


def bank_reads(record) -> dict:
    """Bytes read per bank name and the largest certified error of one image's step record."""
    reads = {bank["name"]: bank["bytes_read"] for bank in record.banks}
    errors = [bank["certified_error"] for bank in record.banks]
    if record.reference is not None:
        reads[record.reference["name"]] = record.reference["bytes_read"]
        errors.append(record.reference["certified_error"])
    return {"bytes": reads, "error": max(errors)}


def scaling_case(structure: str, mode: str, query: str, bank: LatentBank, reference: LatentBank | None,
                 batch: int, sigmas: list[float], seed: int) -> list[dict]:
    """Per-sigma records and the whole-sampling record of one case (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(bank.latents.shape[1:])
    anchored = bank if query == "near" else reference
    anchors = anchored.latents[torch.randint(0, anchored.count, (batch,), generator=generator)].float()
    x0 = anchors + 0.3 * torch.randn(batch, *shape, generator=generator)
    settings = dict(window=(0, 1), threshold=-1e9) if mode == "reference" else dict(window=(0, 1))
    make = lambda: SafeDenoiser([(bank, 1.0)], mode=mode, reference=reference, **settings)  # noqa: E731
    ours, brute = make(), make()
    started = time.perf_counter()
    for view in [bank.adapted(device="cpu", size=shape[-2:])] + (
            [] if reference is None else [reference.adapted(device="cpu", size=shape[-2:])]):
        pruning_index(view, torch.device("cpu"))
    index_s = time.perf_counter() - started
    with pruning(None):  # one-off per-bank set-up (spread, moments, calibration), on other image ids
        brute.correct_x0(x0, x0, 1.0, 0, 1, image_ids=range(10_000, 10_000 + batch))
    records = []
    for step, sigma in enumerate(sigmas):
        x = x0 + sigma * torch.randn(x0.shape, generator=generator)
        x0_hat = x0 + 0.3 * sigma / math.sqrt(1 + sigma ** 2) * torch.randn(x0.shape, generator=generator)
        started, cpu = time.perf_counter(), time.process_time()
        ours.correct_x0(x0_hat, x, sigma, step, len(sigmas))
        ours_s, ours_cpu = time.perf_counter() - started, time.process_time() - cpu
        with pruning(None):
            started, cpu = time.perf_counter(), time.process_time()
            brute.correct_x0(x0_hat, x, sigma, step, len(sigmas))
            brute_s, brute_cpu = time.perf_counter() - started, time.process_time() - cpu
        pruned = [bank_reads(ours.report.images[image][-1]) for image in range(batch)]
        full = bank_reads(brute.report.images[0][-1])
        records.append({"bank_size": bank.count, "batch": batch, "structure": structure, "mode": mode,
                        "query": query, "sigma": sigma,
                        "fired": any(ours.report.images[image][-1].fired for image in range(batch)),
                        "ours_s": ours_s, "brute_force_s": brute_s,
                        "ours_cpu_s": ours_cpu, "brute_force_cpu_s": brute_cpu,
                        "certified_error": max(p["error"] for p in pruned),
                        "bytes_read": sum(pruned[0]["bytes"].values()), "bytes_read_by_bank": pruned[0]["bytes"],
                        "brute_force_bytes": sum(full["bytes"].values()), "brute_force_bytes_by_bank": full["bytes"]})
    records.append({"bank_size": bank.count, "batch": batch, "structure": structure, "mode": mode,
                    "query": query, "sigma": None, "fired": sum(r["fired"] for r in records),
                    **{key: sum(r[key] for r in records) for key in (
                        "ours_s", "brute_force_s", "ours_cpu_s", "brute_force_cpu_s", "bytes_read",
                        "brute_force_bytes")},
                    "certified_error": max(r["certified_error"] for r in records),
                    "index_build_s": index_s,
                    "index_share": pruning_index(bank.adapted(device="cpu", size=shape[-2:]),
                                                 torch.device("cpu")).nbytes() / (bank.latents.numel() * 2)})
    return records


def memory_status() -> dict | None:
    """This process's resident memory now and its peak since the last ``reset_peak_memory``, in bytes
    (``{"rss": ..., "peak": ...}``, from Linux's ``/proc/self/status``); ``None`` where that is not readable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS:", "VmHWM:")))
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return None


def reset_peak_memory() -> bool:
    """Restart the peak at the current resident memory (Linux 4.0+: ``/proc/self/clear_refs``); False where
    that is not allowed, and the peak then covers the whole process."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def case_memory(before_bank: dict | None, bank_bytes: int) -> dict:
    """What a case held beyond the process before its bank existed: ``peak_memory_over_bank`` = (the case's
    peak resident memory - the resident memory before the bank was generated) / the float16 bank's bytes
    (bank, index, the brute-force run and every transient included); ``None`` where unmeasurable."""
    now = memory_status()
    if before_bank is None or now is None:
        return {"peak_rss_bytes": None, "peak_memory_over_bank": None}
    return {"peak_rss_bytes": now["peak"], "peak_memory_over_bank": (now["peak"] - before_bank["rss"]) / bank_bytes}


def run_scaling(sizes, batches, structures, modes, queries=QUERIES) -> list[dict]:
    """Every scaling case; one bank in memory at a time (a 100,000-item SD1 bank is 3.3 GB). Each case's
    whole-sampling record also gets its memory (``case_memory``)."""
    generator = torch.Generator().manual_seed(0)
    centre_set = centres(SCALING_SHAPE, generator)
    reference = LatentBank("reference", generate("clustered", REFERENCE_SIZE, SCALING_SHAPE,
                                                 torch.Generator().manual_seed(1),
                                                 centres(SCALING_SHAPE, generator)[:REFERENCE_CENTRES]),
                           role="reference")
    sigmas = sd1_sigmas()
    records = []
    for count in sizes:
        for structure in structures:
            before_bank = memory_status()
            latents = generate(structure, count, SCALING_SHAPE, torch.Generator().manual_seed(count), centre_set)
            for mode in modes:
                if mode == "reference":
                    normalize_in_place(latents)
                    bank = LatentBank(f"{structure}-{count}", latents, channel_normalized=True)
                else:
                    bank = LatentBank(f"{structure}-{count}", latents)
                for query in [q for q in queries if mode == "default" or q == "near"]:
                    for batch in batches:
                        measured = reset_peak_memory()
                        records += scaling_case(structure, mode, query, bank,
                                                reference if mode == "default" else None, batch, sigmas,
                                                seed=batch)
                        records[-1].update(case_memory(before_bank if measured else None, latents.numel() * 2))
                        print(scaling_table(records[-1:]), flush=True)
                bank.release()
                del bank  # its index goes with it, before the next bank's is built
            del latents
    return records


def scaling_table(records: list[dict]) -> str:
    lines = []
    for r in records:
        sigma = "all" if r["sigma"] is None else f"{r['sigma']:.3f}"
        lines.append(f"{r['structure']:>9} {r['mode']:>9} {r['query']:>4} M={r['bank_size']:>6} B={r['batch']} "
                     f"sigma={sigma:>6} fired {int(r['fired']):>2} "
                     f"ours {r['ours_s']:8.3f}s brute {r['brute_force_s']:8.3f}s "
                     f"x{r['brute_force_s'] / r['ours_s']:5.1f} (cpu x{r['brute_force_cpu_s'] / r['ours_cpu_s']:5.1f}) err {r['certified_error']:.1e} "
                     f"read {r['bytes_read'] / 1e6:9.1f} MB (brute {r['brute_force_bytes'] / 1e6:9.1f} MB)"
                     + (f" memory {r['peak_memory_over_bank']:.2f}x bank" if r.get("peak_memory_over_bank") else ""))
    return "\n".join(lines)


def table(cases: list[dict]) -> str:
    head = (f"{'shape':>11} {'M':>5} {'B':>2} {'ours ms':>9} {'default ms':>10} {'released ms':>11} "
            f"{'bound ms':>9} {'released/ours':>13} {'ours/bound':>10}")
    lines = [head, "-" * len(head)]
    for c in cases:
        released = c["released_s"]
        released_ms = "n/a (memory)" if released is None else f"{1e3 * released:.1f}"
        speedup = "-" if released is None else f"{released / c['ours_s']:.1f}x"
        lines.append(f"{'x'.join(map(str, c['shape'])):>11} {c['bank_size']:>5} {c['batch']:>2} "
                     f"{1e3 * c['ours_s']:>9.2f} {1e3 * c['ours_default_s']:>10.2f} {released_ms:>11} "
                     f"{1e3 * c['memory_bound_s']:>9.2f} {speedup:>13} {c['ours_s'] / c['memory_bound_s']:>9.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_safedenoise.bench speed", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="one small shape (a smoke test)")
    parser.add_argument("--scaling", action="store_true", help="the big-bank scaling benchmark instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SCALING_SIZES), help="scaling: bank sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="scaling: batch sizes")
    parser.add_argument("--structures", nargs="+", choices=STRUCTURES, default=list(STRUCTURES),
                        help="scaling: bank generators")
    parser.add_argument("--modes", nargs="+", choices=SCALING_MODES, default=list(SCALING_MODES),
                        help="scaling: modes")
    parser.add_argument("--queries", nargs="+", choices=QUERIES, default=list(QUERIES),
                        help="scaling: where the simulated sampling heads (near the negation bank, or away)")
    parser.add_argument("--device", default="cpu", help="where the latents live for the main table, e.g. cuda "
                        "(default cpu; the scaling benchmark runs on the CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice); on a "
                        "busy shared machine 1 thread gives the steadiest numbers")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"engine_version": ENGINE_VERSION, "default_mode": DEFAULT_MODE, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "device": "cpu" if args.scaling else args.device}
    if args.device != "cpu":
        result["device_name"] = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    if args.scaling:
        result["scaling"] = run_scaling(args.sizes, args.batches, args.structures, args.modes, args.queries)
        print(scaling_table([r for r in result["scaling"] if r["sigma"] is None]))
    else:
        shapes, sizes, batches = QUICK if args.quick else (SHAPES, BANK_SIZES, BATCHES)
        result["cases"] = [run_case(shape, count, batch, 2 if args.quick else 5, args.device)
                           for shape in shapes for count in sizes for batch in batches]
        result["bank_build"] = measure_build_throughput(**({"images": 8} if args.quick else {}))
        print(table(result["cases"]))
    if args.json:
        write_atomically(args.json, json.dumps(result, indent=2).encode("utf-8"))
    return 0
