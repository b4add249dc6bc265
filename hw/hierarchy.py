"""Modules converted once and instantiated many times, for builds too large to flatten.

Amaranth elaborates every instance of a component into its own Verilog module. The U280
matrix engine has 96 identical lanes of 64 DSPs each; flattened, its top needs far more memory
to convert than a build machine has. A component placed with :func:`shared` is, when the top
is elaborated for a :class:`SharedModules` platform, an ``Instance`` of a module named by its
parameters, and :func:`convert` writes each such module once. The board flow, the
Verilator harness and the lint all build from :func:`write`'s files. Elaborated for
any other platform (simulation, Verilator, the tests) the component is simply itself, so the
simulated design and the board's are the same modules.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.hdl import ClockSignal, Instance, ResetSignal, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow


class SharedModules:
    """The platform of a hierarchical conversion: collects one component per module name."""

    def __init__(self) -> None:
        self.modules: dict[str, wiring.Component] = {}

    def instance(self, component: wiring.Component, name: str) -> Instance:
        """An instance of module ``name`` wired to ``component``'s ports (which stay the
        parent's signals: the component itself is not elaborated here)."""
        component._MustUse__silence = True  # converted on its own (or as its first twin)
        self.modules.setdefault(name, component)
        ports = {"i_clk": ClockSignal(), "i_rst": ResetSignal()}
        for port, member, value in _ports(component):
            ports[("i_" if member.flow is Flow.In else "o_") + port] = value
        return Instance(name, **ports)

    def stubs(self) -> str:
        """Verilog black boxes of every shared module (its ports only), for a synthesis
        that counts them elsewhere."""
        return "".join(blackbox_stub(c, name) for name, c in self.modules.items())

    def convert(self) -> dict[str, str]:
        """Verilog of every shared module, by name (each elaborated flat)."""
        from amaranth.back import verilog

        return {name: verilog.convert(c, name=name, emit_src=False)
                for name, c in self.modules.items()}


def _ports(component: wiring.Component):
    """(port name, signature member, value) of ``component``'s ports, as a shared module's
    Verilog names them (clock and reset aside: ``clk`` and ``rst``)."""
    for path, member, value in component.signature.flatten(component):
        yield "__".join(str(p) for p in path), member, value


def blackbox_stub(component: wiring.Component, name: str) -> str:
    """A ``(* blackbox *)`` Verilog module ``name`` with ``component``'s ports and nothing
    inside."""
    ports = [("clk", "input", 1), ("rst", "input", 1)] + [
        (port, "input" if member.flow is Flow.In else "output", Shape.cast(member.shape).width)
        for port, member, _value in _ports(component)]
    lines = [f"(* blackbox *)\nmodule {name}({', '.join(p for p, _, _ in ports)});"]
    lines += [f"  {kind} [{width - 1}:0] {port};" for port, kind, width in ports]
    return "\n".join(lines) + "\nendmodule\n"


def shared(platform, component: wiring.Component, name: str):
    """``component``, or an instance of the shared module ``name`` when the platform is a
    :class:`SharedModules`. ``name`` must determine the module (encode its parameters)."""
    if isinstance(platform, SharedModules):
        return platform.instance(component, name)
    return component


def convert(top: wiring.Component, name: str) -> dict[str, str]:
    """Verilog files of ``top`` (module ``name``) with its shared modules converted once:
    ``{file name: text}``, the top's first."""
    from amaranth.back import verilog

    platform = SharedModules()
    files = {f"{name}.v": verilog.convert(top, name=name, emit_src=False, platform=platform)}
    files.update((f"{module}.v", text) for module, text in platform.convert().items())
    return files


def write(top: wiring.Component, name: str, directory: Path) -> list[Path]:
    """:func:`convert`'s files written into ``directory``, the top's first in the list. Each
    file appears whole (written aside, then renamed), and the top last: its presence means
    the conversion finished."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for file, text in reversed(convert(top, name).items()):
        path = directory / file
        tmp = path.with_suffix(".partial")
        tmp.write_text(text)
        tmp.rename(path)
        paths.insert(0, path)
    return paths
