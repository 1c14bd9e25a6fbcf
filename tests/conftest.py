"""Shared fixtures: private mosquitto brokers on loopback ports.

* ``broker_url``: a :class:`~broker.url.BrokerURL` of one mosquitto shared by the whole session
  (started on first use). Tests must not stop or restart it; give every test its own topics
  (``topic_root`` does that).
* ``embedded_broker``: an :class:`~broker.embedded.EmbeddedBroker` of the test's own, free to
  stop, pause and restart (broker-outage tests).

Tests that use either are marked ``broker``. Without a mosquitto binary they fail with an
install hint; set ``ORBITMESH_ALLOW_NO_BROKER=1`` to skip them instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from broker.embedded import EmbeddedBroker
from broker.mosquitto_conf import find_mosquitto
from broker.url import BrokerURL
from orbitmesh.core.links import LinkEngine, LinkState
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, Topology
from tests.faults_support import topology_of

BROKER_FIXTURES = frozenset({"broker_url", "embedded_broker", "session_broker"})
LOOSE_FIDELITY = {"budget_ms": 1000, "link_apply_budget_ms": 5000, "startup_budget_ms": 60000}
"""The fidelity block of container tests: containers, not timing, are under test there (many
containers share two cores; tests/test_fidelity.py holds the default budget to account)."""


def require_mosquitto() -> None:
    """Fail the test if mosquitto is missing (skip it when ORBITMESH_ALLOW_NO_BROKER=1)."""
    if find_mosquitto() is not None:
        return
    message = (
        "this test needs a real MQTT broker, but mosquitto is not installed (looked on PATH and "
        "in /usr/sbin). Install it: apt-get install -y mosquitto mosquitto-clients. "
        "To skip broker tests instead, set ORBITMESH_ALLOW_NO_BROKER=1."
    )
    if os.environ.get("ORBITMESH_ALLOW_NO_BROKER") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def require_tool(path: str, package: str, why: str) -> str:
    """``path`` if it exists (or is on PATH); else skip naming the package to install, or fail
    when ``ORBITMESH_REQUIRE_TOOLS=1`` (.ci/run sets it: CI installs every tool)."""
    found = path if os.path.isabs(path) and os.path.exists(path) else shutil.which(path)
    if found:
        return found
    message = f"{why} needs {path}: apt-get install -y {package}"
    if os.environ.get("ORBITMESH_REQUIRE_TOOLS") == "1":
        pytest.fail(f"ORBITMESH_REQUIRE_TOOLS=1 but {message}", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture with ``broker`` (deselect: -m 'not broker')."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def session_broker() -> Iterator[EmbeddedBroker]:
    """One private mosquitto for the whole test session."""
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto") as broker:
        yield broker


@pytest.fixture
def broker_url(session_broker: EmbeddedBroker) -> BrokerURL:
    """URL of the session's private mosquitto (do not stop it; use embedded_broker for that)."""
    if not session_broker.running:  # a test broke the rule above; heal for the next one
        session_broker.start()
    return session_broker.url


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A private mosquitto for this test alone; stop, pause and restart it freely."""
    require_mosquitto()
    with EmbeddedBroker(engine="mosquitto") as broker:
        yield broker


@pytest.fixture
def topic_root() -> str:
    """A topic prefix no other test uses, so tests sharing a broker cannot see each other."""
    return f"orbitmesh-test/{uuid.uuid4().hex[:12]}"


# --- fault tests (tests/test_faults.py, tests/test_fault_plans.py) -------------------------------

@pytest.fixture(scope="session")
def mixed() -> Topology:
    """tests/data/faults/overlay.yaml: two esa planes, acme's ring, four stations, two centres."""
    return topology_of("overlay.yaml")


@pytest.fixture(scope="session")
def mixed_state(mixed: Topology) -> LinkState:
    """The live links of overlay.yaml at its epoch (every link class is present)."""
    state = LinkEngine(mixed).state_at(0.0)
    assert state.count(ISL) > 0 and state.count(GSL) > 0 and state.count(TERRESTRIAL) > 0
    return state

