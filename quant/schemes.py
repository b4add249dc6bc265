"""Quantization schemes: the presets and the ``+N:M``, ``+lambdaS:W`` and ``+gG`` modifiers.

A scheme name is ``PRESET[+N:M][+lambdaSINK:WINDOW][+gGROUP]``, e.g. ``w4a8+2:4``,
``w2a8kv4+lambda4:64`` or ``w2a8kv4+g128`` (quantisation groups of 128 weights instead of the
presets' 32). Presets: ``float`` (unquantized), ``w2a8kv4`` (AccLLM),
``w3-mixed-a8kv4`` and ``w4-mixed-a8kv4`` (BitMoD per-group data types), ``w4a8``, ``w8a8``.
Schemes without a KV width keep an INT8 KV cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from llmacc import wdtypes as W
from llmacc.widths import group_error

T = W.WDType


@dataclass(frozen=True)
class Finetune:
    """Quantization-aware fine-tuning settings (quant.finetune); ``steps = 0`` disables it."""

    steps: int = 0  #: calibration sequences, one per Adam step
    lr_grid: float = 5e-3  #: latent weights, in grid steps
    lr_norm: float = 1e-4  #: RMSNorm weights
    lr_scale: float = 0.0  #: log group scales (0 = scales stay as GPTQ chose them)


#: 2- and 3-bit grids need the norms and scales to move; 4-bit ones are better left alone.
COARSE_TUNE = Finetune(1500, lr_norm=3e-3, lr_scale=3e-4)
FINE_TUNE = Finetune(4000)


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_fmt: str | None  #: wdtypes.FORMATS, None = float weights
    dtypes: tuple[W.WDType, ...] = ()  #: data types the per-group search may choose
    act_bits: int | None = 8
    kv_bits: int | None = 4
    group: int = 32
    embed_fmt: str = "int8"  #: embedding and classifier
    sparsity: tuple[int, int] | None = None
    prune_method: str = "wanda"
    sink: int = 0
    window: int = 0
    gptq: bool = True
    clip: bool = True  #: the per-group clipping search; off: groups rounded over their range
    finetune: Finetune = Finetune()
    smooth: float = 0.0  #: SmoothQuant's migration strength alpha (quant.smooth); 0: none

    @property
    def quantized(self) -> bool:
        return self.weight_fmt is not None

    def check(self) -> Scheme:
        if self.weight_fmt is not None and self.weight_fmt not in W.FORMATS:
            raise ValueError(f"scheme {self.name}: weight format {self.weight_fmt!r}")
        if self.kv_bits not in (None, 4, 8) or self.act_bits not in (None, 8):
            raise ValueError(f"scheme {self.name}: supported widths are A8 and KV4/KV8")
        if self.sparsity is not None and tuple(self.sparsity) not in W.SPARSITY_PATTERNS:
            raise ValueError(f"scheme {self.name}: unsupported sparsity {self.sparsity}")
        if (why := group_error(self.group)) is not None:
            raise ValueError(f"scheme {self.name}: group {self.group} {why}")
        if not 0 <= self.smooth < 1:
            raise ValueError(f"scheme {self.name}: smoothing strength {self.smooth} must lie "
                             "in [0, 1)")
        if self.window < 0 or self.sink < 0:
            raise ValueError(f"scheme {self.name}: negative Lambda attention size")
        return self


PRESETS: dict[str, Scheme] = {s.name: s for s in (
    Scheme("float", None, act_bits=None, kv_bits=None),
    Scheme("w2a8kv4", "w2", (T.W2,), finetune=COARSE_TUNE),
    Scheme("w3-mixed-a8kv4", "mixed3", W.MIXED3_TYPES, finetune=COARSE_TUNE),
    Scheme("w4-mixed-a8kv4", "mixed4", W.MIXED4_TYPES, finetune=FINE_TUNE),
    Scheme("w4a8", "mixed4", (T.INT4,), kv_bits=8, finetune=FINE_TUNE),
    # INT8 weights take the activations' outliers easily: A8 alone lost SmolLM2's chat answers
    Scheme("w8a8", "int8", (T.INT8,), kv_bits=8, smooth=0.5),
)}

_SPARSE = re.compile(r"^(\d+):(\d+)$")
_LAMBDA = re.compile(r"^lambda(\d+):(\d+)$")
_GROUP = re.compile(r"^g(\d+)$")
MODIFIERS = "+N:M sparsity, +lambdaSINK:WINDOW, +gGROUP"


def names_group(name: str) -> bool:
    """Whether the scheme name gives its group (``+gGROUP``)."""
    return any(_GROUP.match(mod) for mod in name.split("+")[1:])


def parse(name: str, group: int | None = None, finetune_steps: int | None = None) -> Scheme:
    """A preset with optional modifiers; ``group`` (``--group``) and ``finetune_steps``
    override. A ``group`` that differs from the name's ``+gGROUP`` is refused."""
    base, *mods = name.split("+")
    if base not in PRESETS:
        raise ValueError(f"unknown scheme {base!r}; presets: {', '.join(PRESETS)} "
                         f"(modifiers: {MODIFIERS})")
    s = replace(PRESETS[base], name=name)
    given: dict[str, str] = {}
    for mod in mods:
        if m := _SPARSE.match(mod):
            kind = "sparsity"
            s = replace(s, sparsity=(int(m.group(1)), int(m.group(2))))
        elif m := _LAMBDA.match(mod):
            kind = "Lambda attention"
            if int(m.group(2)) == 0:
                raise ValueError(f"scheme {name!r}: +{mod} has a window of 0 keys, which is "
                                 "full attention; give WINDOW >= 1 or leave the modifier out")
            s = replace(s, sink=int(m.group(1)), window=int(m.group(2)))
        elif m := _GROUP.match(mod):
            kind = "group"
            s = replace(s, group=int(m.group(1)))
        else:
            raise ValueError(f"scheme {name!r}: unknown modifier {mod!r} "
                             f"(modifiers: {MODIFIERS})")
        if kind in given:
            raise ValueError(f"scheme {name!r}: {kind} given twice (+{given[kind]} and "
                             f"+{mod}); give it once")
        given[kind] = mod
    if s.sparsity and not s.quantized:
        raise ValueError(f"scheme {name!r}: sparsity needs a quantized preset")
    if group is not None:
        if "group" in given and group != s.group:
            raise ValueError(f"scheme {name!r} names group {s.group}, --group says {group}; "
                             "give one")
        s = replace(s, group=group)
    if finetune_steps is not None:
        s = replace(s, finetune=replace(s.finetune, steps=finetune_steps))
    return s.check()
