"""What the AD rules share: the `custom_vjp` functions of a module, their `defvjp` rules, the
function an AD transform is applied to, and what that function reaches through same-module calls.

Computed once per file (cached on the `Analysis` object) from the shared traced-value analysis.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from stabcheck.static.analysis import Analysis, FunctionInfo
from stabcheck.static.names import PARTIAL, TRANSFORMS, Names, statements

CUSTOM_VJP = frozenset({"jax.custom_vjp", "equinox.filter_custom_vjp"})
CUSTOM_AD = frozenset({*CUSTOM_VJP, "jax.custom_jvp", "equinox.filter_custom_jvp"})
FORWARD = frozenset({"jvp", "jacfwd", "linearize"})
REVERSE = frozenset({"grad", "vjp", "jacrev", "hessian"})
DERIVATIVES = frozenset(q for q, (_family, kind) in TRANSFORMS.items() if kind == "diff")
ENTRY = frozenset({"stabcheck.Entry", "stabcheck.traced.entries.Entry"})
# the transforms that take a scalar function's gradient (`grad`'s forms): what STB409 and STB410 check
GRADS = frozenset({"jax.grad", "jax.value_and_grad", "equinox.filter_grad", "equinox.filter_value_and_grad", "flax.nnx.grad", "flax.nnx.value_and_grad"})
# an entry's transforms that differentiate (`stabcheck.Entry(f, args)` defaults to jit and grad)
ENTRY_DERIVATIVES = frozenset({"grad", "jvp", "jacfwd", "jacrev", "hessian", "hvp"})


@dataclass(eq=False, slots=True)
class CustomVJP:
    """A `custom_vjp` primal, with its `nondiff_argnums` and the rules given to `defvjp`."""

    name: str
    primal: FunctionInfo | None
    node: ast.AST
    nondiff_argnums: tuple[int, ...] | None = ()  # None: not a literal (unknown)
    nondiff_argnames: tuple[str, ...] | None = ()
    fwd: ast.AST | None = None
    bwd: ast.AST | None = None
    defvjp: ast.Call | None = None
    fwd_info: FunctionInfo | None = field(default=None)
    bwd_info: FunctionInfo | None = field(default=None)


def argnums(v: ast.AST) -> tuple[int, ...] | None:
    """A literal `nondiff_argnums`: `1`, `(0, 2)`, `range(5, 10)`; None when not literal."""
    if isinstance(v, ast.Constant) and isinstance(v.value, int):
        return (v.value,)
    if isinstance(v, (ast.Tuple, ast.List)):
        out = [e.value for e in v.elts if isinstance(e, ast.Constant) and isinstance(e.value, int)]
        return tuple(out) if len(out) == len(v.elts) else None
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "range" and not v.keywords:
        bounds = [a.value for a in v.args if isinstance(a, ast.Constant) and isinstance(a.value, int)]
        if len(bounds) == len(v.args) and 1 <= len(bounds) <= 3:
            return tuple(range(*bounds))
    return None


@dataclass(frozen=True, slots=True)
class _KW:
    keywords: list[ast.keyword]

    def nondiff(self) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
        nums: tuple[int, ...] | None = ()
        names: tuple[str, ...] | None = ()
        for k in self.keywords:
            if k.arg == "nondiff_argnums":
                nums = argnums(k.value)
            elif k.arg == "nondiff_argnames":
                v = k.value
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    names = (v.value,)
                elif isinstance(v, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in v.elts):
                    names = tuple(e.value for e in v.elts)  # type: ignore[attr-defined]
                else:
                    names = None
        return nums, names


class ADGraph:
    """custom_vjp functions by name, and a memoised 'what does this function reach' query."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.names: Names = analysis.names
        self.custom: dict[str, CustomVJP] = {}
        self._find_custom()
        self._find_defvjp()
        self._reach: dict[ast.AST, dict[str, ast.AST]] = {}
        self._reach_ad: dict[ast.AST, dict[str, ast.AST]] = {}
        self._custom_wrapped: set[int] | None = None  # ids of defs wrapped by `jax.custom_jvp(f)`
        self._kernels: set[int] | None = None  # ids of custom_vjp fwd rules and Pallas kernels
        self._rules: set[int] | None = None  # ids of custom_jvp rules and custom_vjp bwd rules
        self._differentiated: dict[int, bool] = {}
        self._scope_of: dict[int, FunctionInfo | None] | None = None  # id(call) -> the function it is made in
        self._entries: set[int] | None = None  # ids of functions a `stabcheck.Entry` differentiates

    @classmethod
    def of(cls, analysis: Analysis) -> ADGraph:
        return analysis.memo("ad_graph", lambda: cls(analysis))

    # -- custom_vjp functions ------------------------------------------------------------
    def _custom_decorator(self, dec: ast.AST) -> _KW | bool:
        """The keywords of `dec` when it makes a custom_vjp, else False."""
        if self.names.qualname(dec) in CUSTOM_VJP:
            return _KW([])
        if isinstance(dec, ast.Call):
            q = self.names.qualname(dec.func)
            kws = dec.keywords
            if q in PARTIAL and dec.args and self.names.qualname(dec.args[0]) in CUSTOM_VJP:
                pass
            elif q in CUSTOM_VJP and not dec.args:
                pass
            else:
                return False
            return _KW(kws)
        return False

    def _find_custom(self) -> None:
        a = self.analysis
        for info in a.functions.values():
            node = info.node
            if isinstance(node, ast.Lambda):
                continue
            for dec in node.decorator_list:
                kw = self._custom_decorator(dec)
                if isinstance(kw, _KW):
                    self.custom[node.name] = CustomVJP(node.name, info, node, *kw.nondiff())
        for stmt in a.names.statements:
            # `f = jax.custom_vjp(g)` / `f = partial(jax.custom_vjp, nondiff_argnums=(1,))(g)`
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                continue
            call = stmt.value
            if not isinstance(call, ast.Call) or not call.args:
                continue
            q = self.names.qualname(call.func)
            if q in CUSTOM_VJP:
                kw = _KW(call.keywords)
            elif isinstance(call.func, ast.Call) and isinstance(found := self._custom_decorator(call.func), _KW):
                kw = found
            else:
                continue
            name = stmt.targets[0].id
            self.custom[name] = CustomVJP(name, a.resolve(call.args[0], None), stmt, *kw.nondiff())

    def _find_defvjp(self) -> None:
        for _, node in self.analysis.calls:
            if not (isinstance(node.func, ast.Attribute) and node.func.attr == "defvjp"):
                continue
            owner = node.func.value
            if not isinstance(owner, ast.Name) or owner.id not in self.custom:
                continue
            cv = self.custom[owner.id]
            args: list[ast.AST | None] = [None, None]
            for i, pos in enumerate(node.args[:2]):
                args[i] = pos
            for k in node.keywords:
                if k.arg == "fwd":
                    args[0] = k.value
                elif k.arg == "bwd":
                    args[1] = k.value
            cv.defvjp = node
            cv.fwd, cv.bwd = args
            cv.fwd_info = self.analysis.resolve(cv.fwd, None) if cv.fwd is not None else None
            cv.bwd_info = self.analysis.resolve(cv.bwd, None) if cv.bwd is not None else None

    def fwd_calls_primal(self, cv: CustomVJP) -> bool:
        """The fwd rule calls the primal itself (then even `hessian` needs forward mode of it)."""
        if cv.fwd_info is None:
            return False
        return cv.name in self.reach(cv.fwd_info)

    # -- what an AD transform is applied to --------------------------------------------
    def target(self, fn: ast.AST, scope: FunctionInfo | None) -> tuple[FunctionInfo | None, str | None]:
        """The function (or custom_vjp name) that `fn`, an argument of a transform, denotes."""
        if isinstance(fn, ast.Call):
            q = self.names.qualname(fn.func)
            if q in PARTIAL and fn.args:
                return self.target(fn.args[0], scope)
            return None, None
        if isinstance(fn, ast.Name) and fn.id in self.custom and self.analysis.resolve(fn, scope) in (None, self.custom[fn.id].primal):
            return self.custom[fn.id].primal, fn.id
        return self.analysis.resolve(fn, scope), None

    # -- custom derivative rules ------------------------------------------------------------------
    def has_custom_rule(self, info: FunctionInfo) -> bool:
        """`info` is a `custom_jvp`/`custom_vjp` primal (decorated, through `partial` too, or bound
        by `f = jax.custom_jvp(g)`): its derivative is the rule's, AD never goes through its body."""
        node = info.node
        if isinstance(node, ast.Lambda):
            return False
        for dec in node.decorator_list:
            d = dec.func if isinstance(dec, ast.Call) else dec
            q = self.names.qualname(d)
            if q in CUSTOM_AD or (q in PARTIAL and isinstance(dec, ast.Call) and dec.args and self.names.qualname(dec.args[0]) in CUSTOM_AD):
                return True
        wrapped = self._custom_wrapped
        if wrapped is None:
            wrapped = self._custom_wrapped = set()
            for _, call in self.analysis.calls:
                q = self.names.qualname(call.func)
                if isinstance(call.func, ast.Call):
                    inner = call.func
                    iq = self.names.qualname(inner.func)
                    if iq in CUSTOM_AD or (iq in PARTIAL and inner.args and self.names.qualname(inner.args[0]) in CUSTOM_AD):
                        q = "custom"
                if (q in CUSTOM_AD or q == "custom") and call.args:
                    target = self.analysis.resolve(call.args[0], None)
                    if target is not None:
                        wrapped.add(id(target.node))
        return id(node) in wrapped

    def ad_opaque(self, info: FunctionInfo | None) -> str | None:
        """Does JAX's autodiff never differentiate `info`'s body? "body": a `custom_jvp`/
        `custom_vjp` primal (the rule gives its derivative), a `custom_vjp` fwd rule, a Pallas
        kernel (`pallas_call`/`emit_pipeline` run it on Refs), or a function nested in one;
        "rule": a `custom_jvp` rule (`@f.defjvp`, `f.defjvp(rule)`) or a `custom_vjp` bwd rule,
        or a function nested in one: autodiff runs it but differentiates it only for a
        second derivative; "helper": a module-level function that only such functions call,
        never referenced otherwise (a guess: another module may import it); None otherwise."""
        s = info
        while s is not None:
            if self._opaque_body(s):
                return "body"
            s = s.parent
        s = info
        while s is not None:
            if id(s.node) in self._rule_bodies():
                return "rule"
            s = s.parent
        if info is None or info.parent is not None or isinstance(info.node, ast.Lambda):
            return None
        uses = [n for n in ast.walk(self.analysis.tree) if isinstance(n, ast.Name) and n.id == info.name and isinstance(n.ctx, ast.Load)]
        if not uses:
            return None
        callers = {id(call.func): scope for scope, call in self.analysis.calls}
        for use in uses:
            if id(use) not in callers:
                return None  # passed on or stored: it may be differentiated wherever it goes
            scope = callers[id(use)]
            while scope is not None and not self._opaque_body(scope):
                scope = scope.parent
            if scope is None:
                return None
        return "helper"

    def differentiated(self, info: FunctionInfo | None) -> bool:
        """Does a derivative this module takes visibly reach `info`? A derivative transform
        (`grad`, `value_and_grad`, `vjp`, `jacrev`, `jvp`, `hessian`, `eqx.filter_grad`,
        `nnx.grad`...) is applied to it; or to a function that calls it with traced arguments,
        that applies another transform (`vmap`, `scan`, `jit`) to it, or that defines it; or
        another checked file's derivative reaches it (a chain through `jax.grad`); or a
        `stabcheck.Entry(f, ...)` declares a derivative transform for it (the default does)."""
        if info is None:
            return False
        done = self._differentiated.get(id(info.node))
        if done is not None:
            return done
        self._differentiated[id(info.node)] = False  # recursion guard
        scope_of = self._scope_of
        if scope_of is None:
            scope_of = self._scope_of = {id(call): scope for scope, call in self.analysis.calls}
        found = any(t.qualname in DERIVATIVES for t in info.transforms) or id(info.node) in self._entry_functions()
        found = found or any(self.differentiated(caller) for caller, _call in info.callers)
        found = found or any(self.differentiated(scope_of.get(id(t.node), info.parent)) for t in info.transforms if t.node is not None)
        found = found or any(fr.via in DERIVATIVES for chain, _abstract in info.external for fr in chain)
        found = found or self.differentiated(info.parent)
        self._differentiated[id(info.node)] = found
        return found

    def _entry_functions(self) -> set[int]:
        entries = self._entries
        if entries is None:
            entries = self._entries = set()
            for scope, call in self.analysis.calls:
                if self.names.qualname(call.func) not in ENTRY:
                    continue
                fn = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "fn"), None)
                declared = next((k.value for k in call.keywords if k.arg == "transforms"), None)
                if declared is None:
                    names: set[object] = {"grad"}  # the default: ("jit", "grad")
                elif isinstance(declared, (ast.Tuple, ast.List)):
                    names = {e.value for e in declared.elts if isinstance(e, ast.Constant)}
                else:
                    continue  # not a literal: not known
                target = self.target(fn, scope)[0] if fn is not None and names & ENTRY_DERIVATIVES else None
                if target is not None:
                    entries.add(id(target.node))
        return entries

    def _rule_bodies(self) -> set[int]:
        rules = self._rules
        if rules is None:
            rules = self._rules = {id(cv.bwd_info.node) for cv in self.custom.values() if cv.bwd_info is not None}
            for info in self.analysis.functions.values():
                if not isinstance(info.node, ast.Lambda) and any(isinstance(d, ast.Attribute) and d.attr in ("defjvp", "defjvps") for d in info.node.decorator_list):
                    rules.add(id(info.node))
            for scope, call in self.analysis.calls:
                if isinstance(call.func, ast.Attribute) and call.func.attr in ("defjvp", "defjvps"):
                    for a in call.args:
                        target = self.analysis.resolve(a, scope)
                        if target is not None:
                            rules.add(id(target.node))
        return rules

    def _opaque_body(self, info: FunctionInfo) -> bool:
        kernels = self._kernels
        if kernels is None:
            kernels = self._kernels = set()
            for cv in self.custom.values():
                if cv.fwd_info is not None:
                    kernels.add(id(cv.fwd_info.node))
            for scope, call in self.analysis.calls:
                q = self.names.qualname(call.func) or ""
                if q.rsplit(".", 1)[-1] in ("pallas_call", "emit_pipeline") and call.args:
                    fn = call.args[0]
                    if isinstance(fn, ast.Name) and scope is not None:
                        # `kernel = partial(kernel_fwd, block=b)`, then `pallas_call(kernel, ...)`
                        bound = [v for ts, v in self.analysis.bindings(scope) if any(isinstance(t, ast.Name) and t.id == fn.id for t in ts)]
                        if len(bound) == 1 and isinstance(bound[0], ast.Call) and self.names.qualname(bound[0].func) in PARTIAL:
                            fn = bound[0]
                    if isinstance(fn, ast.Call) and self.names.qualname(fn.func) in PARTIAL and fn.args:
                        fn = fn.args[0]
                    target = self.analysis.resolve(fn, scope)
                    if target is not None:
                        kernels.add(id(target.node))
        return id(info.node) in kernels or self.has_custom_rule(info)

    def reach_ad(self, info: FunctionInfo) -> dict[str, ast.AST]:
        """`reach`, but not into functions with a custom derivative rule (what differentiation
        itself goes through)."""
        return self._walk(info, self._reach_ad, through_custom=False)

    # -- reachability ------------------------------------------------------------------------
    def reach(self, info: FunctionInfo) -> dict[str, ast.AST]:
        """Every call made by `info` or the same-module functions it calls (transitively),
        keyed by callee text: `{"jax.lax.while_loop": <Call>, "softclip": <Call>, ...}`.
        custom_vjp names are keyed by their own name; the first call found wins."""
        return self._walk(info, self._reach, through_custom=True)

    def _walk(self, info: FunctionInfo, memo: dict[ast.AST, dict[str, ast.AST]], *, through_custom: bool) -> dict[str, ast.AST]:
        cached = memo.get(info.node)
        if cached is not None:
            return cached
        out: dict[str, ast.AST] = {}
        memo[info.node] = out  # recursion guard
        if not through_custom and self.has_custom_rule(info):
            return out
        for call, scope in self._calls(info):
            key = self.names.qualname(call.func)
            if isinstance(call.func, ast.Name) and call.func.id in self.custom:
                key = call.func.id
            if key is not None:
                out.setdefault(key, call)
            # the callee, and functions passed as arguments (lax bodies, vmap targets), which run
            # as part of this one
            inner = [self.analysis.resolve(call.func, scope)]
            inner += [self.analysis.resolve(a, scope) if isinstance(a, (ast.Name, ast.Lambda)) else None for a in call.args]
            for callee in inner:
                if callee is not None and callee is not info and callee.node is not call:
                    for k, v in self._walk(callee, memo, through_custom=through_custom).items():
                        out.setdefault(k, v)
        return out

    def _calls(self, info: FunctionInfo) -> Iterator[tuple[ast.Call, FunctionInfo]]:
        body = info.node.body if isinstance(info.node.body, list) else [info.node.body]
        stack: list[tuple[ast.AST, FunctionInfo]] = [(n, info) for n in reversed(body)]
        while stack:
            node, scope = stack.pop()
            if isinstance(node, ast.Call):
                yield node, scope
            inner = self.analysis.functions.get(node, scope) if node is not info.node else scope
            for ch in reversed(list(ast.iter_child_nodes(node))):
                stack.append((ch, inner))
