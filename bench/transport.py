"""Throughput of broker.client.MqttTransport through a private mosquitto; prints JSON.

    .venv/bin/python bench/transport.py [--messages 100000] [--payload-bytes 200]

Figures (messages per second, QoS 0, one process unless said otherwise):

* ``publish``: N ``publish()`` calls plus ``flush()`` (the broker has routed all of them);
* ``loopback``: one transport publishes, another in the same event loop receives all N;
* ``receive``: an external C publisher (``mosquitto_pub -l``) sends N lines, the transport
  receives them (publisher start to last message); skipped without mosquitto-clients;
* ``loopback_qos1``: the same loopback with QoS 1 publications and subscription (every
  message acknowledged both ways; no coalescing);
* ``aiomqtt_baseline``: the same loopback with aiomqtt's ``await publish`` and
  ``async for client.messages``, for comparison; only when aiomqtt happens to be installed
  (orbitmesh no longer depends on it), else null.

Every run counts sequence numbers and reports ``lost``; anything but 0 is a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.client import MqttTransport
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL


def _payload(seq: int, size: int) -> bytes:
    return seq.to_bytes(8, "big") + b"x" * max(0, size - 8)


async def bench_publish(url: BrokerURL, n: int, size: int) -> dict[str, float]:
    """Publish n messages and flush; nobody subscribes."""
    async with MqttTransport(url, client_id="bench-pub") as pub:
        start = time.perf_counter()
        for seq in range(n):
            pub.publish(f"bench/pub/{seq % 64}", _payload(seq, size))
            if seq % 2000 == 1999:
                await asyncio.sleep(0)  # give the loop a turn, as a real node would
        await pub.flush()
        elapsed_s = time.perf_counter() - start
    return {"msgs_per_s": round(n / elapsed_s), "elapsed_s": round(elapsed_s, 3)}


async def bench_loopback(url: BrokerURL, n: int, size: int, *, qos: int = 0
                         ) -> dict[str, float]:
    """One transport publishes, another receives; both in this event loop."""
    async with MqttTransport(url, client_id="bench-lb-pub") as pub, \
            MqttTransport(url, client_id="bench-lb-sub") as sub:
        await sub.subscribe("bench/lb/+", qos=qos)
        received: list[int] = []

        async def consume() -> None:
            async for batch in sub.batches():
                received.extend(int.from_bytes(m.payload[:8], "big") for m in batch)
                if len(received) >= n:
                    return

        consumer = asyncio.create_task(consume(), name="bench-consumer")
        start = time.perf_counter()
        for seq in range(n):
            pub.publish(f"bench/lb/{seq % 64}", _payload(seq, size), qos=qos)
            if seq % 2000 == 1999:
                await asyncio.sleep(0)
        await pub.flush()
        published_s = time.perf_counter() - start
        await asyncio.wait_for(consumer, timeout=120)
        elapsed_s = time.perf_counter() - start
    lost = n - len(set(received))
    return {"msgs_per_s": round(n / elapsed_s), "publish_msgs_per_s": round(n / published_s),
            "elapsed_s": round(elapsed_s, 3), "lost": lost,
            "in_order": received == sorted(received)}


async def bench_receive(url: BrokerURL, n: int, size: int) -> dict[str, float] | None:
    """Receive n messages from an external C publisher (mosquitto_pub -l)."""
    tool = shutil.which("mosquitto_pub")
    if tool is None:
        return None
    async with MqttTransport(url, client_id="bench-recv") as sub:
        await sub.subscribe("bench/recv")
        lines = b"".join(b"%09d" % seq + b"y" * max(0, size - 10) + b"\n" for seq in range(n))
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            tool, "-h", url.host, "-p", str(url.port), "-t", "bench/recv", "-l",
            stdin=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(lines)
        await proc.stdin.drain()
        proc.stdin.close()
        seen: list[int] = []
        async for batch in sub.batches():
            seen.extend(int(m.payload[:9]) for m in batch)
            if len(seen) >= n:
                break
        elapsed_s = time.perf_counter() - start
        await proc.wait()
    return {"msgs_per_s": round(n / elapsed_s), "elapsed_s": round(elapsed_s, 3),
            "lost": n - len(set(seen))}


async def bench_aiomqtt(url: BrokerURL, n: int, size: int) -> dict[str, float] | None:
    """The same loopback with plain aiomqtt (await publish, async for messages), if installed."""
    try:
        aiomqtt: Any = importlib.import_module("aiomqtt")
    except ImportError:
        return None

    def client(name: str) -> Any:
        return aiomqtt.Client(url.host, url.port, identifier=name, username=url.username,
                              password=url.password,
                              protocol=aiomqtt.ProtocolVersion.V311)

    async with client("bench-aio-pub") as pub, client("bench-aio-sub") as sub:
        await sub.subscribe("bench/aio/+")
        received: list[int] = []

        async def consume() -> None:
            async for message in sub.messages:
                received.append(int.from_bytes(bytes(message.payload)[:8], "big"))
                if len(received) >= n:
                    return

        consumer = asyncio.create_task(consume(), name="bench-aio-consumer")
        start = time.perf_counter()
        for seq in range(n):
            await pub.publish(f"bench/aio/{seq % 64}", _payload(seq, size))
        await asyncio.wait_for(consumer, timeout=120)
        elapsed_s = time.perf_counter() - start
    return {"msgs_per_s": round(n / elapsed_s), "lost": n - len(set(received)),
            "aiomqtt_version": getattr(aiomqtt, "__version__", "?")}


async def run(n: int, size: int, url: BrokerURL) -> dict[str, object]:
    """All benchmarks against one broker."""
    return {
        "messages": n,
        "payload_bytes": size,
        "publish": await bench_publish(url, n, size),
        "loopback": await bench_loopback(url, n, size),
        "receive": await bench_receive(url, n, size),
        "loopback_qos1": await bench_loopback(url, min(n, 50_000), size, qos=1),
        "aiomqtt_baseline": await bench_aiomqtt(url, min(n, 20_000), size),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=200)
    args = parser.parse_args(argv)
    with EmbeddedBroker() as broker:
        result = asyncio.run(run(args.messages, args.payload_bytes, broker.url))
        result["broker"] = broker.engine
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
