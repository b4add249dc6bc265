"""Simulation: the Verilator toolchain wiring, cocotb test benches and (later) the cycle model."""
