"""``python -m lib_safedenoise.bench {speed,efficacy} [options]``: dispatch to the benchmark's ``main(argv)``."""

import importlib
import sys

BENCHMARKS = {"speed": "lib_safedenoise.bench.speed", "efficacy": "lib_safedenoise.bench.efficacy"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m lib_safedenoise.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
