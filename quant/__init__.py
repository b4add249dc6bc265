"""Quantization passes and the float and integer reference models."""
