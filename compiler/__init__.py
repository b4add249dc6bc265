"""From a quantized model to length-bucketed instruction streams."""
