"""KV retrieval engine, cluster table: per cluster its signature and key count (``lanes`` banks, one cluster of
each row per bank, so a row reads ``lanes`` clusters at once) and its int key sums (one beat per address,
synchronous read), plus the number of clusters and of keys in the table. A sub-component of
:class:`hw.kv.KvRetrieval`; the state of :class:`models.resv.ClusterTable` (sigs, counts, sums)."""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig

__all__ = ["ClusterTableUnit", "sums_addr_bits"]


def sums_addr_bits(kv: KvConfig) -> int:
    """Key-sum address width: cluster id above the beat index (at least one bit of each)."""
    return kv.id_bits + max(1, (kv.beats - 1).bit_length())


class ClusterTableUnit(wiring.Component):
    """The cluster table of one head.

    - ``reset`` empties it (``n`` = ``ntok`` = 0 at the clock edge).
    - ``row`` is the row every signature and count bank reads (combinational): ``row_sigs``/``row_counts``
      lane i = cluster ``row·lanes + i``; ``count`` is the count of cluster ``id``'s lane in that row (the
      caller puts ``id`` in ``row``).
    - ``write``: with ``en``, cluster ``id`` gets count ``count`` and, when ``new`` (it opens), signature
      ``sig``; ``n`` += ``new``, ``ntok`` += 1.
    - ``sums_read``: key sums at ``addr`` = (cluster, beat), ``data`` one cycle later; ``sums_write``: a beat
      of key sums.
    - ``slots`` > 1 (the top level's on-chip tables, ``system.kv_tables: onchip``): ``slots`` tables, the input
      ``slot`` picks the one every port above addresses (held while a command runs). The memories gain the slot
      as their high address part; ``n`` and ``ntok`` are registers per slot (all 0 after reset; ``reset``
      empties the selected slot), so a slot starts empty without clearing RAM (entries at ids ≥ n are never
      read, as after RESET).
    - ``dma`` (the top level's ``system.kv_tables: dram``, one table): the table DMA's ports — ``load`` writes
      cluster ``id``'s signature and count (all lanes' banks at its row), ``set`` sets ``n`` and ``ntok``,
      ``sig`` is the signature of cluster ``id`` (as ``count``); the key sums go through ``sums_read`` /
      ``sums_write``. The owner drives them only while no command runs.
    """

    def __init__(self, kv: KvConfig, slots: int = 1, dma: bool = False):
        self.kv, self.slots, self.dma = kv, slots, dma
        rows = kv.max_clusters // kv.lanes
        lanes = data.ArrayLayout(signed(kv.sum_bits), kv.lanes)
        slot_port = {"slot": In(range(slots))} if slots > 1 else {}
        if dma:  # the table DMA (system.kv_tables dram): the load's writes and the write-back's reads
            slot_port.update(
                {
                    "sig": Out(kv.hyperplanes),
                    "load": In(
                        wiring.Signature(
                            {
                                "en": Out(1),
                                "id": Out(kv.id_bits),
                                "sig": Out(kv.hyperplanes),
                                "count": Out(kv.count_bits),
                            }
                        )
                    ),
                    "set": In(
                        wiring.Signature(
                            {
                                "en": Out(1),
                                "n": Out(range(kv.max_clusters + 1)),
                                "ntok": Out(range(kv.max_clusters * kv.max_cluster_size + 1)),
                            }
                        )
                    ),
                }
            )
        super().__init__(
            {
                **slot_port,
                "reset": In(1),
                "n": Out(range(kv.max_clusters + 1)),
                "ntok": Out(range(kv.max_clusters * kv.max_cluster_size + 1)),
                "row": In(range(max(2, rows))),
                "row_sigs": Out(data.ArrayLayout(unsigned(kv.hyperplanes), kv.lanes)),
                "row_counts": Out(data.ArrayLayout(unsigned(kv.count_bits), kv.lanes)),
                "id": In(kv.id_bits),
                "count": Out(kv.count_bits),
                "write": In(
                    wiring.Signature(
                        {
                            "en": Out(1),
                            "id": Out(kv.id_bits),
                            "new": Out(1),
                            "sig": Out(kv.hyperplanes),
                            "count": Out(kv.count_bits),
                        }
                    )
                ),
                "sums_read": In(wiring.Signature({"addr": Out(sums_addr_bits(kv)), "data": In(lanes)})),
                "sums_write": In(
                    wiring.Signature({"en": Out(1), "addr": Out(sums_addr_bits(kv)), "data": Out(lanes)})
                ),
            }
        )

    def elaborate(self, platform) -> Module:
        kv = self.kv
        m = Module()
        L, rows = kv.lanes, kv.max_clusters // kv.lanes
        lg_l = (L - 1).bit_length()
        wr = self.write
        write_row = wr.id >> lg_l
        write_lane = wr.id[:lg_l] if lg_l else Const(0, 1)
        S = self.slots
        rb = (rows - 1).bit_length()  # rows is a power of two

        def at(addr, bits):  # the address in the selected slot (slot above the in-table address)
            return addr if S == 1 else Cat(addr[:bits], self.slot)

        if self.dma:  # a load writes cluster load.id's signature and count, the counts untouched
            ld = self.load
            ld_row, ld_lane = ld.id >> lg_l, (ld.id[:lg_l] if lg_l else Const(0, 1))
            m.d.comb += self.sig.eq(Array(self.row_sigs[i] for i in range(L))[self.id[:lg_l] if lg_l else 0])
        for i in range(L):
            sigs = Memory(shape=unsigned(kv.hyperplanes), depth=rows * S, init=[])
            counts = Memory(shape=unsigned(kv.count_bits), depth=rows * S, init=[])
            m.submodules[f"sig{i}"], m.submodules[f"cnt{i}"] = sigs, counts
            sig_rp, cnt_rp = sigs.read_port(domain="comb"), counts.read_port(domain="comb")
            sig_wp, cnt_wp = sigs.write_port(), counts.write_port()
            m.d.comb += [
                sig_rp.addr.eq(at(self.row, rb)),
                cnt_rp.addr.eq(at(self.row, rb)),
                self.row_sigs[i].eq(sig_rp.data),
                self.row_counts[i].eq(cnt_rp.data),
                sig_wp.addr.eq(at(write_row, rb)),
                sig_wp.data.eq(wr.sig),
                sig_wp.en.eq(wr.en & wr.new & (write_lane == i)),
                cnt_wp.addr.eq(at(write_row, rb)),
                cnt_wp.data.eq(wr.count),
                cnt_wp.en.eq(wr.en & (write_lane == i)),
            ]
            if self.dma:
                with m.If(ld.en):
                    m.d.comb += [
                        sig_wp.addr.eq(ld_row),
                        sig_wp.data.eq(ld.sig),
                        sig_wp.en.eq(ld_lane == i),
                        cnt_wp.addr.eq(ld_row),
                        cnt_wp.data.eq(ld.count),
                        cnt_wp.en.eq(ld_lane == i),
                    ]
        m.d.comb += self.count.eq(Array(self.row_counts[i] for i in range(L))[self.id[:lg_l] if lg_l else 0])

        if S == 1:
            n, ntok = self.n, self.ntok
        else:  # per-slot cluster and key counts; the outputs show the selected slot's
            ns = Array(Signal.like(self.n, name=f"n_slot{j}") for j in range(S))
            ntoks = Array(Signal.like(self.ntok, name=f"ntok_slot{j}") for j in range(S))
            n, ntok = ns[self.slot], ntoks[self.slot]
            m.d.comb += [self.n.eq(n), self.ntok.eq(ntok)]
        with m.If(self.reset):
            m.d.sync += [n.eq(0), ntok.eq(0)]
        with m.Elif(wr.en):
            m.d.sync += [n.eq(self.n + wr.new), ntok.eq(self.ntok + 1)]
        if self.dma:
            with m.If(self.set.en):
                m.d.sync += [n.eq(self.set.n), ntok.eq(self.set.ntok)]

        sab = sums_addr_bits(kv)
        m.submodules.sums = sums = Memory(
            shape=unsigned(kv.sum_bits * L), depth=(kv.max_clusters << (sab - kv.id_bits)) * S, init=[]
        )
        sums_rp, sums_wp = sums.read_port(), sums.write_port()
        m.d.comb += [
            sums_rp.addr.eq(at(self.sums_read.addr, sab)),
            self.sums_read.data.eq(sums_rp.data),
            sums_wp.addr.eq(at(self.sums_write.addr, sab)),
            sums_wp.data.eq(self.sums_write.data),
            sums_wp.en.eq(self.sums_write.en),
        ]
        return m
