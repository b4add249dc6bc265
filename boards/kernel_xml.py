"""``kernel.xml``: the Vitis RTL-kernel description of the accelerator top.

Written from :mod:`llmacc.kernel` (itself from the RTL register map), and read back
by :func:`parse` for the consistency tests and the host's fake-XRT test, so the description the
v++ linker sees is checked against what the control slave decodes and what the host passes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from llmacc.config import AccelConfig
from llmacc.kernel import (
    CONTROL_PORT,
    CONTROL_RANGE,
    KERNEL_NAME,
    kernel_args,
    master_ports,
)

VLNV = f"llmacc.org:kernel:{KERNEL_NAME}:1.0"


def render(cfg: AccelConfig) -> str:
    """The kernel.xml text for a build of ``cfg``."""
    root = ET.Element("root", versionMajor="1", versionMinor="6")
    kernel = ET.SubElement(root, "kernel", name=KERNEL_NAME, language="ip_c", vlnv=VLNV,
                           attributes="", preferredWorkGroupSizeMultiple="0",
                           workGroupSize="1", interrupt="true",
                           hwControlProtocol="ap_ctrl_hs")
    ports = ET.SubElement(kernel, "ports")
    ET.SubElement(ports, "port", name=CONTROL_PORT, mode="slave", range=hex(CONTROL_RANGE),
                  dataWidth="32", portType="addressable", base="0x0")
    for name in master_ports(cfg):
        ET.SubElement(ports, "port", name=name, mode="master", range="0xFFFFFFFFFFFFFFFF",
                      dataWidth=str(cfg.axi_data_bits), portType="addressable", base="0x0")
    args = ET.SubElement(kernel, "args")
    for a in kernel_args(cfg):
        ET.SubElement(args, "arg", name=a.name, addressQualifier="1" if a.is_pointer else "0",
                      id=str(a.index), port=a.port or CONTROL_PORT, size=hex(a.size),
                      offset=hex(a.offset), type="void*" if a.is_pointer else "uint",
                      hostOffset="0x0", hostSize=hex(a.size))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


@dataclass(frozen=True)
class XmlArg:
    index: int
    name: str
    offset: int
    size: int
    port: str
    pointer: bool


def parse(text: str) -> tuple[dict[str, int], list[XmlArg]]:
    """The master ports (name -> data width) and the arguments (in id order) of a kernel.xml."""
    kernel = ET.fromstring(text).find("kernel")
    if kernel is None:
        raise ValueError("kernel.xml has no <kernel>")
    ports = {p.get("name"): int(p.get("dataWidth")) for p in kernel.iter("port")
             if p.get("mode") == "master"}
    args = [XmlArg(int(a.get("id")), a.get("name"), int(a.get("offset"), 16),
                   int(a.get("size"), 16), a.get("port"), a.get("addressQualifier") == "1")
            for a in kernel.iter("arg")]
    return ports, sorted(args, key=lambda a: a.index)
