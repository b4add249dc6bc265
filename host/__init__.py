"""Host runtime: one device interface with emulator, Verilator RTL and XRT back ends."""
