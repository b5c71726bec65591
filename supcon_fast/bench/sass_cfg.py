"""SASS text read back into instructions, basic blocks and loops, and the instructions one iteration of
a loop issues along a chosen path. The logic behind ``supcon_fast.bench.sass`` (which compiles the
kernels and chooses the path: its rules are about our kernels' source, this module knows none of it).

Input: ``cuobjdump -sass`` (branch targets as addresses) or ``nvdisasm -gi`` (targets as ``.L_x_N``
labels, and ``//## File "...", line N [inlined at ...]`` line records, which the path rules need).
``ptxas -v`` output gives registers, spills and static shared memory per kernel.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[0-7T]\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_\w+):")
_LOC = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_FUNC_CUOBJDUMP = re.compile(r"^\s*Function : (\S+)")
_FUNC_NVDISASM = re.compile(r"^\.text\.(\S+):\s*$")
_TARGET_ADDR = re.compile(r"^0x([0-9a-f]+)$")
_TARGET_LABEL = re.compile(r"`\((\.L_\w+)\)")
ENDS_BLOCK = {"BRA", "EXIT", "RET", "BRX", "JMP", "JMX", "KILL"}


@dataclass(frozen=True)
class Instr:
    addr: int
    op: str                      # base opcode: HMMA, LDSM, BRA, ...
    mods: tuple[str, ...] = ()   # HMMA.16816.F32.BF16 -> ('16816', 'F32', 'BF16')
    pred: str = ""               # '@P0', '@!UP1' or ''
    args: str = ""
    target: int | None = None    # branch target address
    loc: tuple = ()              # ((file, line), ...) innermost first; () without line records

    @property
    def name(self) -> str:
        return ".".join((self.op,) + self.mods)

    @property
    def conditional(self) -> bool:
        return bool(self.pred) and self.pred not in ("@PT", "@UPT")

    @property
    def backward(self) -> bool:
        return self.target is not None and self.target <= self.addr


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """{mangled kernel name: instructions in address order} from cuobjdump -sass or nvdisasm output."""
    funcs: dict[str, list] = {}
    labels: dict[str, dict[str, int]] = {}
    cur = None
    pending_labels: list[str] = []
    loc: tuple = ()
    loc_fresh = True
    for line in text.splitlines():
        m = _FUNC_CUOBJDUMP.match(line) or _FUNC_NVDISASM.match(line)
        if m:
            cur = m.group(1)
            funcs[cur], labels[cur], pending_labels, loc, loc_fresh = [], {}, [], (), True
            continue
        if cur is None:
            continue
        m = _LOC.search(line)
        if m:
            entries = [(m.group(1), int(m.group(2)))] + ([(m.group(3), int(m.group(4)))] if m.group(3) else [])
            loc, loc_fresh = _merge_loc(loc, entries, loc_fresh)
            continue
        m = _LABEL.match(line)
        if m:
            pending_labels.append(m.group(1))
            continue
        m = _INSTR.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending_labels:
                labels[cur][lab] = addr
            pending_labels = []
            funcs[cur].append((addr, m.group(3), tuple(x for x in m.group(4).split(".") if x),
                               (m.group(2) or "").strip(), m.group(5).strip(), loc))
            loc_fresh = True
    return {name: [_instr(raw, labels[name]) for raw in rows] for name, rows in funcs.items() if rows}


def _merge_loc(loc: tuple, entries: list, fresh: bool) -> tuple[tuple, bool]:
    """A run of line records before an instruction is one location, innermost first; a new run (after
    an instruction) replaces the previous location."""
    if fresh:
        return tuple(entries), False
    return loc + tuple(e for e in entries if e not in loc), False


def _instr(raw: tuple, labels: dict[str, int]) -> Instr:
    addr, op, mods, pred, args, loc = raw
    target = None
    if op == "BRA":  # the other control instructions (BSSY, CALL) keep their target in args only
        last = args.split(",")[-1].strip()
        m = _TARGET_ADDR.match(last)
        if m:
            target = int(m.group(1), 16)
        else:
            m = _TARGET_LABEL.search(last)
            target = labels.get(m.group(1)) if m else None
    return Instr(addr, op, mods, pred, args, target, loc)


def parse_ptxas(text: str) -> dict[str, dict]:
    """{mangled kernel name: registers, spill_store_bytes, spill_load_bytes, stack_bytes,
    static_smem_bytes, barriers} from ``ptxas -v`` (one arch)."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or \
            re.search(r"Function properties for (\S+)", line)
        if m:
            cur = m.group(1)
            out.setdefault(cur, {"registers": 0, "spill_store_bytes": 0, "spill_load_bytes": 0, "stack_bytes": 0,
                                 "static_smem_bytes": 0, "barriers": 0})
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur].update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                            spill_load_bytes=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            s = re.search(r"(\d+) bytes smem", line)
            out[cur]["barriers"] = int(b.group(1)) if b else 0
            out[cur]["static_smem_bytes"] = int(s.group(1)) if s else 0
    return out


@dataclass(frozen=True)
class Loop:
    head: int   # address the backward branch jumps to
    tail: int   # address of the backward branch

    def contains(self, addr: int) -> bool:
        return self.head <= addr <= self.tail


def find_loops(instrs: list[Instr]) -> list[Loop]:
    """Every backward branch is a loop, head (its target) to tail (the branch), outermost first;
    a branch to itself (the trap after the last EXIT) is not one."""
    loops = {Loop(i.target, i.addr) for i in instrs if i.op == "BRA" and i.backward and i.target != i.addr}
    return sorted(loops, key=lambda lp: (lp.head, -lp.tail))


def blocks(instrs: list[Instr]) -> tuple[list[int], list[list[int]]]:
    """Basic blocks as (first instruction index of each block, successor block indices)."""
    index = {ins.addr: k for k, ins in enumerate(instrs)}
    leaders = {0}
    for k, ins in enumerate(instrs):
        if ins.op in ENDS_BLOCK:
            leaders.add(k + 1)
        if ins.op == "BRA" and ins.target in index:
            leaders.add(index[ins.target])
    starts = sorted(x for x in leaders if x < len(instrs))
    block_of = {}
    for b, s in enumerate(starts):
        end = starts[b + 1] if b + 1 < len(starts) else len(instrs)
        for k in range(s, end):
            block_of[k] = b
    succ = []
    for b, s in enumerate(starts):
        last = (starts[b + 1] if b + 1 < len(starts) else len(instrs)) - 1
        ins = instrs[last]
        nxt = [b + 1] if b + 1 < len(starts) else []
        if ins.op == "BRA" and ins.target in index:
            tgt = [block_of[index[ins.target]]]
            succ.append(tgt + nxt if ins.conditional else tgt)
        elif ins.op in ENDS_BLOCK:
            succ.append(nxt if ins.conditional else [])
        else:
            succ.append(nxt)
    return starts, succ


def post_dominators(succ: list[list[int]]) -> list[int | None]:
    """Immediate post-dominator of each block (None: the exit). Blocks that never reach an exit (the
    trap loop) are treated as exits, so that every block has one."""
    n = len(succ)
    exit_node = n
    succ = [s if s else [exit_node] for s in succ]
    full = (1 << (n + 1)) - 1
    pdom = [full] * n + [1 << exit_node]
    changed = True
    while changed:
        changed = False
        for b in range(n - 1, -1, -1):
            acc = full
            for s in succ[b]:
                acc &= pdom[s]
            new = acc | (1 << b)
            if new != pdom[b]:
                pdom[b], changed = new, True
    idom: list[int | None] = []
    for b in range(n):
        strict = pdom[b] & ~(1 << b)
        # the immediate one is the strict post-dominator post-dominated by all the others: the largest set
        best, best_size = None, -1
        x = strict
        while x:
            low = x & -x
            c = low.bit_length() - 1
            x ^= low
            size = bin(pdom[c]).count("1")
            if size > best_size:
                best, best_size = c, size
        idom.append(None if best is None or best == exit_node else best)
    return idom


@dataclass
class Walk:
    """Warp instructions issued along a path, by opcode (fractions where a loop's cost is per
    iteration times a trip count), and the decisions that chose the path."""
    counts: Counter = field(default_factory=Counter)
    names: Counter = field(default_factory=Counter)   # full names (LDSM.16.M88.4, ...)
    decisions: list = field(default_factory=list)
    flags: list = field(default_factory=list)

    def add(self, ins: Instr, times: float = 1.0) -> None:
        self.counts[ins.op] += times
        self.names[ins.name] += times

    def merge(self, other: "Walk", times: float) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v * times
        for k, v in other.names.items():
            self.names[k] += v * times
        self.flags += [f for f in other.flags if f not in self.flags]

    @property
    def total(self) -> float:
        return float(sum(self.counts.values()))


class Function:
    """One kernel's instructions with their blocks, post-dominators and loops."""

    def __init__(self, name: str, instrs: list[Instr]):
        self.name, self.instrs = name, instrs
        self.index = {ins.addr: k for k, ins in enumerate(instrs)}
        self.starts, self.succ = blocks(instrs)
        self.block_of = [0] * len(instrs)
        for b, s in enumerate(self.starts):
            end = self.starts[b + 1] if b + 1 < len(self.starts) else len(instrs)
            for k in range(s, end):
                self.block_of[k] = b
        self.ipdom = post_dominators(self.succ)
        self.loops = find_loops(instrs)
        self._sizes: dict = {}

    def block_end(self, b: int) -> int:
        return self.starts[b + 1] if b + 1 < len(self.starts) else len(self.instrs)

    def reconvergence(self, k: int) -> int:
        """Instruction index where the two sides of the branch at k meet again (its block's immediate
        post-dominator; the end of the function where there is none)."""
        p = self.ipdom[self.block_of[k]]
        return self.starts[p] if p is not None else len(self.instrs)

    def side(self, k: int, taken: bool) -> list[int]:
        """Instruction indices one side of the conditional branch at k may run before the two sides
        meet: blocks reachable from that side's first block, forward edges only."""
        key = (k, taken)
        if key not in self._sizes:
            stop = self.reconvergence(k)
            first = self.index[self.instrs[k].target] if taken else k + 1
            seen, todo, out = set(), [self.block_of[first]] if first < len(self.instrs) else [], []
            while todo:
                b = todo.pop()
                if b in seen or self.starts[b] == stop:
                    continue
                seen.add(b)
                out.extend(range(self.starts[b], self.block_end(b)))
                todo += [s for s in self.succ[b] if s > b]
            self._sizes[key] = sorted(out)
        return self._sizes[key]

    def loops_in(self, outer: Loop) -> list[Loop]:
        return [lp for lp in self.loops if lp != outer and outer.head <= lp.head and lp.tail <= outer.tail]


@dataclass(frozen=True)
class LoopSpec:
    """How often a loop of the source runs per thread (the warp's largest count), and how to find how
    many source iterations one pass of its compiled loop covers (the unroll factor): ``marker``
    instructions (a regex on the opcode) in a pass over ``per_iter`` per source iteration."""
    name: str
    trips: float
    marker: str
    per_iter: float


def walk_iteration(fn: Function, loop: Loop, policy, warp: int) -> Walk:
    """The instructions one warp issues in one iteration of ``loop``: from its head to its backward
    branch, along the path the policy chooses. ``policy.branch(fn, k) -> (taken, why)`` decides
    conditional forward branches; ``policy.loop_spec(ins, warp) -> LoopSpec | None`` says how often a
    loop runs, given its guard or backward branch. A modelled inner loop costs its trips / unroll
    times one pass over its compiled body (the steady state: its remainder code is left out)."""
    w = Walk()
    k, tail = fn.index[loop.head], fn.index[loop.tail]
    inner = {lp.head: lp for lp in reversed(fn.loops_in(loop))}
    entered: set[int] = set()
    while True:
        ins = fn.instrs[k]
        lp = inner.get(ins.addr)
        if lp is not None and k != fn.index[loop.head] and lp.head not in entered:
            spec = policy.loop_spec(fn.instrs[fn.index[lp.tail]], warp)
            if spec is not None:
                _loop_cost(fn, w, [lp], spec, policy, warp)
                k = fn.index[lp.tail] + 1
                continue
            entered.add(lp.head)
            w.flags.append(f"loop {lp.head:#x}-{lp.tail:#x} has no rule: counted once")
        w.add(ins)
        if k == tail:
            return w
        if ins.op in ("EXIT", "RET") and not ins.conditional:
            w.flags.append(f"the path leaves the loop at {ins.addr:#x}")
            return w
        k = _next(fn, w, k, policy, warp)


def _next(fn: Function, w: Walk, k: int, policy, warp: int) -> int:
    """The next instruction index after the one at k (already counted)."""
    ins = fn.instrs[k]
    if ins.op != "BRA" or ins.target is None:
        return k + 1
    if ins.target not in fn.index:
        w.flags.append(f"branch at {ins.addr:#x} leaves the function")
        return k + 1
    if ins.backward:  # the backward branch of a loop walked once (no rule)
        return k + 1
    if not ins.conditional:
        return fn.index[ins.target]
    spec = policy.loop_spec(ins, warp)
    if spec is not None:  # a loop's guard: the whole loop up to where the guard's sides meet
        stop = fn.reconvergence(k)
        loops = [lp for lp in fn.loops if ins.addr < lp.head and lp.tail < fn.instrs[stop - 1].addr + 1
                 and fn.instrs[fn.index[lp.tail]].loc[:1] == ins.loc[:1]]
        if loops:
            _loop_cost(fn, w, loops, spec, policy, warp)
            return stop
        taken = bool(choose_side(fn, k, "short" if spec.trips <= 0 else "long"))  # compiled without a loop
        w.decisions.append({"addr": ins.addr, "taken": taken, "why": f"{spec.name} ({spec.trips:g} trips)"})
        return fn.index[ins.target] if taken else k + 1
    taken, why = policy.branch(fn, k)
    w.decisions.append({"addr": ins.addr, "taken": taken, "why": why})
    return fn.index[ins.target] if taken else k + 1


def _loop_cost(fn: Function, w: Walk, loops: list[Loop], spec: LoopSpec, policy, warp: int) -> None:
    """Adds spec.trips source iterations of the compiled loop that covers the most of them per pass
    (the unrolled main loop, not its remainder); between versions of the loop that cover as many
    (the compiler's copies for a loop-invariant condition), the one that issues fewer instructions."""
    if spec.trips <= 0:
        w.decisions.append({"addr": loops[0].head, "taken": None, "why": f"{spec.name}: 0 trips"})
        return
    passes = []
    for lp in loops:
        one = walk_iteration(fn, lp, policy, warp)
        marks = sum(v for op, v in one.counts.items() if re.fullmatch(spec.marker, op)) if spec.marker else 1.0
        passes.append((-marks, one.total, lp.head, one, lp))
    neg_marks, _, _, best, best_loop = min(passes, key=lambda p: p[:3])
    unroll = -neg_marks / spec.per_iter if spec.marker else 1.0
    if unroll < 1 or abs(unroll - round(unroll)) > 1e-9:
        w.flags.append(f"{spec.name}: {-neg_marks:g} {spec.marker} per pass is not a whole number of "
                       f"source iterations of {spec.per_iter:g}; unroll taken as {max(unroll, 1.0):g}")
        unroll = max(unroll, 1.0)
    w.merge(best, spec.trips / unroll)
    w.decisions.append({"addr": best_loop.head, "taken": None,
                        "why": f"{spec.name}: {spec.trips:g} trips, {unroll:g} per pass"
                               + (f" (of {len(loops)} compiled loops)" if len(loops) > 1 else "")})
    w.decisions += [dict(d, inner=True) for d in best.decisions]


def choose_side(fn: Function, k: int, choose: str) -> bool | None:
    """True to take the branch at k, False to fall through, by 'long' / 'short' (the side with more /
    fewer instructions before the sides meet) or 'has:REGEX' (the side with a matching opcode);
    None where the rule does not separate the sides."""
    taken, fall = fn.side(k, True), fn.side(k, False)
    if choose.startswith("has:"):
        pat = re.compile(choose[4:])
        t = any(pat.fullmatch(fn.instrs[i].name) or pat.fullmatch(fn.instrs[i].op) for i in taken)
        f = any(pat.fullmatch(fn.instrs[i].name) or pat.fullmatch(fn.instrs[i].op) for i in fall)
        return t if t != f else None
    if len(taken) == len(fall):
        return None
    return (len(taken) > len(fall)) == (choose == "long")
