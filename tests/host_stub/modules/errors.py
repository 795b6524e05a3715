"""Follows modules/errors.py: ``report`` prints the message (and traceback) and never raises."""

import sys
import traceback

recorded: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    recorded.append(text)
    print("***", text, file=sys.stderr)
