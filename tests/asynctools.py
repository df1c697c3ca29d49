"""Running a coroutine from a test whatever the main thread holds: Playwright's sync API leaves
an event loop running there once a browser test has run, and asyncio.run refuses to start
another in that thread."""
import asyncio
from concurrent.futures import ThreadPoolExecutor


def run(coroutine):
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
