"""Two-line element sets the pass tests share: one near-circular LEO, one very eccentric orbit."""

ISS_2018 = ("1 25544U 98067A   18184.80969102  .00001614  00000-0  31745-4 0  9993",
            "2 25544  51.6414 295.8524 0003435 262.6267 204.2868 15.54005638121106")
"""The ISS in 2018 (skyfield's tests/test_earth_satellites.py)."""

MOLNIYA = ("1 25485U 98054A   26001.00000000  .00000000  00000-0  00000-0 0  9990",
           "2 25485  63.4000 100.0000 7000000 270.0000  10.0000  2.00600000    07")
"""Molniya 1-91 (e ~ 0.7): its radius and speed vary by a factor of several within an orbit."""
