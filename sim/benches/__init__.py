"""cocotb test benches, one module per hardware block (run through ``sim.verilator``)."""
