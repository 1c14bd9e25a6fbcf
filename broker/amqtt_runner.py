"""Run the pure-Python amqtt broker on one TCP listener until SIGTERM or SIGINT.

The fallback that :class:`broker.embedded.EmbeddedBroker` starts when mosquitto is not installed:
``python -m broker.amqtt_runner --host 127.0.0.1 --port 18830``. MQTT 3.1.1 only, anonymous, and
several times slower than mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from amqtt.broker import Broker


async def serve(host: str, port: int) -> None:
    """Serve MQTT on host:port until SIGTERM or SIGINT arrives."""
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await broker.start()
    print(f"amqtt broker listening on {host}:{port}: OPEN to anonymous clients, no ACL "
          "(install mosquitto for per-run credentials)", file=sys.stderr, flush=True)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: parse --host/--port and serve."""
    parser = argparse.ArgumentParser(prog="python -m broker.amqtt_runner", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"amqtt broker could not listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
