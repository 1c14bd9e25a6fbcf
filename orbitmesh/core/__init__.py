"""The pure core: scenario model, geometry, links, routing, contacts, faults. No asyncio,
MQTT, docker or sockets here (tests/test_layout.py checks).
"""
