"""One memory port (``rreq`` / ``rdata`` / ``wr`` streams, :func:`hw.hostlink.mem_port_signature`) driven by
another: the pass-through wiring the accelerator top (its GEMM engine's port to the top's port), the board
arbiter (the owning side to the SDRAM side) and the board core (the accelerator to the arbiter) share.

Unlike ``wiring.connect`` it is a list of combinational statements, so a caller can put it under a condition
(``m.If``) or connect ports that are not a ``wiring`` member pair (a component's top-level streams)."""

from __future__ import annotations


def forward_mem_port(src, dst) -> list:
    """Statements making ``dst`` carry ``src``'s requests and writes, and ``src`` see ``dst``'s read data and
    readies. ``src`` and ``dst`` are anything with ``rreq``, ``rdata`` and ``wr`` streams."""
    return [
        dst.rreq.valid.eq(src.rreq.valid),
        dst.rreq.payload.eq(src.rreq.payload),
        src.rreq.ready.eq(dst.rreq.ready),
        src.rdata.valid.eq(dst.rdata.valid),
        src.rdata.payload.eq(dst.rdata.payload),
        dst.rdata.ready.eq(src.rdata.ready),
        dst.wr.valid.eq(src.wr.valid),
        dst.wr.payload.eq(src.wr.payload),
        src.wr.ready.eq(dst.wr.ready),
    ]
