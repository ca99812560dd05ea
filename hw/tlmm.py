"""Table-lookup ternary matmul engine (TeLLMe-style TLMM) in Amaranth 0.5.

Computes ``y[m, n] = Σ_k W[n, k]·x[m, k]`` for ternary W and signed activations, int32 results. The
stream layouts, the schedule and the cycle count are defined in docs/design.md ("TLMM engine") and shared with
:mod:`sim.tlmm_model`; :mod:`hw.ternary` lays out the streams.

Schedule for one command (M tokens, KC chunks, NB blocks)::

    for kc in range(KC):
        for m in range(M):              FILL: one activation beat → T tables of token m   (1 cycle)
        PREP: the last beat's tables are built (the build is registered)                  (1 cycle)
        for nb in range(NB):
            for m in range(M):          LOOK: one weight beat (held for M cycles) → Q·T lookups,
                                              Q sums, accumulate into acc[nb·M + m]           (1 cycle)

Fills write one register bank per token; a staging bank, loaded a cycle ahead with the tables of the
next token to look up, is the only bank the lookup multiplexers read, so they do not grow with the
number of tokens. Pipeline after issue: A (looked-up entries; accumulator read), B (adder tree), C
(accumulate and write back; on the last chunk the result goes to ``res``). The accumulator read port is
transparent to the write port, so repeated updates of one word are hazard-free and the schedule never
inserts bubbles.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import TlmmConfig
from hw.isa import OP_TLMM, payload_fields

__all__ = ["TableLookupMatmul", "command_layout"]


def command_layout() -> data.StructLayout:
    """Decoded TLMM command fields: the fields of hw.isa after the opcode, same names, widths and order."""
    return data.StructLayout({name: unsigned(width) for name, width in payload_fields(OP_TLMM)})


def _tree_sum(values: list):
    """Balanced adder tree (log2 depth) of signed values; widths grow as Amaranth's arithmetic does."""
    level = list(values)
    while len(level) > 1:
        nxt = [(level[i] + level[i + 1]).as_signed() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class TableLookupMatmul(wiring.Component):
    """TLMM engine with stream interfaces.

    ``cmd``: decoded command (:func:`command_layout`). ``act``: G·T signed activations per beat.
    ``wgt``: Q×T weight-group indices per beat. ``res``: Q int32 results per beat. ``busy`` is high from
    the cycle after a command is accepted until its last result has been transferred.
    """

    def __init__(self, cfg: TlmmConfig):
        self.cfg = cfg
        super().__init__(
            {
                "cmd": In(stream.Signature(command_layout())),
                "act": In(stream.Signature(data.ArrayLayout(signed(cfg.act_bits), cfg.chunk_k))),
                "wgt": In(
                    stream.Signature(
                        data.ArrayLayout(data.ArrayLayout(unsigned(cfg.index_bits), cfg.tables), cfg.columns)
                    )
                ),
                "res": Out(stream.Signature(data.ArrayLayout(signed(cfg.acc_bits), cfg.columns))),
                "busy": Out(1),
            }
        )

    # -- table build: entry idx = Σ_j (digit_j(idx) - 1)·a_j, split over the registered fill stage --
    def _partial_sums(self, acts: list) -> list:
        """Entries of the table of the low G-1 activations (3^(G-1) values); registered at the input."""
        out = []
        for idx in range(3 ** (self.cfg.group_size - 1)):
            terms = [
                acts[j] if (idx // 3**j) % 3 == 2 else -acts[j]
                for j in range(self.cfg.group_size - 1)
                if (idx // 3**j) % 3 != 1
            ]
            out.append(_tree_sum(terms) if terms else Const(0, signed(self.cfg.entry_bits)))
        return out

    def _table_entries(self, partial: list, top) -> list:
        """Every stored entry from the registered partial table and top activation: one adder deep."""
        low = 3 ** (self.cfg.group_size - 1)
        entries = []
        for idx in range(self.cfg.stored_entries):
            d = idx // low - 1  # digit of the top activation, minus 1
            p = partial[idx % low]
            entries.append(p if d == 0 else (p + top).as_signed() if d > 0 else (p - top).as_signed())
        return entries

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        G, T, Q, M = cfg.group_size, cfg.tables, cfg.columns, cfg.tokens
        eb, sb, ab = cfg.entry_bits, cfg.sum_bits, cfg.acc_bits
        depth = cfg.acc_depth
        addr_bits = max(1, (depth - 1).bit_length())

        # ---- accumulator memory: one Q-wide int32 word per (column block, token) ----
        m.submodules.acc = acc = Memory(shape=data.ArrayLayout(signed(ab), Q), depth=depth, init=[])
        wp = acc.write_port()
        rp = acc.read_port(transparent_for=(wp,))

        # ---- pipeline registers ----
        a_valid, b_valid, c_valid = Signal(), Signal(), Signal()
        a_first, b_first, c_first = Signal(), Signal(), Signal()
        a_last, b_last, c_last = Signal(), Signal(), Signal()
        a_addr, b_addr, c_addr = (Signal(addr_bits, name=f"{s}_addr") for s in "abc")
        a_vals = [[Signal(signed(eb), name=f"a_val_{q}_{t}") for t in range(T)] for q in range(Q)]
        b_sums = [Signal(signed(sb), name=f"b_sum_{q}") for q in range(Q)]
        c_sums = [Signal(signed(sb), name=f"c_sum_{q}") for q in range(Q)]
        c_prev = [Signal(signed(ab), name=f"c_prev_{q}") for q in range(Q)]

        # ---- result FIFO and credits: the pipeline never stalls ----
        # An issue on the last chunk (which will produce a result) takes a credit; a result leaving
        # ``res`` returns one. With result_fifo_depth credits the FIFO cannot overflow, and ``res.ready``
        # reaches only the FIFO and the credit counter, never the pipeline's enables.
        depth_out = cfg.result_fifo_depth
        m.submodules.results = results = SyncFIFO(width=Q * ab, depth=depth_out)
        credits = Signal(range(depth_out + 1), init=depth_out)
        pop = Signal()
        m.d.comb += [
            self.res.valid.eq(results.r_rdy),
            self.res.payload.eq(results.r_data),
            results.r_en.eq(self.res.ready),
            pop.eq(results.r_rdy & self.res.ready),
        ]

        # ---- command registers and loop counters ----
        tokens_m1 = Signal(range(M))
        kc_last, nb_last = Signal(16), Signal(16)
        kc, nb = Signal(16), Signal(16)
        tok = Signal(range(M))
        tok_next = Signal(range(M))  # the token looked up after ``tok`` (registered: it selects banks)
        first_chunk, last_chunk = Signal(), Signal()
        addr = Signal(addr_bits)

        # ---- token table banks (written by fills) and the staging bank ``cur`` (read by lookups) ----
        # ``cur`` holds the tables of the token being looked up; it is loaded one cycle ahead from the
        # bank of the next token (or straight from the fill datapath), so the Q·T lookup multiplexers
        # read a single bank and never sit behind a token multiplexer.
        zero = cfg.zero_index

        def bank(name):
            return [
                [
                    Signal(signed(eb), name=f"{name}_{t}_{e}") if e != zero else Const(0, signed(eb))
                    for e in range(cfg.stored_entries)
                ]
                for t in range(T)
            ]

        stored = [(t, e) for t in range(T) for e in range(cfg.stored_entries) if e != zero]
        banks = [bank(f"tab{s}") for s in range(M)] if M > 1 else []
        cur = bank("cur")
        fire_fill = Signal()  # an activation beat is taken this cycle (it belongs to token ``tok``)
        issue = Signal()  # a lookup of token ``tok`` is issued this cycle
        prep = Signal()  # the cycle after a chunk's last fill, before its first lookup
        # The table build is split by a register: as a beat arrives, the tables of its low G-1 activations
        # (3^(G-1) entries each) and its top activation are registered (loaded every cycle; meaningful only
        # when ``fill_pending``); in the next cycle one adder level completes every entry.
        low = 3 ** (G - 1)
        part_q = [[Signal(signed(eb), name=f"part_{t}_{e}") for e in range(low)] for t in range(T)]
        top_q = [Signal(signed(cfg.act_bits), name=f"top_{t}") for t in range(T)]
        for t in range(T):
            acts = [self.act.payload[t * G + j] for j in range(G)]
            m.d.sync += [part_q[t][e].eq(v) for e, v in enumerate(self._partial_sums(acts))]
            m.d.sync += top_q[t].eq(acts[G - 1])
        fill_pending = Signal()
        fill_tok = Signal(range(M))
        m.d.sync += [fill_pending.eq(fire_fill), fill_tok.eq(tok)]
        fill_entries = [self._table_entries(part_q[t], top_q[t]) for t in range(T)]
        for s, bk in enumerate(banks):
            with m.If(fill_pending & (fill_tok == s)):
                m.d.sync += [bk[t][e].eq(fill_entries[t][e]) for t, e in stored]
        with m.If(prep):
            # the chunk's last beat is being built now; the next lookup is token 0 (that beat's token if M = 1)
            first_tables = (
                fill_entries
                if M == 1
                else [
                    [
                        Mux(tokens_m1 == 0, fill_entries[t][e], banks[0][t][e])
                        for e in range(cfg.stored_entries)
                    ]
                    for t in range(T)
                ]
            )
            m.d.sync += [cur[t][e].eq(first_tables[t][e]) for t, e in stored]
        if M > 1:
            with m.Elif(issue & (tokens_m1 != 0)):
                m.d.sync += [cur[t][e].eq(Array(bk[t][e] for bk in banks)[tok_next]) for t, e in stored]

        # ---- lookups from the staging bank ----
        def read_entry(t, idx):
            table = Array(cur[t])
            if cfg.table_mode == "full":
                return table[idx]
            upper = idx > zero
            src = Mux(upper, cfg.table_entries - 1 - idx, idx)[: cfg.index_bits]
            val = table[src]
            return Mux(upper, -val, val)

        lookups = [[read_entry(t, self.wgt.payload[q][t]) for t in range(T)] for q in range(Q)]

        # ---- controller ----
        def set_tok(value, following):
            return [tok.eq(value), tok_next.eq(following)]

        credit_ok = ~last_chunk | (credits != 0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    p = self.cmd.payload
                    m.d.sync += [
                        tokens_m1.eq(p.tokens_minus_one),
                        kc_last.eq(p.k_chunks - 1),
                        nb_last.eq(p.n_blocks - 1),
                        kc.eq(0),
                        nb.eq(0),
                        first_chunk.eq(1),
                        last_chunk.eq(p.k_chunks == 1),
                        *set_tok(0, Mux(p.tokens_minus_one == 0, 0, 1)),
                    ]
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += [self.busy.eq(1), self.act.ready.eq(1), fire_fill.eq(self.act.valid)]
                with m.If(self.act.valid):
                    with m.If(tok == tokens_m1):
                        m.d.sync += [*set_tok(0, Mux(tokens_m1 == 0, 0, 1)), nb.eq(0), addr.eq(0)]
                        m.next = "PREP"
                    with m.Else():
                        m.d.sync += set_tok(tok + 1, Mux(tok + 1 == tokens_m1, 0, tok + 2))
            with m.State("PREP"):
                m.d.comb += [self.busy.eq(1), prep.eq(1)]
                m.next = "LOOK"
            with m.State("LOOK"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.wgt.ready.eq(credit_ok & (tok == tokens_m1)),
                    issue.eq(self.wgt.valid & credit_ok),
                ]
                with m.If(issue):
                    m.d.sync += [
                        addr.eq(addr + 1),
                        *set_tok(tok_next, Mux(tok_next == tokens_m1, 0, tok_next + 1)),
                    ]
                    with m.If(tok == tokens_m1):
                        with m.If(nb == nb_last):
                            with m.If(last_chunk):
                                m.next = "DRAIN"
                            with m.Else():
                                m.d.sync += [
                                    kc.eq(kc + 1),
                                    first_chunk.eq(0),
                                    last_chunk.eq(kc + 1 == kc_last),
                                ]
                                m.next = "FILL"
                        with m.Else():
                            m.d.sync += nb.eq(nb + 1)
            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(
                    ~a_valid
                    & ~b_valid
                    & ~c_valid
                    & ((results.level == 0) | ((results.level == 1) & self.res.ready))
                ):
                    m.next = "IDLE"

        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += credits.eq(depth_out)
        with m.Else():
            m.d.sync += credits.eq(credits + pop - (issue & last_chunk))

        # ---- pipeline: advances every cycle; the valid bits say which stages hold work ----
        # A: looked-up entries
        m.d.sync += [a_valid.eq(issue), a_first.eq(first_chunk), a_last.eq(last_chunk), a_addr.eq(addr)]
        m.d.sync += [a_vals[q][t].eq(lookups[q][t]) for q in range(Q) for t in range(T)]
        # B: adder tree (the accumulator word read during A arrives now and is registered into C)
        m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_addr.eq(a_addr)]
        m.d.sync += [b_sums[q].eq(_tree_sum(a_vals[q])) for q in range(Q)]
        # C: accumulate; on the last chunk the new value also goes into the result FIFO
        m.d.sync += [c_valid.eq(b_valid), c_first.eq(b_first), c_last.eq(b_last), c_addr.eq(b_addr)]
        m.d.sync += [c_sums[q].eq(b_sums[q]) for q in range(Q)]
        m.d.sync += [c_prev[q].eq(rp.data[q]) for q in range(Q)]
        # Reading in A and registering the word splits memory→adder→memory into two paths. A word read in A
        # while C writes it returns the new value (transparent port); two updates of one word are at least
        # two pipeline slots apart (a fill bubble separates chunks), so no older write can be missed.
        m.d.comb += rp.addr.eq(a_addr)

        updated = [Signal(signed(ab), name=f"acc_new_{q}") for q in range(Q)]
        for q in range(Q):
            m.d.comb += updated[q].eq(Mux(c_first, 0, c_prev[q]) + c_sums[q])
        m.d.comb += [wp.addr.eq(c_addr), wp.en.eq(c_valid)]
        m.d.comb += [wp.data[q].eq(updated[q]) for q in range(Q)]
        m.d.comb += [results.w_en.eq(c_valid & c_last), results.w_data.eq(Cat(*updated))]
        return m
