"""The SASS report (supcon_fast/bench/sass*.py): parsing, loops, the path walk and the model on small
hand-written samples with hand-counted answers. Compiling the real kernels is one slow test
(skipped without nvcc)."""
from __future__ import annotations

import json
import math

import pytest

from supcon_fast.bench import sass, sass_build, sass_model
from supcon_fast.bench.sass_cfg import Function, Loop, LoopSpec, find_loops, parse_ptxas, parse_sass, walk_iteration

# cuobjdump -sass style: a loop (0x40 .. 0xe0) with an `if` (0x80 skips 0x90 .. 0xb0), an inner
# copy loop unrolled by two (0xc0 .. 0x100), and the trap after EXIT (a branch to itself, no loop).
CUOBJDUMP = """
\tcode for sm_90
\t\tFunction : _Z4testPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
                                                                             /* 0x000fe40000000f00 */
        /*0010*/                   S2R R0, SR_TID.X ;                       /* 0x0000000000007919 */
        /*0020*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;      /* 0x000000100000780c */
        /*0030*/               @P0 EXIT ;                                   /* 0x000000000000094d */
        /*0040*/                   LDSM.16.M88.4 R4, [R2] ;                 /* 0x000000000204783b */
        /*0050*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;     /* 0x000000060408723c */
        /*0060*/                   HMMA.16816.F32.BF16 R12, R4, R7, R12 ;   /* 0x00000007040c723c */
        /*0070*/                   FSETP.NEU.AND P1, PT, R8, RZ, PT ;       /* 0x000000ff0800720b */
        /*0080*/              @!P1 BRA 0xc0 ;                               /* 0x0000000000109947 */
        /*0090*/                   MUFU.EX2 R9, R8 ;                        /* 0x0000000800097308 */
        /*00a0*/                   FADD R10, R10, R9 ;                      /* 0x000000090a0a7221 */
        /*00b0*/                   FMUL R10, R10, 0.5 ;                     /* 0x3f0000000a0a7820 */
        /*00c0*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;        /* 0x00000000 */
        /*00d0*/                   LDGSTS.E.BYPASS.128 [R3+0x10], desc[UR4][R4.64+0x10] ;  /* 0x00000000 */
        /*00e0*/                   IADD3 R5, R5, 0x2, RZ ;                  /* 0x0000000205057810 */
        /*00f0*/                   ISETP.LT.AND P2, PT, R5, 0x8, PT ;       /* 0x000000080500780c */
        /*0100*/               @P2 BRA 0xc0 ;                               /* 0xfffffffc00002947 */
        /*0110*/                   IADD3 R0, R0, 0x1, RZ ;                  /* 0x0000000100007810 */
        /*0120*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;      /* 0x000000100000780c */
        /*0130*/              @!P0 BRA 0x40 ;                               /* 0xfffffffc00c08947 */
        /*0140*/                   STG.E desc[UR4][R2.64], R10 ;            /* 0x0000000a02007986 */
        /*0150*/                   EXIT ;                                   /* 0x000000000000794d */
        /*0160*/                   BRA 0x160;                               /* 0xfffffffc00fc7947 */
"""

# nvdisasm -gi style: labels as branch targets, line records (one inlined), a record kept until the
# next one.
NVDISASM = """
//--------------------- .text._Z1kv --------------------------
\t.section\t.text._Z1kv,"ax",@progbits
_Z1kv:
.text._Z1kv:
\t//## File "/src/k.cuh", line 10
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
\t//## File "/src/k.cuh", line 61 inlined at "/src/k.cuh", line 165
\t//## File "/src/k.cuh", line 165
        /*0010*/                   MUFU.EX2 R1, R0 ;
        /*0020*/               @P0 BRA `(.L_x_1) ;
\t//## File "/src/k.cuh", line 12
        /*0030*/                   EXIT ;
.L_x_2:
        /*0040*/                   BRA `(.L_x_2);
"""

PTXAS = """ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'
ptxas info    : Function properties for _Z1kv
    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 214 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
ptxas info    : Compile time = 1.000 ms
ptxas info    : Compiling entry function '_Z2k2v' for 'sm_90'
ptxas info    : Function properties for _Z2k2v
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 116 registers, used 1 barriers
"""


class AddressPolicy:
    """Branch decisions by address; the inner loop at 0xc0 runs 8 source iterations (LDGSTS marks one)."""

    def __init__(self, take: set[int]):
        self.take = take

    def branch(self, fn, k):
        return fn.instrs[k].addr in self.take, "test"

    def loop_spec(self, ins, warp):
        return LoopSpec("copy", 8.0, "LDGSTS", 1.0) if ins.addr == 0x100 else None


def test_parse_cuobjdump():
    (name, instrs), = parse_sass(CUOBJDUMP).items()
    assert name == "_Z4testPf" and len(instrs) == 23
    assert [i.op for i in instrs[4:7]] == ["LDSM", "HMMA", "HMMA"]
    assert instrs[5].mods == ("16816", "F32", "BF16") and instrs[5].name == "HMMA.16816.F32.BF16"
    br = instrs[8]
    assert (br.op, br.pred, br.target, br.conditional, br.backward) == ("BRA", "@!P1", 0xC0, True, False)
    assert instrs[3].op == "EXIT" and instrs[3].conditional
    assert find_loops(instrs) == [Loop(0x40, 0x130), Loop(0xC0, 0x100)]  # not the trap at 0x160


def test_parse_nvdisasm_labels_and_lines():
    (name, instrs), = parse_sass(NVDISASM).items()
    assert name == "_Z1kv"
    assert instrs[0].loc == (("/src/k.cuh", 10),)
    assert instrs[1].loc == (("/src/k.cuh", 61), ("/src/k.cuh", 165))  # innermost first
    assert instrs[2].loc == instrs[1].loc and instrs[2].target == 0x10 and instrs[2].backward
    assert instrs[3].loc == (("/src/k.cuh", 12),)
    assert find_loops(instrs) == [Loop(0x10, 0x20)]


def test_parse_ptxas():
    out = parse_ptxas(PTXAS)
    assert out["_Z1kv"] == {"registers": 214, "spill_store_bytes": 8, "spill_load_bytes": 12, "stack_bytes": 0,
                            "static_smem_bytes": 1024, "barriers": 1}
    assert out["_Z2k2v"]["registers"] == 116 and out["_Z2k2v"]["static_smem_bytes"] == 0


def test_reconvergence_and_sides():
    fn = Function("_Z4testPf", parse_sass(CUOBJDUMP)["_Z4testPf"])
    k = fn.index[0x80]
    assert fn.instrs[fn.reconvergence(k)].addr == 0xC0
    assert [fn.instrs[i].addr for i in fn.side(k, False)] == [0x90, 0xA0, 0xB0]
    assert fn.side(k, True) == []


@pytest.mark.parametrize("take, total, mufu", [(set(), 31.0, 1.0), ({0x80}, 28.0, 0.0)])
def test_walk_one_iteration(take, total, mufu):
    """Head 0x40 to the backward branch at 0x130: LDSM, 2 HMMA, FSETP, BRA (5), [MUFU, FADD, FMUL]
    (3, unless the branch is taken), the inner loop (5 instructions a pass with 2 LDGSTS: 8 trips = 4
    passes = 20), IADD3, ISETP, BRA (3)."""
    fn = Function("_Z4testPf", parse_sass(CUOBJDUMP)["_Z4testPf"])
    w = walk_iteration(fn, fn.loops[0], AddressPolicy(take), warp=0)
    assert w.total == total
    assert w.counts["HMMA"] == 2 and w.counts["LDSM"] == 1 and w.counts["MUFU"] == mufu
    assert w.counts["LDGSTS"] == 8 and w.counts["ISETP"] == 5 and w.counts["BRA"] == 6
    assert w.names["LDGSTS.E.BYPASS.128"] == 8
    assert not w.flags
    assert {"addr": 0x80, "taken": bool(take), "why": "test"} in w.decisions
    assert any("copy: 8 trips, 2 per pass" in d["why"] for d in w.decisions)


def test_walk_flags_a_loop_without_a_rule():
    class NoLoops(AddressPolicy):
        def loop_spec(self, ins, warp):
            return None
    fn = Function("_Z4testPf", parse_sass(CUOBJDUMP)["_Z4testPf"])
    w = walk_iteration(fn, fn.loops[0], NoLoops(set()), warp=0)
    assert w.counts["LDGSTS"] == 2 and w.total == 16  # the inner loop counted once: 8 + 5 + 3
    assert w.flags == ["loop 0xc0-0x100 has no rule: counted once"]


def test_access_bytes():
    assert sass.access("LDSM.16.M88.4") == ("shared", 512)
    assert sass.access("LDSM.16.MT88.2") == ("shared", 256)
    assert sass.access("LDS.64") == ("shared", 256)
    assert sass.access("LDS") == ("shared", 128)
    assert sass.access("STS.U16") == ("shared", 64)
    assert sass.access("LDGSTS.E.BYPASS.128") == ("both", 512)
    assert sass.access("LDG.E.64.CONSTANT") == ("global", 256)
    assert sass.access("LD.E") == ("shared", 128)
    assert sass.access("HMMA.16816.F32.BF16") is None


def test_branch_rules_read_code_not_comments_or_arguments():
    """`same` as an argument or in a comment is not the positive-pair branch; `variant_in` passed on
    is not the variant branch."""
    def rule(text):
        return next((why for why, pat, _ in sass.BRANCH_RULES if pat.search(text)), None)
    assert rule("if (same) t -= variant_in ? ptx::ex2((s - aux) * LOG2E) : aux;").startswith("positive")
    assert rule("if (cs_lab[c] == ya) {").startswith("positive")
    assert rule("if (rg[h] != 0.f) hv += h_term(s, rg[h], rlse[h], raux[h], same, p.variant_in);") is None
    assert rule("pmax = variant_in ? quad_max(pmax) : pmax;").startswith("variant")
    assert rule("if (p.variant_in && pmn != NEG_INF) {").startswith("variant")
    assert rule("if (zr_chunk != kc) {").startswith("the anchor tile")
    assert rule("if (interior) {").startswith("interior tile")
    assert rule("const bool interior = c0 + BN <= p.N && (c0 + BN <= a0 || c0 >= a0 + BM);") is None
    assert rule("if (vec && full) {").startswith("a full tile")
    src = sass.Sources()
    src._files["/k.cuh"] = ["if (mn != NEG_INF) {  // the same in the 4 lanes of the row"]
    assert src.text((("/k.cuh", 1),)) == "if (mn != NEG_INF) {"


def test_loop_trips_per_warp():
    """for (i = threadIdx.x; i < bound; i += 128): the warp's first lane runs the most."""
    assert sass._by_thread(1024, 128, 0) == 8 and sass._by_thread(1024, 128, 3) == 8
    assert sass._by_thread(64, 128, 1) == 1 and sass._by_thread(64, 128, 2) == 0
    shape = {"BM": 64, "BN": 64, "NT": 128, "TD": 128, "D": 128}
    policy = sass.Policy(shape, sass.Sources())
    policy.sources._files["/k.cuh"] = ["for (int idx = threadIdx.x; idx < ROWS * CPR; idx += C::NT) {"]
    from supcon_fast.bench.sass_cfg import Instr
    spec = policy.loop_spec(Instr(0, "BRA", loc=(("/k.cuh", 1),)), warp=0)
    assert (spec.trips, spec.marker, spec.per_iter) == (8.0, "LDGSTS", 1.0)


def test_identify_kernels():
    k = sass_build.identify("_ZN11supcon_fast4cuda21supcon_bwd_mma_kernelINS0_6MmaBwdI13__nv_bfloat16Li128EEEEEv"
                            "NS0_12MmaBwdParamsIT_EE")
    assert (k["kind"], k["engine"], k["dtype"], k["ctype"]) == ("bwd", "mma", "bf16", "MmaBwd<__nv_bfloat16, 128>")
    assert k["smem_expr"] == "MmaBwd<__nv_bfloat16, 128>::bytes"
    k = sass_build.identify("_ZN11supcon_fast4cuda22supcon_fwd_tile_kernelINS0_10SimtEngineIfLi64EEEEEv"
                            "NS0_9FwdParamsIT_EE")
    assert (k["engine"], k["dtype"]) == ("ffma", "fp32")
    assert k["smem_expr"] == "SmemLayout<SimtEngine<float, 64>>::fwd_bytes"
    assert sass_build.identify("_ZN11supcon_fast4cuda26supcon_fwd_finalize_kernelINS0_10SimtEngineIdLi32EEEEEv") is None
    # the kernels' options versions (a trailing `true` template argument) are not modelled; `false` is the default
    k = sass_build.identify("_ZN11supcon_fast4cuda21supcon_fwd_mma_kernelINS0_6MmaFwdI13__nv_bfloat16Li256ELb0EEEEEv"
                            "NS0_12MmaFwdParamsIT_EE")
    assert k["ctype"] == "MmaFwd<__nv_bfloat16, 256>"
    assert sass_build.identify("_ZN11supcon_fast4cuda21supcon_fwd_mma_kernelINS0_6MmaFwdI13__nv_bfloat16Li256ELb1EEEEEv"
                               "NS0_12MmaFwdParamsIT_EE") is None
    assert sass_build.identify("_ZN11supcon_fast4cuda22supcon_fwd_tile_kernelINS0_8TcEngineI13__nv_bfloat16Li128EEELb1EEEv"
                               "NS0_9FwdParamsIT_EE") is None


def test_select_follows_the_host_rule():
    def rec(kind, engine, d, smem):
        return {"kind": kind, "engine": engine, "dtype": "bf16", "tile": {"D": d}, "smem_bytes": smem}
    recs = [rec("fwd", "mma", 64, 29184), rec("fwd", "mma", 128, 53760), rec("fwd", "mma", 256, 102912),
            rec("fwd", "wmma", 128, 88576), rec("bwd", "wmma", 128, 109312), rec("bwd", "wmma", 64, 84736)]
    assert sass.select(recs, "fwd", "bf16", 128, 232448)["tile"]["D"] == 128
    assert sass.select(recs, "fwd", "bf16", 200, 101376)["engine"] == "wmma"  # 99 KB part: no 256 mma
    assert sass.select(recs, "bwd", "bf16", 128, 232448)["tile"]["D"] == 128
    assert sass.select(recs, "bwd", "bf16", 128, 101376)["tile"]["D"] == 64   # the compact chunk


@pytest.mark.parametrize("regs, threads, smem, expect", [
    (214, 128, 54784, (2, "registers")),        # 6912 registers a warp: 9 warps
    (116, 128, 53760, (4, "registers")),        # 3840 a warp: 17 warps; smem also 4 (ties go to registers)
    (80, 256, 88576, (2, "shared memory")),     # 233472 // (88576 + 1024) = 2
    (24, 128, 0, (16, "warps")),                # 768 a warp: 85 warps by registers
    (32, 32, 0, (32, "blocks")),
    (32, 128, 240000, (0, "shared memory")),    # over the 227 KB a block may have
])
def test_blocks_per_sm(regs, threads, smem, expect):
    assert sass_model.blocks_per_sm(regs, threads, smem) == expect


def test_kernel_time_by_hand():
    """133 blocks of 10 tiles on 132 slots: makespan 20 tiles, ideal 1330 / 132."""
    per_tile = {"instructions": 4000, "hmma": 100, "mufu": 50, "smem_bytes": 100_000, "global_bytes": 20_000}
    t = sass_model.kernel_time(per_tile, [10] * 133, bps=1)
    tiles, clk = 1330, 1.98e9 * 132
    assert t["terms_ms"]["tensor"] == pytest.approx(100 * 4096 * tiles / 790e12 * 1e3)
    assert t["terms_ms"]["issue"] == pytest.approx(4000 * tiles / (4 * clk) * 1e3)      # 0.02035 ms
    assert t["terms_ms"]["mufu"] == pytest.approx(50 * 32 * tiles / (16 * clk) * 1e3)
    assert t["terms_ms"]["shared_memory"] == pytest.approx(100_000 * tiles / (128 * clk) * 1e3)  # 0.0039
    assert t["terms_ms"]["l2"] == pytest.approx(20_000 * tiles / 10e12 * 1e3)
    assert t["bound"] == "issue"
    assert t["tail"] == pytest.approx(20 / (1330 / 132))
    assert t["model_ms"] == pytest.approx(4000 * tiles / (4 * clk) * 1e3 * 20 / (1330 / 132))
    assert math.isclose(t["flops"], 100 * 4096 * tiles)


def test_targets():
    def k(ipe):
        return {"instr_per_s_element": ipe, "operand_loads": {"ldsm": 40, "generic_ld": 0, "lds": 3, "movm": 0},
                "spill_bytes": 0}
    out = sass_model.targets({"fwd": k(11.0), "bwd": k(30.0), "total_ms": 12.5})
    assert [t["pass"] for t in out] == [True, False, True, True, False]


def test_plot(tmp_path):
    m = {"rev": "x", "total_ms": 3.0, "fwd": {"instr_per_s_element": 40, "model_ms": 1.0},
         "bwd": {"instr_per_s_element": 60, "model_ms": 2.0}}
    result = {"model": {"old": m, "new": m}, "config": {"n": 1024, "dim": 128}, "device": sass_model.H200}
    sass_model.plot(result, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_probe_source_lists_every_kernel():
    k = sass_build.identify("_ZN11supcon_fast4cuda21supcon_fwd_mma_kernelINS0_6MmaFwdI6__halfLi64EEEEEv"
                            "NS0_12MmaFwdParamsIT_EE")
    src = sass_build.probe_source({"_Zfwd": k}, n=4096, m=4096, offset=0, dim=64, sms=132)
    assert "(int)(MmaFwd<__half, 64>::bytes)" in src and "tiles_fwd<MmaFwd<__half, 64>>();" in src
    assert "plan::plan_fwd(4096LL, 4096LL, C::BM, C::BN, 132)" in src


@pytest.mark.slow
def test_compile_this_checkout(tmp_path):
    """The real kernels (about a minute of nvcc): every loop in the column-tile loops has a rule, and
    the bf16 D = 128 mma.sync kernels issue their GEMMs' HMMA and LDSM counts per warp and tile."""
    if sass_build.find_tool("nvcc") is None or sass_build.find_tool("nvdisasm") is None:
        pytest.skip("needs nvcc and nvdisasm")
    records, extra = sass.analyze_tree(sass.ROOT, str(tmp_path), n=4096, dim=128, sms=132)
    by_name = {r["kernel"]: r for r in records}
    fwd = by_name["supcon_fwd_mma_kernel<MmaFwd<__nv_bfloat16, 128>>"]
    bwd = by_name["supcon_bwd_mma_kernel<MmaBwd<__nv_bfloat16, 128>>"]
    assert (fwd["mix"]["HMMA"], fwd["mix"]["LDSM"]) == (64, 40)    # 8 k steps x (1 A + 4 B) ldmatrix.x4
    assert (bwd["mix"]["HMMA"], bwd["mix"]["LDSM"]) == (128, 72)   # + 4 k blocks x 8 D steps (.trans)
    assert all(not r["path"]["flags"] for r in records if r.get("path")), [r["path"]["flags"] for r in records]
    json.dumps(records)
