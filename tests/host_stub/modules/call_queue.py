"""Follows modules/call_queue.py: one lock serialises generations and other GPU work."""

import threading

queue_lock = threading.Lock()
