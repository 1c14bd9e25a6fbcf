"""What crosses a process boundary: topic names, frame and message codecs, the transport
seam and its in-memory fake. Sans-I/O.
"""
