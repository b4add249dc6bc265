"""Alveo build flows: board definitions, Vitis RTL-kernel packaging and synthesis reports."""
