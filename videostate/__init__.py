"""videostate: video models that carry state through time.

Every model runs offline on a whole clip and online, chunk by chunk or frame by frame, with bounded
memory. The shared core is :mod:`videostate.ssm`.
"""

__version__ = "0.1.0"
