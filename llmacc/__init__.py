"""llmacc: the shared core of the stack (configuration, ISA, numerics) and the command line."""

__version__ = "0.1.0"
