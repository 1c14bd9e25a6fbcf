"""The live map (orbitmesh run --web, orbitmesh watch) and what it shares with /metrics."""
