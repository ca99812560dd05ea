"""KV-cache retrieval engine (V-Rex ReSV-style): signature unit, cluster table, scoring and threshold units.

Numerics are those of :class:`models.resv.ClusterTable` (the golden reference); the cycle schedule below is
mirrored state for state by :mod:`sim.kv_model` and documented in docs/design.md ("KV retrieval engine").

Interfaces (``lib.stream``, valid/ready):

- ``cmd``: one op per command — ``RESET`` (0, empties the table), ``INSERT`` (1, a key follows on ``vec``),
  ``QUERY`` (2, a query follows on ``vec``).
- ``vec``: ``kv.beats`` beats of ``kv.lanes`` int8 values (lane i of beat b = element b·lanes + i).
- ``out``: ``{kind, id, new}`` — INSERT answers one ``ASSIGN`` (cluster id, ``new`` = opened it) or
  ``FULL`` (every cluster full: key dropped); QUERY answers one ``SEL`` per selected cluster, in walk order,
  then ``END`` with ``id`` = number selected.

Schedule (states; one cycle each unless a count is given; stalls only where a stream handshake waits):

- ``IDLE`` takes a command. RESET stays in IDLE (the table is emptied at the clock edge).
- ``LOAD``: one ``vec`` beat per cycle into the vector register; for INSERT each beat also adds its lanes,
  signed by the hyperplane bits, into ``hyperplanes`` projection accumulators.
- INSERT: ``SCAN`` max(1, ceil(clusters/lanes)) + 2 cycles: ``lanes`` cluster signatures per cycle, XOR +
  popcount against the key's signature (signs of the accumulators) into registers, a compare tree into
  registers, then the running nearest non-full cluster (the + 2 drain those stages);
  ``DECIDE``: join / open / force-join / full, signature and count written; ``UPDATE`` ``beats`` cycles:
  key sums read-add-write one beat per cycle (sync-read block RAM, address issued a cycle ahead);
  ``OUT``: the answer beat.
- QUERY: ``SCORE`` clusters·beats + 5 cycles (1 with no clusters): a 6-stage pipeline — address, lane
  products, adder tree accumulated over beats, count + reciprocal ROM, score = (dot · R[count]) >> 16, then
  store with running min/max and Σ score·count; ``TH`` and ``TH2``: row sum and span, then threshold and
  bucket shift; ``LINK`` clusters + 2 cycles: score − min and count, then push the cluster on its bucket's list
  and compute its weight, then store the weight; ``WSTART``: highest non-empty bucket; ``WALK`` one cycle per selected cluster: emit
  it, subtract its weight from the remaining threshold, stop as soon as that reaches 0 (the early exit), else
  follow the list or drop to the next non-empty bucket; ``END``: the count beat.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import KvConfig
from hw.kv_numerics import (
    KIND_ASSIGN,
    KIND_END,
    KIND_FULL,
    KIND_SEL,
    OP_INSERT,
    OP_QUERY,
    OP_RESET,
    hyperplane_bits,
    reciprocal,
)

__all__ = ["KvRetrieval", "OP_RESET", "OP_INSERT", "OP_QUERY", "KIND_ASSIGN", "KIND_SEL", "KIND_END",
           "KIND_FULL", "out_layout", "STATES"]

STATES = ("IDLE", "LOAD", "SCAN", "DECIDE", "UPDATE", "OUT", "SCORE", "TH", "LINK", "WSTART", "WALK", "END", "TH2")
(S_IDLE, S_LOAD, S_SCAN, S_DECIDE, S_UPDATE, S_OUT, S_SCORE, S_TH, S_LINK, S_WSTART, S_WALK,
 S_END, S_TH2) = range(len(STATES))


def out_layout(kv: KvConfig) -> data.StructLayout:
    return data.StructLayout({"kind": 2, "id": kv.max_clusters.bit_length(), "new": 1})


def _tree_sum(values):
    """Sum as a balanced adder tree (a plain ``sum`` is a chain as deep as the operand count)."""
    values = list(values)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


def _highest(m: Module, bits: Signal, width: int, name: str) -> Signal:
    """Index of the highest set bit of ``bits`` (0 when none)."""
    idx = Signal(range(max(2, width)), name=name)
    for i in range(width):
        with m.If(bits[i]):
            m.d.comb += idx.eq(i)
    return idx


class KvRetrieval(wiring.Component):
    """ReSV retrieval engine for one head (see module docstring)."""

    def __init__(self, kv: KvConfig):
        self.kv = kv
        super().__init__({
            "cmd": In(stream.Signature(unsigned(2))),
            "vec": In(stream.Signature(data.ArrayLayout(signed(8), kv.lanes))),
            "out": Out(stream.Signature(out_layout(kv))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        kv = self.kv
        m = Module()
        L, NB, HP, CM, CS, B = kv.lanes, kv.beats, kv.hyperplanes, kv.max_clusters, kv.max_cluster_size, kv.buckets
        ROWS = CM // L
        lg_l = (L - 1).bit_length()
        kb = max(1, (NB - 1).bit_length())            # beat-index bits of a key-sum address
        SB, DB, IB = kv.sum_bits, kv.dot_bits, kv.id_bits

        state = Signal(range(len(STATES)))
        m.d.comb += self.busy.eq(state != S_IDLE)

        # ---------------------------------------------------------------- registers
        is_query = Signal()
        n = Signal(range(CM + 1))                      # clusters in the table
        ntok = Signal(range(CM * CS + 1))              # keys in the table (Σ counts)
        beat = Signal(range(max(2, NB)))
        vreg = Array(Signal(8 * L, name=f"vreg{b}") for b in range(NB))
        acc = [Signal(signed(kv.proj_bits), name=f"proj{j}") for j in range(HP)]
        sig = Signal(HP)
        m.d.comb += sig.eq(Cat(~a[-1] for a in acc))   # bit j = projection j >= 0

        # ---------------------------------------------------------------- memories
        sig_banks, cnt_banks, sig_rps, cnt_rps, sig_wps, cnt_wps = [], [], [], [], [], []
        for i in range(L):
            sm = Memory(shape=unsigned(HP), depth=ROWS, init=[])
            cmem = Memory(shape=unsigned(kv.count_bits), depth=ROWS, init=[])
            m.submodules[f"sig{i}"], m.submodules[f"cnt{i}"] = sm, cmem
            sig_banks.append(sm)
            cnt_banks.append(cmem)
            sig_rps.append(sm.read_port(domain="comb"))
            cnt_rps.append(cmem.read_port(domain="comb"))
            sig_wps.append(sm.write_port())
            cnt_wps.append(cmem.write_port())
        bank_row = Signal(range(max(2, ROWS)))         # row all banks read (muxed by state)
        for i in range(L):
            m.d.comb += cnt_rps[i].addr.eq(bank_row)
        one_id = Signal(IB)                            # the single cluster whose count is read
        one_cnt = Signal(kv.count_bits)
        m.d.comb += one_cnt.eq(Array(rp.data for rp in cnt_rps)[one_id[:lg_l] if lg_l else 0])

        m.submodules.sums = sums = Memory(shape=unsigned(SB * L), depth=CM << kb, init=[])
        sums_rp, sums_wp = sums.read_port(), sums.write_port()
        m.submodules.scores = scores = Memory(shape=signed(DB), depth=CM, init=[])
        score_rp, score_wp = scores.read_port(domain="comb"), scores.write_port()
        m.submodules.nexts = nexts = Memory(shape=unsigned(IB + 1), depth=CM, init=[])
        next_rp, next_wp = nexts.read_port(domain="comb"), nexts.write_port()
        recip = Memory(shape=unsigned(kv.recip_bits), depth=CS + 1,
                       init=[0] + [reciprocal(c) for c in range(1, CS + 1)])
        m.submodules.recip = recip
        recip_rp = recip.read_port(domain="comb")
        m.d.comb += recip_rp.addr.eq(one_cnt)

        # ---------------------------------------------------------------- INSERT datapath
        hb = hyperplane_bits(kv.dim, HP, kv.seed)
        lanes_in = [self.vec.payload[i] for i in range(L)]
        hsel = []
        for j in range(HP):
            h = Signal(L, name=f"hp{j}")
            m.d.comb += h.eq(Array(Const(sum(int(hb[j, b * L + i]) << i for i in range(L)), L)
                                   for b in range(NB))[beat])
            hsel.append(h)

        scan_row = Signal(range(max(2, ROWS)))
        best_v, best_d, best_id = Signal(), Signal(range(HP + 1)), Signal(IB)
        cid, new, kind = Signal(IB), Signal(), Signal(2)
        r_kind, r_id, r_new = Signal(2), Signal(IB), Signal()   # the INSERT answer
        # three-stage nearest-cluster search: stage 1 registers each lane's distance and eligibility for the
        # row read this cycle; stage 2 reduces the registered row in a tree (ties: the lower id); stage 3 merges
        # it into the running best (earlier rows hold lower ids, so a row wins only with a strictly smaller one)
        scan_issue, p_valid, p_row = Signal(), Signal(), Signal(range(max(2, ROWS)))
        p_dist = [Signal(range(HP + 1), name=f"p_dist{i}") for i in range(L)]
        p_ok = [Signal(name=f"p_ok{i}") for i in range(L)]
        for i in range(L):
            c = Cat(Const(i, lg_l), scan_row) if lg_l else scan_row
            dist = Signal(range(HP + 1), name=f"dist{i}")
            m.d.comb += [sig_rps[i].addr.eq(scan_row), dist.eq(_tree_sum((sig ^ sig_rps[i].data)[j] for j in range(HP)))]
            m.d.sync += [p_dist[i].eq(dist), p_ok[i].eq((c < n) & (cnt_rps[i].data < CS))]
        nodes = [(p_ok[i], p_dist[i], Cat(Const(i, lg_l), p_row) if lg_l else p_row) for i in range(L)]
        level = 0
        while len(nodes) > 1:
            nxt = []
            for k in range(0, len(nodes), 2):
                (lv, ld, li), (rv, rd, ri) = nodes[k], nodes[k + 1]
                take_r = Signal(name=f"tr{level}_{k}")
                m.d.comb += take_r.eq(rv & (~lv | (rd < ld)))
                v, d, i_ = Signal(name=f"tv{level}_{k}"), Signal(range(HP + 1), name=f"td{level}_{k}"), \
                    Signal(IB, name=f"ti{level}_{k}")
                m.d.comb += [v.eq(lv | rv), d.eq(Mux(take_r, rd, ld)), i_.eq(Mux(take_r, ri, li))]
                nxt.append((v, d, i_))
            nodes, level = nxt, level + 1
        # stage 3: the row's winner, registered, merges into the running best
        row_v, row_d, row_id, r_valid = Signal(), Signal(range(HP + 1)), Signal(IB), Signal()
        m.d.sync += [row_v.eq(nodes[0][0]), row_d.eq(nodes[0][1]), row_id.eq(nodes[0][2]), r_valid.eq(p_valid)]
        take_row = Signal()
        m.d.comb += take_row.eq(r_valid & row_v & (~best_v | (row_d < best_d)))

        upd_beat = Signal(range(max(2, NB)))

        # ---------------------------------------------------------------- QUERY datapath
        iss_c, iss_b = Signal(range(CM + 1)), Signal(range(max(2, NB)))
        vB, bB, cB = Signal(), Signal(range(max(2, NB))), Signal(IB)
        prods = [Signal(signed(8 + SB), name=f"prod{i}") for i in range(L)]
        vB2, bB2, cB2 = Signal(), Signal(range(max(2, NB))), Signal(IB)
        vC, cC = Signal(), Signal(IB)
        vD, cD, dotD, rD, cntD = Signal(), Signal(IB), Signal(signed(DB)), Signal(kv.recip_bits), Signal(kv.count_bits)
        vE, cE, scoreE, cntE = Signal(), Signal(IB), Signal(signed(DB)), Signal(kv.count_bits)
        dot, dotC = Signal(signed(DB)), Signal(signed(DB))
        lo, hi = Signal(signed(DB)), Signal(signed(DB))
        sc_bits = DB + kv.count_bits + IB + 2
        sc = Signal(signed(sc_bits))                   # Σ score · count
        th = Signal(kv.rowsum_bits + 9)
        sh = Signal(range(DB + 2))
        rem = Signal(signed(kv.rowsum_bits + 11))      # threshold − weights taken so far
        rs_q = Signal(kv.rowsum_bits)
        span_q = Signal(DB + 1)
        visited = Signal(range(CM + 1))
        link_c, l_issue = Signal(range(CM + 1)), Signal()
        vL, dL, cntL, cL = Signal(), Signal(DB + 1), Signal(kv.count_bits), Signal(IB)
        vM, wM, cM = Signal(), Signal(kv.weight_bits), Signal(IB)
        ptr = Signal(IB)
        head = Array(Signal(IB, name=f"head{b}") for b in range(B))
        mask = Signal(B)

        qlanes = vreg[bB]
        partial = Signal(signed(DB))
        m.d.comb += partial.eq(_tree_sum(prods))
        dot_new = Signal(signed(DB))
        m.d.comb += dot_new.eq(Mux(bB2 == 0, 0, dot) + partial)

        m.submodules.weights = weights = Memory(shape=unsigned(kv.weight_bits), depth=CM, init=[])
        w_rp, w_wp = weights.read_port(domain="comb"), weights.write_port()
        m.d.comb += w_rp.addr.eq(ptr)
        bucket = Signal(range(max(2, B)))
        m.d.comb += bucket.eq(dL >> sh)
        rem_next = Signal(signed(kv.rowsum_bits + 11))
        m.d.comb += rem_next.eq(rem - w_rp.data)
        top = _highest(m, mask, B, "top_bucket")

        # TH (two cycles): row sum S = Σ score·count − lo·Σcount and hi − lo; then threshold and bucket shift
        row_sum = Signal(signed(sc_bits + 1))
        m.d.comb += row_sum.eq(sc - lo * ntok)
        span_len = Signal(range(DB + 2))
        for i in range(DB + 1):
            with m.If(span_q[i]):
                m.d.comb += span_len.eq(i + 1)
        lg_b = (B - 1).bit_length()

        # ---------------------------------------------------------------- state-dependent reads
        with m.Switch(state):
            with m.Case(S_SCAN):
                m.d.comb += bank_row.eq(scan_row)
            with m.Case(S_DECIDE):
                m.d.comb += [bank_row.eq(best_id >> lg_l), one_id.eq(best_id)]
            with m.Case(S_SCORE):
                m.d.comb += [bank_row.eq(cC >> lg_l), one_id.eq(cC)]
            with m.Case(S_LINK):
                m.d.comb += [bank_row.eq(link_c[:IB] >> lg_l), one_id.eq(link_c[:IB])]
        m.d.comb += [score_rp.addr.eq(link_c[:IB]), next_rp.addr.eq(ptr)]

        # ---------------------------------------------------------------- controller
        out = self.out.payload
        with m.Switch(state):
            with m.Case(S_IDLE):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(self.cmd.payload == OP_RESET):
                        m.d.sync += [n.eq(0), ntok.eq(0)]
                    with m.Elif((self.cmd.payload == OP_INSERT) | (self.cmd.payload == OP_QUERY)):
                        m.d.sync += [is_query.eq(self.cmd.payload == OP_QUERY), beat.eq(0), state.eq(S_LOAD)]
                        m.d.sync += [a.eq(0) for a in acc]

            with m.Case(S_LOAD):
                m.d.comb += self.vec.ready.eq(1)
                with m.If(self.vec.valid):
                    m.d.sync += [vreg[beat].eq(self.vec.payload.as_value()), beat.eq(beat + 1)]
                    with m.If(~is_query):
                        for j in range(HP):
                            terms = [Mux(hsel[j][i], lanes_in[i], -lanes_in[i]) for i in range(L)]
                            m.d.sync += acc[j].eq(acc[j] + _tree_sum(terms))
                    with m.If(beat == NB - 1):
                        with m.If(is_query):
                            m.d.sync += [state.eq(S_SCORE), iss_c.eq(0), iss_b.eq(0), vB.eq(0), vC.eq(0),
                                         sc.eq(0)]
                        with m.Else():
                            m.d.sync += [state.eq(S_SCAN), scan_row.eq(0), best_v.eq(0), scan_issue.eq(1),
                                         p_valid.eq(0)]

            with m.Case(S_SCAN):
                m.d.sync += [p_valid.eq(scan_issue), p_row.eq(scan_row)]
                with m.If(scan_issue):
                    m.d.sync += scan_row.eq(scan_row + 1)
                    with m.If(((scan_row + 1) << lg_l) >= n):
                        m.d.sync += scan_issue.eq(0)
                with m.Elif(~p_valid):
                    m.d.sync += state.eq(S_DECIDE)
                with m.If(take_row):
                    m.d.sync += [best_v.eq(1), best_d.eq(row_d), best_id.eq(row_id)]

            with m.Case(S_DECIDE):
                with m.If(best_v & (best_d <= kv.hamming)):
                    m.d.comb += [cid.eq(best_id), new.eq(0), kind.eq(KIND_ASSIGN)]
                with m.Elif(n < CM):
                    m.d.comb += [cid.eq(n), new.eq(1), kind.eq(KIND_ASSIGN)]
                with m.Elif(best_v):
                    m.d.comb += [cid.eq(best_id), new.eq(0), kind.eq(KIND_ASSIGN)]
                with m.Else():
                    m.d.comb += kind.eq(KIND_FULL)
                m.d.sync += [r_kind.eq(kind), r_id.eq(cid), r_new.eq(new)]
                with m.If(kind == KIND_FULL):
                    m.d.sync += state.eq(S_OUT)
                with m.Else():
                    row = cid >> lg_l
                    sel = cid[:lg_l] if lg_l else Const(0, 1)
                    for i in range(L):
                        m.d.comb += [cnt_wps[i].addr.eq(row), sig_wps[i].addr.eq(row),
                                     cnt_wps[i].data.eq(Mux(new, 1, one_cnt + 1)), sig_wps[i].data.eq(sig),
                                     cnt_wps[i].en.eq(sel == i), sig_wps[i].en.eq(new & (sel == i))]
                    m.d.sync += [n.eq(n + new), ntok.eq(ntok + 1), upd_beat.eq(0), state.eq(S_UPDATE)]
                    m.d.comb += sums_rp.addr.eq(Cat(Const(0, kb), cid))

            with m.Case(S_UPDATE):
                key = vreg[upd_beat]
                m.d.comb += [
                    sums_wp.addr.eq(Cat(upd_beat[:kb], r_id)),
                    sums_wp.data.eq(Cat(
                        (Mux(r_new, 0, sums_rp.data[SB * i:SB * (i + 1)].as_signed())
                         + key[8 * i:8 * i + 8].as_signed())[:SB] for i in range(L))),
                    sums_wp.en.eq(1),
                    sums_rp.addr.eq(Cat((upd_beat + 1)[:kb], r_id)),
                ]
                m.d.sync += upd_beat.eq(upd_beat + 1)
                with m.If(upd_beat == NB - 1):
                    m.d.sync += state.eq(S_OUT)

            with m.Case(S_OUT):
                m.d.comb += [self.out.valid.eq(1), out.kind.eq(r_kind), out.id.eq(r_id), out.new.eq(r_new)]
                with m.If(self.out.ready):
                    m.d.sync += state.eq(S_IDLE)

            with m.Case(S_SCORE):
                # A: address (cluster, beat); B: lane products; B2: adder tree + accumulate over beats;
                # C: count and reciprocal; D: score = (dot · R[count]) >> 16; E: store, min/max, Σ score·count
                issuing = iss_c < n
                m.d.comb += sums_rp.addr.eq(Cat(iss_b[:kb], iss_c[:IB]))
                m.d.sync += [vB.eq(issuing), bB.eq(iss_b), cB.eq(iss_c[:IB])]
                with m.If(issuing):
                    with m.If(iss_b == NB - 1):
                        m.d.sync += [iss_b.eq(0), iss_c.eq(iss_c + 1)]
                    with m.Else():
                        m.d.sync += iss_b.eq(iss_b + 1)
                m.d.sync += [p.eq(qlanes[8 * i:8 * i + 8].as_signed() * sums_rp.data[SB * i:SB * (i + 1)].as_signed())
                             for i, p in enumerate(prods)]
                m.d.sync += [vB2.eq(vB), bB2.eq(bB), cB2.eq(cB)]
                m.d.sync += vC.eq(vB2 & (bB2 == NB - 1))
                with m.If(vB2):
                    m.d.sync += dot.eq(dot_new)
                    with m.If(bB2 == NB - 1):
                        m.d.sync += [dotC.eq(dot_new), cC.eq(cB2)]
                m.d.sync += [vD.eq(vC), cD.eq(cC), dotD.eq(dotC), rD.eq(recip_rp.data), cntD.eq(one_cnt)]
                m.d.sync += [vE.eq(vD), cE.eq(cD), scoreE.eq((dotD * rD) >> 16), cntE.eq(cntD)]
                with m.If(vE):
                    m.d.comb += [score_wp.addr.eq(cE), score_wp.data.eq(scoreE), score_wp.en.eq(1)]
                    m.d.sync += sc.eq(sc + scoreE * cntE)
                    with m.If((cE == 0) | (scoreE < lo)):
                        m.d.sync += lo.eq(scoreE)
                    with m.If((cE == 0) | (scoreE > hi)):
                        m.d.sync += hi.eq(scoreE)
                with m.If(~issuing & ~vB & ~vB2 & ~vC & ~vD):
                    m.d.sync += state.eq(S_TH)

            with m.Case(S_TH):
                m.d.sync += [rs_q.eq(row_sum.as_unsigned()[:kv.rowsum_bits]), span_q.eq(hi - lo), state.eq(S_TH2)]

            with m.Case(S_TH2):
                m.d.sync += [th.eq((rs_q * kv.alpha_q) >> 8),
                             sh.eq(Mux(span_len > lg_b, span_len - lg_b, 0)),
                             mask.eq(0), visited.eq(0), link_c.eq(0), l_issue.eq(1), vL.eq(0), vM.eq(0),
                             state.eq(Mux(n == 0, S_END, S_LINK))]

            with m.Case(S_LINK):
                # L1: score − lo and count of cluster link_c; L2: its bucket list and weight (score − lo)·count;
                # L3: the weight into the weight memory
                m.d.sync += [vL.eq(l_issue), dL.eq(score_rp.data - lo), cntL.eq(one_cnt), cL.eq(link_c[:IB])]
                m.d.sync += [vM.eq(vL), wM.eq(dL * cntL), cM.eq(cL)]
                with m.If(vM):
                    m.d.comb += [w_wp.addr.eq(cM), w_wp.data.eq(wM), w_wp.en.eq(1)]
                with m.If(l_issue):
                    m.d.sync += link_c.eq(link_c + 1)
                    with m.If(link_c == n - 1):
                        m.d.sync += l_issue.eq(0)
                with m.If(vL):
                    m.d.comb += [next_wp.addr.eq(cL), next_wp.data.eq(Cat(head[bucket], mask.bit_select(bucket, 1))),
                                 next_wp.en.eq(1)]
                    m.d.sync += [head[bucket].eq(cL), mask.bit_select(bucket, 1).eq(1)]
                with m.If(~l_issue & ~vL):
                    m.d.sync += state.eq(S_WSTART)

            with m.Case(S_WSTART):
                m.d.sync += [ptr.eq(head[top]), mask.bit_select(top, 1).eq(0), rem.eq(th), state.eq(S_WALK)]

            with m.Case(S_WALK):
                m.d.comb += [self.out.valid.eq(1)]
                m.d.comb += [out.kind.eq(KIND_SEL), out.id.eq(ptr), out.new.eq(0)]
                with m.If(self.out.ready):
                    m.d.sync += [rem.eq(rem_next), visited.eq(visited + 1)]
                    with m.If(rem_next[-1] | (rem_next == 0)):          # Σ weights >= threshold: early exit
                        m.d.sync += state.eq(S_END)
                    with m.Elif(next_rp.data[IB]):
                        m.d.sync += ptr.eq(next_rp.data[:IB])
                    with m.Elif(mask != 0):
                        m.d.sync += [ptr.eq(head[top]), mask.bit_select(top, 1).eq(0)]
                    with m.Else():
                        m.d.sync += state.eq(S_END)

            with m.Case(S_END):
                m.d.comb += [self.out.valid.eq(1), out.kind.eq(KIND_END), out.id.eq(visited), out.new.eq(0)]
                with m.If(self.out.ready):
                    m.d.sync += state.eq(S_IDLE)
        return m
