"""The accelerator in Amaranth: components, parameterised by :class:`llmacc.config.AccelConfig`."""
