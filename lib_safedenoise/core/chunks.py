"""Float32 chunks of a half-precision bank, widened into one reused buffer.

Every sweep over a bank widens rows to float32 a chunk at a time (a float copy of a whole large bank would
not fit beside it). Widening each chunk into a fresh tensor (``chunk.float()``) costs memory that is never
given back on CPU: glibc's allocator raises its mmap threshold after the first large free, so later 16 MB
chunks come from the heap, the small results kept between them pin it, and a process that has swept a
1.5 GB float16 bank twice holds 6 GB more than before (measured, 50,000 SD1 latents; an environment that
sets ``MALLOC_MMAP_THRESHOLD_`` avoids it, a WebUI process does not). ``Widener`` writes every chunk into
one buffer instead, so a sweep allocates one chunk's worth, once.
"""

from __future__ import annotations

from typing import Iterator

import torch


class Widener:
    """Widens row chunks into one reused float32 buffer (grown to the largest chunk seen)."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` as float32: a view of the buffer, valid until the next call; ``rows`` itself when it is
        float32 already. Either way the result must not be modified in place."""
        if rows.dtype == torch.float32:
            return rows
        size = rows.numel()
        if self._buffer is None or self._buffer.numel() < size or self._buffer.device != rows.device:
            self._buffer = torch.empty(size, dtype=torch.float32, device=rows.device)
        return self._buffer[:size].view(rows.shape).copy_(rows)


def float_chunks(items: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, items[start:start + rows] as float32)`` for every chunk of ``rows`` rows, widened into one
    buffer (each chunk is valid until the next is yielded; see ``Widener``)."""
    widen = Widener()
    for start in range(0, items.shape[0], rows):
        yield start, widen(items[start:start + rows])
