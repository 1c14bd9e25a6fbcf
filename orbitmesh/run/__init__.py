"""The I/O shell: controller, launchers, report, traces on disk, CLI.
"""
