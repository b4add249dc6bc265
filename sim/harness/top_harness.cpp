// Direct Verilator harness for the accelerator top (hw/accelerator.py): the fast way to run
// programs on the RTL. Each AXI4 master port (the memory channels and the instruction port)
// is served by a memory model in C++ (one beat per cycle per port after a fixed read
// latency, optional random stalls from a seeded generator); the host side is an AXI4-Lite
// master on the control slave. sim/top_harness.py builds this file with the generated
// harness_ports.h (the port list of one configuration) and drives it over stdin/stdout, one
// command per line, one answer line each:
//
//   mem P N          size port P's memory to N bytes (zeros)          -> ok
//   write P A HEX    bytes into port P's memory at A                  -> ok
//   read P A N       N bytes of port P's memory at A                  -> HEX
//   lw A V           AXI4-Lite write of V to register A               -> ok
//   lr A             AXI4-Lite read of register A                     -> V
//   wait N           run until the interrupt is high, at most N cycles -> CYCLES IRQ
//   stall P SEED     memory ports pause with probability P per cycle  -> ok
//   latency N        cycles from a read address to its first data beat -> ok
//   trace PATH|off   start/stop a waveform (FST; VCD without liblz4)  -> ok
//   cycles           clock cycles simulated since the start           -> N
//   quit
// Errors answer "error <reason>".
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "Vllmacc_top.h"
#include "harness_ports.h"
#include "verilated.h"
#if LLMACC_FST
#include "verilated_fst_c.h"
using Trace = VerilatedFstC;
#else
#include "verilated_vcd_c.h"
using Trace = VerilatedVcdC;
#endif

namespace {

// -- moving data words between byte arrays and Verilator port types ------------------------
void put_word(IData& p, const uint8_t* b) { uint32_t v; std::memcpy(&v, b, 4); p = v; }
void put_word(QData& p, const uint8_t* b) { uint64_t v; std::memcpy(&v, b, 8); p = v; }
template <std::size_t N> void put_word(VlWide<N>& p, const uint8_t* b) {
    for (std::size_t i = 0; i < N; ++i) { uint32_t v; std::memcpy(&v, b + 4 * i, 4); p[i] = v; }
}
void get_word(IData p, uint8_t* b) { uint32_t v = p; std::memcpy(b, &v, 4); }
void get_word(QData p, uint8_t* b) { uint64_t v = p; std::memcpy(b, &v, 8); }
template <std::size_t N> void get_word(const VlWide<N>& p, uint8_t* b) {
    for (std::size_t i = 0; i < N; ++i) { uint32_t v = p[i]; std::memcpy(b + 4 * i, &v, 4); }
}

constexpr int BYTES = LLMACC_DATA_BYTES;

struct Burst {
    uint64_t addr;
    int beats;
    uint64_t ready_at;  // read: cycle of the first data beat
    bool bad;
};

// What crossed one port at one rising edge.
struct Edge {
    bool ar = false, aw = false, w = false, r = false, b = false;
    uint64_t araddr = 0, awaddr = 0;
    int arlen = 0, awlen = 0;
    uint8_t wdata[BYTES];
    uint64_t wstrb = 0;
};

// An AXI4 slave memory: pipelined reads (one beat per cycle after `latency`), writes
// answered one cycle after their last beat, random stalls on every channel.
struct Slave {
    std::vector<uint8_t> mem;
    std::deque<Burst> reads, writes;
    std::deque<std::pair<uint64_t, bool>> responses;  // (cycle, error)
    bool arready = false, awready = false, wready = false, rvalid = false, rlast = false,
         bvalid = false;
    int rresp = 0, bresp = 0;
    uint8_t rbeat[BYTES] = {};

    bool in_range(uint64_t addr) const { return addr + BYTES <= mem.size(); }

    void update(const Edge& e, uint64_t now, int latency, std::mt19937_64& rng, double stall) {
        std::uniform_real_distribution<double> u(0.0, 1.0);
        auto pause = [&] { return stall > 0 && u(rng) < stall; };
        if (e.ar) reads.push_back({e.araddr, e.arlen + 1, now + latency, false});
        if (e.aw) writes.push_back({e.awaddr, e.awlen + 1, 0, false});
        if (e.w) {
            Burst& wb = writes.front();
            if (in_range(wb.addr)) {
                for (int i = 0; i < BYTES; ++i)
                    if (e.wstrb >> i & 1) mem[wb.addr + i] = e.wdata[i];
            } else {
                wb.bad = true;
            }
            wb.addr += BYTES;
            if (--wb.beats == 0) {
                responses.push_back({now + 1, wb.bad});
                writes.pop_front();
            }
        }
        if (e.r) {
            rvalid = false;
            Burst& rb = reads.front();
            rb.addr += BYTES;
            if (--rb.beats == 0) reads.pop_front();
        }
        if (e.b) bvalid = false;
        if (!rvalid && !reads.empty() && reads.front().ready_at <= now && !pause()) {
            const Burst& rb = reads.front();
            bool ok = in_range(rb.addr);
            if (ok) std::memcpy(rbeat, &mem[rb.addr], BYTES);
            else std::memset(rbeat, 0, BYTES);
            rresp = ok ? 0 : 3;  // DECERR off the end of the memory
            rlast = rb.beats == 1;
            rvalid = true;
        }
        if (!bvalid && !responses.empty() && responses.front().first <= now && !pause()) {
            bresp = responses.front().second ? 3 : 0;
            responses.pop_front();
            bvalid = true;
        }
        arready = !pause();
        awready = !pause();
        wready = !writes.empty() && !pause();
    }
};

#define DEFINE_PORT(P)                                                                      \
    void drive_##P(Vllmacc_top* t, const Slave& s) {                                        \
        t->P##___05Farready = s.arready; t->P##___05Fawready = s.awready;                           \
        t->P##___05Fwready = s.wready; t->P##___05Frvalid = s.rvalid; t->P##___05Frlast = s.rlast;      \
        t->P##___05Frresp = s.rresp; t->P##___05Frid = 0; put_word(t->P##___05Frdata, s.rbeat);         \
        t->P##___05Fbvalid = s.bvalid; t->P##___05Fbresp = s.bresp; t->P##___05Fbid = 0;                \
    }                                                                                       \
    void sample_##P(Vllmacc_top* t, const Slave& s, Edge& e) {                              \
        e.ar = t->P##___05Farvalid && s.arready; e.araddr = t->P##___05Faraddr;                     \
        e.arlen = t->P##___05Farlen; e.aw = t->P##___05Fawvalid && s.awready;                       \
        e.awaddr = t->P##___05Fawaddr; e.awlen = t->P##___05Fawlen;                                 \
        e.w = t->P##___05Fwvalid && s.wready;                                                   \
        if (e.w) { get_word(t->P##___05Fwdata, e.wdata); e.wstrb = t->P##___05Fwstrb; }             \
        e.r = s.rvalid && t->P##___05Frready; e.b = s.bvalid && t->P##___05Fbready;                 \
    }
#define X(I, P) DEFINE_PORT(P)
LLMACC_PORTS(X)
#undef X

class Harness {
  public:
    Harness() : top(new Vllmacc_top), slaves(LLMACC_NPORTS) {
        top->clk = 0;
        top->rst = 1;
        for (int i = 0; i < 4; ++i) step([] {});
        top->rst = 0;
        step([] {});
    }
    ~Harness() { close_trace(); top->final(); }

    // One clock cycle: inputs from the slaves, settle, `at_edge` sees the settled outputs
    // just before the rising edge, then the edge, then the slaves take what crossed.
    template <class F> void step(F&& at_edge) {
#define X(I, P) drive_##P(top.get(), slaves[I]);
        LLMACC_PORTS(X)
#undef X
        top->clk = 0;
        top->eval();
        if (fst) fst->dump(2 * now);
        Edge edges[LLMACC_NPORTS];
#define X(I, P) sample_##P(top.get(), slaves[I], edges[I]);
        LLMACC_PORTS(X)
#undef X
        at_edge();
        top->clk = 1;
        top->eval();
        if (fst) fst->dump(2 * now + 1);
        for (int i = 0; i < LLMACC_NPORTS; ++i)
            slaves[i].update(edges[i], now, latency, rng, stall);
        ++now;
    }

    void lite_write(uint32_t addr, uint32_t value) {
        top->s_axi_control___05Fawaddr = addr; top->s_axi_control___05Fawvalid = 1;
        top->s_axi_control___05Fwdata = value; top->s_axi_control___05Fwstrb = 0xF;
        top->s_axi_control___05Fwvalid = 1; top->s_axi_control___05Fbready = 1;
        bool done = false;
        while (!done) step([&] { done = top->s_axi_control___05Fawready && top->s_axi_control___05Fwready; });
        top->s_axi_control___05Fawvalid = 0; top->s_axi_control___05Fwvalid = 0;
        done = false;
        while (!done) step([&] { done = top->s_axi_control___05Fbvalid; });
        top->s_axi_control___05Fbready = 0;
    }

    uint32_t lite_read(uint32_t addr) {
        top->s_axi_control___05Faraddr = addr; top->s_axi_control___05Farvalid = 1;
        top->s_axi_control___05Frready = 1;
        bool done = false;
        while (!done) step([&] { done = top->s_axi_control___05Farready; });
        top->s_axi_control___05Farvalid = 0;
        uint32_t value = 0;
        done = false;
        while (!done) step([&] { done = top->s_axi_control___05Frvalid; value = top->s_axi_control___05Frdata; });
        top->s_axi_control___05Frready = 0;
        return value;
    }

    uint64_t wait_interrupt(uint64_t max_cycles, bool& high) {
        uint64_t n = 0;
        high = false;
        while (n < max_cycles && !high) { step([&] { high = top->__SYM__interrupt; }); ++n; }
        return n;
    }

    void open_trace(const std::string& path) {
        close_trace();
        fst = std::make_unique<Trace>();
        top->trace(fst.get(), 99);
        fst->open(path.c_str());
    }
    void close_trace() { if (fst) { fst->close(); fst.reset(); } }

    std::unique_ptr<Vllmacc_top> top;
    std::vector<Slave> slaves;
    std::unique_ptr<Trace> fst;
    uint64_t now = 0;
    int latency = 1;
    double stall = 0.0;
    std::mt19937_64 rng{1};
};

std::string to_hex(const uint8_t* p, std::size_t n) {
    static const char* digits = "0123456789abcdef";
    std::string s(2 * n, '0');
    for (std::size_t i = 0; i < n; ++i) { s[2 * i] = digits[p[i] >> 4]; s[2 * i + 1] = digits[p[i] & 15]; }
    return s;
}

int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    Verilated::traceEverOn(true);
    Harness h;
    std::ios::sync_with_stdio(false);
    std::string line;
    auto answer = [](const std::string& s) { std::cout << s << '\n' << std::flush; };
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string op;
        in >> op;
        auto port = [&](int p) -> Slave* {
            if (p < 0 || p >= LLMACC_NPORTS) return nullptr;
            return &h.slaves[p];
        };
        if (op == "quit") break;
        if (op == "mem") {
            int p; uint64_t n; in >> p >> n;
            Slave* s = port(p);
            if (!s) { answer("error no port " + std::to_string(p)); continue; }
            s->mem.assign(n, 0);
            answer("ok");
        } else if (op == "write" || op == "read") {
            int p; uint64_t a; in >> p >> a;
            Slave* s = port(p);
            if (!s) { answer("error no port " + std::to_string(p)); continue; }
            if (op == "write") {
                std::string hex; in >> hex;
                uint64_t n = hex.size() / 2;
                if (a + n > s->mem.size()) { answer("error write past the end of port " + std::to_string(p)); continue; }
                bool good = hex.size() % 2 == 0;
                for (uint64_t i = 0; good && i < n; ++i) {
                    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
                    good = hi >= 0 && lo >= 0;
                    s->mem[a + i] = uint8_t(hi << 4 | lo);
                }
                answer(good ? "ok" : "error bad hex");
            } else {
                uint64_t n; in >> n;
                if (a + n > s->mem.size()) { answer("error read past the end of port " + std::to_string(p)); continue; }
                answer(to_hex(s->mem.data() + a, n));
            }
        } else if (op == "lw") {
            uint32_t a, v; in >> a >> v;
            h.lite_write(a, v);
            answer("ok");
        } else if (op == "lr") {
            uint32_t a; in >> a;
            answer(std::to_string(h.lite_read(a)));
        } else if (op == "wait") {
            uint64_t n; in >> n;
            bool high;
            uint64_t took = h.wait_interrupt(n, high);
            answer(std::to_string(took) + (high ? " 1" : " 0"));
        } else if (op == "stall") {
            double p; uint64_t seed; in >> p >> seed;
            h.stall = p; h.rng.seed(seed);
            answer("ok");
        } else if (op == "latency") {
            in >> h.latency;
            answer("ok");
        } else if (op == "trace") {
            std::string path; in >> path;
            if (path == "off") h.close_trace(); else h.open_trace(path);
            answer("ok");
        } else if (op == "cycles") {
            answer(std::to_string(h.now));
        } else {
            answer("error unknown command " + op);
        }
    }
    return 0;
}
