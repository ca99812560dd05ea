// Board-level simulation harness (docs/board.md, "Board simulation"): the Verilator model of the board's
// simulation top (plain ports: clk, rst, uart_rx, uart_tx, sdram_*), an SDR SDRAM chip model with the
// datasheet's timing checked on every command, and the UART line bridged to a pseudo-terminal, so the host
// driver (tritium/board.py) talks to it exactly as to /dev/ttyUSB0.
//
// Built by tritium/board_sim.py (Verilator --cc --exe --build); "board_top.h" is generated there and
// defines TOP (the Verilated class) and includes its header.
//
//   board_sim --divisor D --clock-mhz F --stats FILE [--max-cycles N] [--timing NAME=VALUE]...
//
// prints "PTY <path>" on stdout once the pseudo-terminal is ready, then runs until SIGTERM/SIGINT (or
// --max-cycles), and writes FILE (JSON: cycles, bytes each way, SDRAM commands and timing violations).
//
// SDRAM model: 16-bit SDR, 4 banks x 8192 rows x 512 columns (32 MB), an ideal chip at the controller's
// clock: a command is registered at a rising edge; read data of a READ registered at edge n is on dq_i
// for the controller to sample at edge n+CL (and n+CL+1... for a burst); write data is taken at the edge
// of the WRITE (and the following edges of its burst) when dq_oe is high; DQM masks a write at its edge and
// a read with a latency of 2. The mode register sets the burst length (1, 2, 4, 8, full page), the CAS
// latency (2, 3) and single-location writes (A9). Timing limits are in ns (converted with --clock-mhz,
// rounded up to whole cycles): tritium/board_sim.py passes the part's datasheet figures from
// hw/sdram_timing.py with --timing (the defaults below are the same part's, AS4C32M16SB-7); the model checks
// the pins against them independently of the controller's own cycle arithmetic. Each violation is counted
// and the first 20 are printed to stderr with the cycle.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "board_top.h"
#include "verilated.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int) { g_stop = 1; }

// ------------------------------------------------------------------ SDRAM timing (ns / clocks)
struct SdramTiming {
    double tRCD = 21, tRP = 21, tRC = 63, tRAS = 42, tRRD = 14, tWR = 14, tRFC = 63, tMRD = 14;
    double tRAS_max = 100000;     // 100 us
    double tREFI = 7800;          // 8192 refreshes per 64 ms
    int postponed_refresh = 8;    // JEDEC: up to 8 refreshes may be postponed
    double power_up_ns = 200000;  // 200 us of NOP before the first command
    int init_refreshes = 8;       // AUTO REFRESH commands between PRECHARGE ALL and the first ACTIVE
    int min_tMRD_clk = 2;
    double min_tCK_cl2 = 10.0;  // CL2 needs tCK >= 10 ns
    double min_tCK_cl3 = 7.0;   // -7 grade: 143 MHz at CL3
    bool set(const std::string& name, double v) {
        std::map<std::string, double*> f = {{"rcd", &tRCD}, {"rp", &tRP},     {"rc", &tRC},
                                            {"ras", &tRAS}, {"rrd", &tRRD},   {"wr", &tWR},
                                            {"rfc", &tRFC}, {"mrd", &tMRD},   {"refi", &tREFI},
                                            {"init", &power_up_ns}, {"tck_cl2", &min_tCK_cl2},
                                            {"tck_cl3", &min_tCK_cl3}};
        if (name == "init_refreshes") return init_refreshes = (int)v, true;
        auto it = f.find(name);
        if (it == f.end()) return false;
        *it->second = v;
        return true;
    }
};

struct Sdram {
    static const int BANKS = 4, ROWS = 8192, COLS = 512;
    std::vector<uint16_t> mem;
    SdramTiming t;
    double tck;
    long cRCD, cRP, cRC, cRAS, cRRD, cWR, cRFC, cMRD, cRAS_max, cREFI_limit, c_power_up;
    // mode register
    int cl = 0, bl = 1, single_write = 0, mode_set = 0;
    // per bank
    int open_row[BANKS];
    long t_act[BANKS], t_pre[BANKS], t_last_write[BANKS];
    long t_last_act_any = -(1L << 40), t_ref = -(1L << 40), t_mrs = -(1L << 40);
    long t_first_ref_gap_start = -1;
    int refreshes_before_act = 0, precharge_all_seen = 0, any_act = 0;
    long max_ref_gap = 0;
    // bursts
    struct Burst {
        int active = 0, bank = 0, row = 0, col = 0, left = 0, is_write = 0, autopre = 0;
        long start = 0;
    } burst;
    struct ReadOut {
        long edge;
        uint16_t data;
        int valid;
    };
    std::deque<ReadOut> reads;  // words the chip presents, by the edge that samples them
    std::map<long, int> read_mask;  // edge -> dqm of a read (latency 2)
    // statistics
    std::map<std::string, long> commands;
    std::map<std::string, long> violations;
    int printed = 0;
    long first_cmd = -1;

    Sdram(double clock_mhz, const SdramTiming& timing) : mem((size_t)BANKS * ROWS * COLS), t(timing) {
        tck = 1000.0 / clock_mhz;
        // whole cycles covering ns (a command k cycles after another is k*tck ns after it)
        auto c = [&](double ns) { return (long)std::ceil(ns / tck - 1e-9); };
        cRCD = c(t.tRCD), cRP = c(t.tRP), cRC = c(t.tRC), cRAS = c(t.tRAS), cRRD = c(t.tRRD);
        cWR = c(t.tWR), cRFC = c(t.tRFC), cMRD = std::max<long>(c(t.tMRD), t.min_tMRD_clk);
        cRAS_max = (long)(t.tRAS_max / tck);
        cREFI_limit = (long)(t.tREFI * t.postponed_refresh / tck);
        c_power_up = c(t.power_up_ns);
        // a deterministic non-zero fill: a read of memory nobody wrote does not give zeros by luck
        uint32_t x = 0x2545F491u;
        for (auto& w : mem) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            w = (uint16_t)x;
        }
        for (int b = 0; b < BANKS; b++) open_row[b] = -1, t_act[b] = t_pre[b] = t_last_write[b] = -(1L << 40);
    }
    void violate(const char* what, long cyc, const std::string& detail) {
        violations[what]++;
        if (printed < 20) {
            fprintf(stderr, "[sdram] timing violation %s at cycle %ld: %s\n", what, cyc, detail.c_str());
            if (++printed == 20) fprintf(stderr, "[sdram] (further violations counted, not printed)\n");
        }
    }
    size_t index(int bank, int row, int col) const { return ((size_t)bank * ROWS + row) * COLS + col; }

    void precharge(int bank, long cyc) {
        if (open_row[bank] >= 0) {
            if (cyc - t_act[bank] < cRAS)
                violate("tRAS", cyc, "precharge " + std::to_string(cyc - t_act[bank]) + " cycles after activate");
            if (cyc - t_last_write[bank] < cWR)
                violate("tWR", cyc, "precharge " + std::to_string(cyc - t_last_write[bank]) + " cycles after write data");
        }
        open_row[bank] = -1;
        t_pre[bank] = cyc;
    }
    // a burst ends at edge `cyc` (its last beat was at cyc - 1); with auto precharge the chip closes the row
    // itself, tWR after the last write data and not before tRAS
    void end_burst(long cyc) {
        if (burst.active && burst.autopre) {
            int b = burst.bank;
            long at = burst.is_write ? cyc - 1 + cWR : cyc;
            if (at < t_act[b] + cRAS) at = t_act[b] + cRAS;
            open_row[b] = -1;
            t_pre[b] = at;
        }
        burst.active = 0;
    }

    // one rising edge: the pins as the controller drives them before the edge
    void edge(long cyc, int cke, int csn, int rasn, int casn, int wen, int ba, int a, int dqm, int dq_oe,
              int dq_o) {
        if (!cke) return;
        int cmd = csn ? 7 : (rasn << 2) | (casn << 1) | wen;
        // READ, WRITE, BURST TERMINATE and PRECHARGE cut a running burst before its beat at this edge
        if (burst.active && (cmd == 4 || cmd == 5 || cmd == 6 || cmd == 2)) end_burst(cyc);
        // the running burst's data beat at this edge
        if (burst.active) {
            if (burst.is_write) {
                if (!dq_oe) violate("write-data", cyc, "write burst beat without dq_oe");
                size_t i = index(burst.bank, burst.row, burst.col);
                uint16_t m = (dqm & 1 ? 0x00FF : 0) | (dqm & 2 ? 0xFF00 : 0);
                mem[i] = (uint16_t)((mem[i] & m) | (dq_o & ~m));
                t_last_write[burst.bank] = cyc;
            } else {
                reads.push_back({cyc + cl, mem[index(burst.bank, burst.row, burst.col)], 1});
                if (dqm) read_mask[cyc + 2] = dqm;
            }
            burst.col = (burst.col & ~(bl - 1)) | ((burst.col + 1) & (bl - 1));
            if (--burst.left == 0) end_burst(cyc + 1);
        }
        if (cmd == 7) return;  // NOP or deselect
        if (first_cmd < 0) {
            first_cmd = cyc;
            if (cyc < c_power_up)
                violate("power-up", cyc, "first command before the power-up wait (" + std::to_string(cyc) + " cycles)");
        }
        if (cyc - t_mrs < cMRD) violate("tMRD", cyc, "command within tMRD of MODE REGISTER SET");
        if (cyc - t_ref < cRFC && cmd != 7) violate("tRFC", cyc, "command within tRFC of AUTO REFRESH");
        int row = a & 0x1FFF, col = a & 0x1FF, ap = (a >> 10) & 1;
        switch (cmd) {
            case 3: {  // ACTIVE
                commands["ACTIVE"]++;
                if (!mode_set) violate("init", cyc, "ACTIVE before MODE REGISTER SET");
                if (!any_act && (refreshes_before_act < t.init_refreshes || !precharge_all_seen))
                    violate("init", cyc, "ACTIVE before PRECHARGE ALL and " + std::to_string(t.init_refreshes) +
                                             " AUTO REFRESH");
                any_act = 1;
                if (open_row[ba] >= 0) violate("protocol", cyc, "ACTIVE to a bank with an open row");
                if (cyc - t_pre[ba] < cRP) violate("tRP", cyc, "activate " + std::to_string(cyc - t_pre[ba]) + " cycles after precharge");
                if (cyc - t_act[ba] < cRC) violate("tRC", cyc, "activate " + std::to_string(cyc - t_act[ba]) + " cycles after activate, same bank");
                if (cyc - t_last_act_any < cRRD) violate("tRRD", cyc, "activate " + std::to_string(cyc - t_last_act_any) + " cycles after another bank's");
                open_row[ba] = row, t_act[ba] = cyc, t_last_act_any = cyc;
                break;
            }
            case 5:    // READ
            case 4: {  // WRITE
                int wr = cmd == 4;
                commands[wr ? "WRITE" : "READ"]++;
                if (open_row[ba] < 0) {
                    violate("protocol", cyc, std::string(wr ? "WRITE" : "READ") + " to a bank without an open row");
                    break;
                }
                if (cyc - t_act[ba] < cRCD) violate("tRCD", cyc, std::string(wr ? "write " : "read ") + std::to_string(cyc - t_act[ba]) + " cycles after activate");
                burst.active = 1, burst.bank = ba, burst.row = open_row[ba], burst.col = col;
                burst.is_write = wr, burst.autopre = ap, burst.start = cyc;
                burst.left = (wr && single_write) ? 1 : bl;
                // this edge's beat
                if (wr) {
                    if (!dq_oe) violate("write-data", cyc, "WRITE without dq_oe");
                    size_t i = index(ba, burst.row, col);
                    uint16_t m = (dqm & 1 ? 0x00FF : 0) | (dqm & 2 ? 0xFF00 : 0);
                    mem[i] = (uint16_t)((mem[i] & m) | (dq_o & ~m));
                    t_last_write[ba] = cyc;
                } else {
                    reads.push_back({cyc + cl, mem[index(ba, burst.row, col)], 1});
                    if (dqm) read_mask[cyc + 2] = dqm;
                }
                burst.col = (burst.col & ~(bl - 1)) | ((burst.col + 1) & (bl - 1));
                if (--burst.left == 0) end_burst(cyc + 1);
                break;
            }
            case 2: {  // PRECHARGE
                commands["PRECHARGE"]++;
                if (ap) {
                    precharge_all_seen = 1;
                    for (int b = 0; b < BANKS; b++) precharge(b, cyc);
                } else {
                    precharge(ba, cyc);
                }
                break;
            }
            case 1: {  // AUTO REFRESH
                commands["REFRESH"]++;
                for (int b = 0; b < BANKS; b++)
                    if (open_row[b] >= 0) violate("protocol", cyc, "AUTO REFRESH with an open row");
                for (int b = 0; b < BANKS; b++)
                    if (cyc - t_pre[b] < cRP) violate("tRP", cyc, "refresh within tRP of a precharge");
                if (t_ref > 0) {
                    long gap = cyc - t_ref;
                    if (gap > max_ref_gap) max_ref_gap = gap;
                }
                if (!any_act) refreshes_before_act++;
                t_ref = cyc;
                break;
            }
            case 0: {  // LOAD MODE REGISTER
                commands["MODE"]++;
                for (int b = 0; b < BANKS; b++)
                    if (open_row[b] >= 0) violate("protocol", cyc, "MODE REGISTER SET with an open row");
                int blc = a & 7;
                bl = blc == 7 ? COLS : (blc < 4 ? 1 << blc : 1);
                if (blc >= 4 && blc != 7) violate("mode", cyc, "reserved burst length");
                if (a & 8) violate("mode", cyc, "interleaved bursts are not modeled");
                cl = (a >> 4) & 7;
                if (cl != 2 && cl != 3) violate("mode", cyc, "CAS latency " + std::to_string(cl));
                if (cl == 2 && tck < t.min_tCK_cl2) violate("mode", cyc, "CL2 at this clock is outside the datasheet");
                if (cl == 3 && tck < t.min_tCK_cl3) violate("mode", cyc, "clock faster than the part");
                single_write = (a >> 9) & 1;
                mode_set = 1;
                t_mrs = cyc;
                break;
            }
            case 6: {  // BURST TERMINATE
                commands["BURST_STOP"]++;
                burst.active = 0;
                break;
            }
        }
    }
    // checks that run every cycle (row open too long, refresh overdue)
    void tick(long cyc) {
        if (any_act && t_ref > 0 && cyc - t_ref > cREFI_limit && cyc - t_ref == cREFI_limit + 1)
            violate("refresh", cyc, "no AUTO REFRESH for " + std::to_string(cyc - t_ref) + " cycles (more than 8 x tREFI)");
        if ((cyc & 1023) == 0)
            for (int b = 0; b < BANKS; b++)
                if (open_row[b] >= 0 && cyc - t_act[b] > cRAS_max && cyc - t_act[b] <= cRAS_max + 1024)
                    violate("tRAS_max", cyc, "row open longer than 100 us");
    }
    // the word on dq_i for the controller to sample at edge `cyc`
    uint16_t dq_for(long cyc, int* driven) {
        while (!reads.empty() && reads.front().edge < cyc) reads.pop_front();
        *driven = 0;
        uint16_t v = 0;
        if (!reads.empty() && reads.front().edge == cyc) {
            v = reads.front().data;
            *driven = 1;
            auto m = read_mask.find(cyc);
            if (m != read_mask.end()) {
                if (m->second & 1) v = (uint16_t)((v & 0xFF00) | 0x00AA);  // high-Z: not a real value
                if (m->second & 2) v = (uint16_t)((v & 0x00FF) | 0xAA00);
                read_mask.erase(m);
            }
        }
        return v;
    }
};

// ------------------------------------------------------------------ UART line
struct UartTx {  // host -> board (drives uart_rx)
    int divisor;
    std::deque<uint8_t> q;
    int bit = -1;  // -1 idle; 0 start; 1..8 data; 9 stop
    int count = 0;
    uint8_t cur = 0;
    long sent = 0;
    int level() const {
        if (bit < 0) return 1;
        if (bit == 0) return 0;
        if (bit <= 8) return (cur >> (bit - 1)) & 1;
        return 1;
    }
    void step() {  // called once per clock, after the level was presented for this cycle
        if (bit < 0) {
            if (q.empty()) return;
            cur = q.front(), q.pop_front(), bit = 0, count = 0;
            return;
        }
        if (++count == divisor) {
            count = 0;
            if (++bit == 10) bit = -1, sent++;
        }
    }
    bool idle() const { return bit < 0 && q.empty(); }
};

struct UartRx {  // board -> host (samples uart_tx)
    int divisor;
    int state = -1;  // -1 idle; else cycles since the start edge
    int prev = 1;
    uint8_t cur = 0;
    long received = 0, framing_errors = 0;
    // returns a byte (0..255) when one completes, else -1
    int step(int line) {
        int out = -1;
        if (state < 0) {
            if (prev == 1 && line == 0) state = 0, cur = 0;
        } else {
            state++;
            int mid = divisor / 2;
            int k = (state - mid) / divisor;  // bit index sampled at mid + k*divisor
            if (state >= mid && (state - mid) % divisor == 0) {
                if (k == 0) {
                    if (line != 0) state = -1;  // a glitch, not a start bit
                } else if (k <= 8) {
                    cur |= (uint8_t)(line << (k - 1));
                } else {
                    if (line != 1) framing_errors++;
                    out = cur;
                    received++;
                    state = -1;
                }
            }
        }
        prev = line;
        return out;
    }
    bool idle() const { return state < 0; }
};

static void usage() {
    fprintf(stderr, "usage: board_sim --divisor D --clock-mhz F --stats FILE [--max-cycles N]\n");
    exit(2);
}

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    int divisor = 0;
    double clock_mhz = 0;
    const char* stats_path = nullptr;
    long max_cycles = -1;
    SdramTiming timing;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--divisor" && i + 1 < argc) divisor = atoi(argv[++i]);
        else if (a == "--clock-mhz" && i + 1 < argc) clock_mhz = atof(argv[++i]);
        else if (a == "--stats" && i + 1 < argc) stats_path = argv[++i];
        else if (a == "--max-cycles" && i + 1 < argc) max_cycles = atol(argv[++i]);
        else if (a == "--timing" && i + 1 < argc) {
            std::string kv = argv[++i];
            size_t eq = kv.find('=');
            if (eq == std::string::npos || !timing.set(kv.substr(0, eq), atof(kv.c_str() + eq + 1))) {
                fprintf(stderr, "board_sim: unknown timing %s\n", kv.c_str());
                return 2;
            }
        }
        else if (a.rfind("+verilator", 0) == 0) continue;
        else usage();
    }
    if (divisor < 2 || clock_mhz <= 0 || !stats_path) usage();
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);

    // the pseudo-terminal: the driver opens the slave like a serial port
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) {
        perror("board_sim: posix_openpt");
        return 1;
    }
    const char* slave_name = ptsname(master);
    int slave = open(slave_name, O_RDWR | O_NOCTTY);  // kept open: the master never sees a hang-up
    struct termios tio;
    if (slave < 0 || tcgetattr(slave, &tio)) {
        perror("board_sim: pty slave");
        return 1;
    }
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    printf("PTY %s\n", slave_name);
    fflush(stdout);

    TOP* top = new TOP;
    Sdram sdram(clock_mhz, timing);
    UartTx tx{divisor};
    UartRx rx{divisor};
    std::vector<uint8_t> out;  // board -> host bytes not yet written to the pty
    long cyc = 0, idle_cycles = 0;

    top->clk = 0;
    top->rst = 1;
    top->uart_rx = 1;
    top->sdram_dq_i = 0;
    top->eval();  // registers at their initial values before the first edge
    uint8_t buf[4096];
    while (!g_stop && (max_cycles < 0 || cyc < max_cycles)) {
        if (cyc == 16) top->rst = 0;
        // the pins as they are before the rising edge (every output of the top is a register, so they are
        // what the previous edge left): the chip registers them at this edge
        sdram.edge(cyc, top->sdram_cke, top->sdram_csn, top->sdram_rasn, top->sdram_casn, top->sdram_wen,
                   top->sdram_ba, top->sdram_a, top->sdram_dqm, top->sdram_dq_oe, top->sdram_dq_o);
        // inputs for the edge at the end of this cycle
        int driven;
        top->sdram_dq_i = sdram.dq_for(cyc, &driven);
        top->uart_rx = tx.level();
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        sdram.tick(cyc);
        int b = rx.step(top->uart_tx);
        if (b >= 0) out.push_back((uint8_t)b);
        tx.step();
        cyc++;
        // the pseudo-terminal: flush output, fetch input when the line is about to need it
        bool busy_line = !tx.idle() || !rx.idle() || !out.empty();
        idle_cycles = busy_line ? 0 : idle_cycles + 1;
        if (!out.empty()) {
            ssize_t n = write(master, out.data(), out.size());
            if (n > 0) out.erase(out.begin(), out.begin() + n);
        }
        if (tx.q.empty() && (cyc & 15) == 0) {
            // nothing on the line for 200,000 cycles: the PC is busy (a host op); wait for it up to 1 ms per
            // 1024 cycles instead of spinning (the board only waits for the PC then: it polls while the
            // accelerator runs)
            if (idle_cycles > 200000 && (cyc & 1023) == 0) {
                struct pollfd p = {master, POLLIN, 0};
                poll(&p, 1, 1);
            }
            ssize_t n = read(master, buf, sizeof buf);
            if (n > 0) tx.q.insert(tx.q.end(), buf, buf + n);
        }
    }
    top->final();
    FILE* f = fopen(stats_path, "w");
    if (f) {
        fprintf(f, "{\"cycles\": %ld, \"host_to_board_bytes\": %ld, \"board_to_host_bytes\": %ld,\n", cyc,
                tx.sent, rx.received);
        fprintf(f, " \"framing_errors\": %ld, \"divisor\": %d, \"clock_mhz\": %g,\n", rx.framing_errors, divisor,
                clock_mhz);
        fprintf(f, " \"sdram\": {\"cas_latency\": %d, \"burst_length\": %d, \"max_refresh_gap_cycles\": %ld,\n",
                sdram.cl, sdram.bl, sdram.max_ref_gap);
        fprintf(f, "  \"limits_cycles\": {\"tRCD\": %ld, \"tRP\": %ld, \"tRC\": %ld, \"tRAS\": %ld, \"tRRD\": %ld, "
                   "\"tWR\": %ld, \"tRFC\": %ld, \"tMRD\": %ld, \"refresh_gap\": %ld, \"power_up\": %ld},\n",
                sdram.cRCD, sdram.cRP, sdram.cRC, sdram.cRAS, sdram.cRRD, sdram.cWR, sdram.cRFC, sdram.cMRD,
                sdram.cREFI_limit, sdram.c_power_up);
        fprintf(f, "  \"commands\": {");
        bool first = true;
        for (auto& kv : sdram.commands) {
            fprintf(f, "%s\"%s\": %ld", first ? "" : ", ", kv.first.c_str(), kv.second);
            first = false;
        }
        fprintf(f, "},\n  \"violations\": {");
        first = true;
        for (auto& kv : sdram.violations) {
            fprintf(f, "%s\"%s\": %ld", first ? "" : ", ", kv.first.c_str(), kv.second);
            first = false;
        }
        fprintf(f, "}}}\n");
        fclose(f);
    }
    delete top;
    close(slave);
    close(master);
    return 0;
}
