"""Which values are traced: the one analysis that the static rules share.

A function is *transformed* when a JAX transform is applied to it (any spelling `Names.transform`
recognises), when it is a `lax` control-flow body, when it is the `__call__` (or `@compact`
method) of a flax/equinox Module, when it is defined inside a transformed function, or when a
transformed function calls it (same module) with traced arguments. It is *abstract* when the
transform stages it out (jit, vmap, scan, ...): there `bool()` of a tracer raises, whereas under
`grad` alone the values are concrete.

Traced: non-static parameters, and everything computed from them through `jnp`/`lax`/array
methods/calls. Static: `.shape`, `.ndim`, `.dtype`, `.size`, `len()`, `isinstance`, `is None`,
Python literals, module constants, parameters named in `static_argnums`/`static_argnames`,
parameters annotated `int`/`bool`/`str` or defaulting to a Python literal.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from stabcheck.finding import MAX_CHAINS, Chain, Frame, merge_chains
from stabcheck.static import xfile
from stabcheck.static.names import CONTROL_FLOW, Names, Transform
from stabcheck.static.walk import REVERSED_CHILDREN, compile_children, walk

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
T = TypeVar("T")
_FUNCTION_TYPES = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda})
_SCOPE_TYPES = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef})
_LOOP_TYPES = frozenset({ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp})

STATIC_ATTRS = frozenset({"shape", "ndim", "dtype", "size", "weak_type", "sharding", "aval", "itemsize", "nbytes", "__class__", "__name__"})
ARRAY_ATTRS = frozenset({"T", "mT", "real", "imag", "at"})
# transforms that trace the function to a jaxpr (every array op in it returns a tracer)
_STAGING = frozenset({"jit", "remat", "shard_map", "trace", *(q.rsplit(".", 1)[1] for q in CONTROL_FLOW)})
_COMPILE_TIME = frozenset({"jax.ensure_compile_time_eval", "jax.core.ensure_compile_time_eval"})
STATIC_METHODS = frozenset({"item", "tolist", "__len__", "keys", "get_shape"})
STATIC_BUILTINS = frozenset(
    f"builtins.{n}"
    for n in ("len", "all", "any", "sorted", "isinstance", "issubclass", "type", "id", "hasattr", "callable", "print", "str", "repr", "format", "int", "float", "bool", "complex", "range", "getattr", "dir", "vars", "hash", "enumerate", "zip")
)
STATIC_JAX = frozenset(
    {
        "jax.numpy.shape",
        "jax.numpy.ndim",
        "jax.numpy.size",
        "jax.numpy.dtype",
        "jax.numpy.result_type",
        "jax.numpy.promote_types",
        "jax.numpy.issubdtype",
        "jax.numpy.iinfo",
        "jax.numpy.finfo",
        "jax.numpy.can_cast",
        "jax.numpy.isdtype",
        "jax.numpy.isscalar",
        "jax.numpy.iscomplexobj",
        "jax.lax.axis_size",
        "jax.device_count",
        "jax.local_device_count",
        "jax.process_count",
        "jax.numpy.isrealobj",
        "jax.numpy.broadcast_shapes",
        "jax.lax.broadcast_shapes",
        "jax.numpy.issctype",
        "jax.eval_shape",
        "equinox.filter_eval_shape",
        "jax.ShapeDtypeStruct",
        "jax.tree_util.tree_structure",
        "jax.tree.structure",
        "jax.tree_util.tree_leaves",
        "jax.tree.leaves",
        "jax.tree_util.tree_flatten",
        "jax.tree.flatten",
        "jax.tree_util.tree_map",
        "jax.tree.map",
    }
)
# Annotation words that denote Python (static) values; an annotation made only of these is static.
STATIC_ANNOTATION_WORDS = frozenset(
    {"int", "bool", "str", "float", "None", "Callable", "Literal", "Optional", "Union", "Sequence", "tuple", "Tuple", "list", "List",
     "dict", "Dict", "Mapping", "type", "Type", "Iterable", "bytes", "Any", "typing", "collections", "abc", "PrecisionLike", "Axis", "Shape", "Dtype", "DType", "DTypeLike"}
)
# host callbacks: the function given first runs outside the trace, on concrete values
HOST_CALLBACKS = frozenset({"jax.debug.callback", "jax.pure_callback", "jax.experimental.io_callback", "jax.experimental.host_callback.id_tap", "jax.experimental.host_callback.call"})
MODULE_BASES = ("flax.linen.Module", "flax.nnx.Module", "equinox.Module", "flax.linen.module.Module")


def _define(defs: dict[str, FunctionInfo], redefined: dict[str, list[FunctionInfo]], name: str, info: FunctionInfo) -> None:
    """Record a def of `name` in a scope; a second def of the name keeps every def (`_live`)."""
    first = defs.setdefault(name, info)
    if first is not info:
        redefined.setdefault(name, [first]).append(info)


def _live(first: FunctionInfo, every: list[FunctionInfo] | None, ref: ast.AST) -> FunctionInfo:
    """The def a reference to a name defined more than once in its scope means: the last def
    above the reference (two `body_func`s for two `while_loop`s, a notebook cell that redefines
    `loss_fn`); a reference above every def (a closure called later) keeps the first."""
    if not every:
        return first
    line = getattr(ref, "lineno", 0)
    above = [i for i in every if i.node.lineno <= line]
    return max(above, key=lambda i: i.node.lineno) if above else first


@dataclass(eq=False, slots=True)
class FunctionInfo:
    node: FunctionNode
    qualname: str
    parent: FunctionInfo | None
    cls: ast.ClassDef | None
    params: list[str]
    defs: dict[str, FunctionInfo] = field(default_factory=dict)
    redefined: dict[str, list[FunctionInfo]] = field(default_factory=dict)  # a name def'd twice here: every def
    transforms: list[Transform] = field(default_factory=list)
    transformed: bool = False
    abstract: bool = False
    traced_params: set[str] = field(default_factory=set)
    static_params: set[str] = field(default_factory=set)
    traced: set[str] = field(default_factory=set)
    assigned: set[str] = field(default_factory=set)
    containers: set[str] = field(default_factory=set)  # names only ever bound to list/tuple/dict displays
    bindings: list[tuple[list[ast.AST], ast.AST]] = field(default_factory=list)  # (targets, value) of every binding
    proven_params: set[str] = field(default_factory=set)  # parameters proven to receive traced arrays
    own: list[ast.AST] | None = None  # `Analysis.own_nodes`, once asked for
    # why it is transformed, for instability chains: `entry` names what transforms it directly
    # (`jax.jit`, a Module's `__call__`); `callers` are the transformed functions that call it
    # with traced arguments, each with the call; `external` the chains from other files' calls,
    # each with whether the transform at its end stages the code out
    entry: str = ""
    callers: list[tuple[FunctionInfo, ast.Call]] = field(default_factory=list)
    external: list[tuple[Chain, bool]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return getattr(self.node, "name", "<lambda>")

    @property
    def is_method(self) -> bool:
        return self.cls is not None and self.parent is None and bool(self.params) and self.params[0] in ("self", "cls")


# a node the dispatcher visits: (node, the function it is in, the loops around it in that
# function, outermost first, its parent)
Event = tuple[ast.AST, FunctionInfo | None, tuple[ast.AST, ...], ast.AST | None]


class TypeOracle(Protocol):
    """What the typed tier (mypy, `stabcheck.static.typed.FileTypes`) answers about one module."""

    def kind(self, expr: ast.AST) -> str | None: ...  # "array", "static", "optional", "tuple:2", ...
    def is_static_call(self, call: ast.Call) -> bool: ...  # declared and inferred int/bool/str/None
    def callee(self, callee: ast.AST) -> str | None: ...  # qualname in this module of the def it runs
    def param_kind(self, function: str, param: str) -> str | None: ...
    def seed_items(self) -> Iterable[tuple[str, frozenset[str], bool]]: ...  # called from other files


class Analysis:
    """Scopes, transform applications and traced names of one module."""

    def __init__(self, tree: ast.Module, names: Names, types: TypeOracle | None = None, record: Container[type] = ()) -> None:
        self.tree = tree
        self.names = names
        self.types = types
        self.functions: dict[ast.AST, FunctionInfo] = {}
        self.module_defs: dict[str, FunctionInfo] = {}
        self.module_redefined: dict[str, list[FunctionInfo]] = {}  # a name def'd twice at module level: every def
        self.classes: dict[str, dict[str, FunctionInfo]] = {}
        self.class_nodes: dict[str, ast.ClassDef] = {}
        self.calls: list[tuple[FunctionInfo | None, ast.Call]] = []
        # the nodes of the `record`ed types in source order, each with where it stands: the
        # engine's dispatcher replays these instead of walking the tree a second time
        self.events: list[Event] = []
        # ids of the defs handed to a host callback (`jax.debug.callback(f, x)`): JAX calls them
        # on the host with concrete values, so a transformed parent's tracers never reach them
        self.host_functions: set[int] = set()
        self._facts: dict[str, Any] = {}
        self._lambda_names: dict[int, frozenset[str]] = {}  # per function: names it binds to a lambda
        self._collect(tree, record)
        self._find_applications()
        if types is not None:
            self._apply_seeds(types)
        seeds = xfile.current()
        if seeds:
            self._apply_xfile(seeds)
        self._memo: dict[int, bool] | None = None
        self._staged: dict[int, bool] = {}  # transforms are final: which functions a jaxpr traces
        self._compile_time_nodes: dict[int, set[int]] = {}  # per function: nodes under `ensure_compile_time_eval`
        self._propagate()
        self._memo = {}  # traced sets are final now: an expression's verdict no longer changes
        self._proven: dict[int, set[str]] = {}
        self._guarded: dict[int, set[int]] = {}
        self._proof_memo: dict[int, bool] | None = None
        self._propagate_proofs()
        self._proof_memo = {}

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """A per-file fact a rule computes once (`make()`) and asks for again: it lives on the
        Analysis, so it goes when the file's analysis goes (a module-level table would keep every
        file alive)."""
        try:
            return self._facts[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._facts[key] = make()
            return value

    # -- scopes ------------------------------------------------------------------------
    def _collect(self, tree: ast.Module, record: Container[type]) -> None:
        """The one walk of the module: functions, classes and methods in their scopes, every call
        with the function it is made in (`self.calls`), and the `record`ed nodes (`self.events`)
        with their function, enclosing loops and parent."""
        calls, events, functions = self.calls, self.events, self.functions
        children = REVERSED_CHILDREN
        call_t, lambda_t, class_t = ast.Call, ast.Lambda, ast.ClassDef
        function_types, loop_types = _FUNCTION_TYPES, _LOOP_TYPES
        if ast.Module in record:
            events.append((tree, None, (), None))
        # (node, enclosing function, class whose body this is, qualname prefix, loops, parent)
        stack: list[tuple[ast.AST, FunctionInfo | None, ast.ClassDef | None, str, tuple[ast.AST, ...], ast.AST]] = [(s, None, None, "", (), tree) for s in reversed(tree.body)]
        pop, push = stack.pop, stack.append
        while stack:
            node, par, c, pre, loops, up = pop()
            t = node.__class__
            if t in record:
                events.append((node, par, loops, up))
            try:
                get = children[t]
            except KeyError:
                get = children[t] = compile_children(t)
            if get is None:
                continue
            if t is call_t:
                calls.append((par, node))  # type: ignore[arg-type]
            elif t in function_types:
                name = getattr(node, "name", "<lambda>")
                info = FunctionInfo(node, f"{pre}{name}", par, c, _param_names(node.args))  # type: ignore[arg-type, attr-defined]
                functions[node] = info
                if t is lambda_t:
                    inner_pre = pre
                else:
                    inner_pre = f"{info.qualname}."
                    if par is not None:
                        _define(par.defs, par.redefined, name, info)
                    elif c is not None:
                        self.classes.setdefault(c.name, {})[name] = info
                    else:
                        _define(self.module_defs, self.module_redefined, name, info)
                a: ast.arguments = node.args  # type: ignore[attr-defined]
                for ch in get(node):
                    if ch is not a:
                        push((ch, info, None, inner_pre, (), node))
                        continue
                    # default values run when the `def` does, in the enclosing scope: `index` in
                    # `def pick(x, index=int(index))` is the loop's value, not the parameter
                    outer = {id(d) for d in (*a.defaults, *a.kw_defaults) if d is not None}
                    get_a = children.get(ast.arguments)
                    if get_a is None:
                        get_a = children[ast.arguments] = compile_children(ast.arguments)
                    for sub in get_a(a) if get_a is not None else ():
                        push((sub, par, c, pre, loops, a) if id(sub) in outer else (sub, info, None, inner_pre, (), a))
                continue
            elif t is class_t:
                if par is None:
                    self.class_nodes.setdefault(node.name, node)  # type: ignore[attr-defined]
                inner = f"{pre}{node.name}."  # type: ignore[attr-defined]
                own = node if par is None else None
                for ch in get(node):
                    push((ch, par, own, inner, loops, node))  # type: ignore[arg-type]
                continue
            if t in loop_types:
                loops = (*loops, node)
            for ch in get(node):
                push((ch, par, c, pre, loops, node))

    def resolve(self, expr: ast.AST, scope: FunctionInfo | None) -> FunctionInfo | None:
        """The function a callee expression names: a def in scope, `self.method`, a lambda."""
        if isinstance(expr, ast.Lambda):
            return self.functions.get(expr)
        if isinstance(expr, ast.Name):
            s = scope
            while s is not None:
                if expr.id in s.defs:
                    return _live(s.defs[expr.id], s.redefined.get(expr.id), expr)
                if expr.id in self._lambdas_of(s):
                    value = self.bound_once(expr.id, s)
                    if isinstance(value, ast.Lambda):
                        return self.functions.get(value)  # `f = lambda v: ...`, then `jax.grad(f)`
                s = s.parent
            found = self.module_defs.get(expr.id)
            if found is not None:
                found = _live(found, self.module_redefined.get(expr.id), expr)
            if found is not None or self.types is None:
                return found
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in ("self", "cls"):
            s = scope
            while s is not None and s.cls is None:
                s = s.parent
            if s is not None and s.cls is not None:
                found = self.classes.get(s.cls.name, {}).get(expr.attr)
                if found is not None:
                    return found
        if self.types is not None and isinstance(expr, (ast.Name, ast.Attribute)):
            return self._by_qualname(self.types.callee(expr))  # self.encoder(x), model.apply(x)
        return None

    def _by_qualname(self, qualname: str | None) -> FunctionInfo | None:
        if qualname is None:
            return None
        table = getattr(self, "_qualnames", None)
        if table is None:
            table = self._qualnames = {i.qualname: i for i in self.functions.values() if not isinstance(i.node, ast.Lambda)}
        return table.get(qualname)

    def _apply_seeds(self, types: TypeOracle) -> None:
        """Defs that transformed code in another checked file calls with traced arguments."""
        for qualname, traced, abstract in types.seed_items():
            info = self._by_qualname(qualname)
            if info is not None:
                static = self._static_by_signature(info)
                info.static_params |= static
                info.proven_params |= set(traced) - static  # mypy resolved the call from transformed code
                self._set(info, set(traced) - static, abstract)

    def _apply_xfile(self, seeds: xfile.Seeds) -> None:
        """Defs that transformed code in another checked file calls with traced arguments, found
        without mypy (`static.xfile`); the calls' chains come with them."""
        for qualname, calls in seeds.items():
            info = self._by_qualname(qualname)
            if info is None:
                continue
            params = info.params[1:] if info.is_method else info.params
            static = self._static_by_signature(info)
            for call in calls:
                traced = xfile.traced_params(call, params) - static
                if traced:
                    proven = {params[i] if isinstance(i, int) and i < len(params) else i for i in call.get("proven", ())}
                    info.proven_params |= traced & proven
                    info.static_params |= static
                    self._set(info, traced, call["abstract"])
                    info.external.extend((xfile.frames(c), bool(call["abstract"])) for c in call["chains"])

    def scope_of(self, node: ast.AST) -> FunctionInfo | None:
        return self.functions.get(node)

    # -- transform applications ----------------------------------------------------------
    def _find_applications(self) -> None:
        for info in list(self.functions.values()):
            node = info.node
            if isinstance(node, ast.Lambda):
                continue
            for dec in node.decorator_list:
                t = self.names.transform(dec)
                if t is not None:
                    if isinstance(dec, ast.Call):
                        # `@partial(jax.vmap, in_axes=(0, None))`, `@jax.vmap(in_axes=...)`
                        t = _passed_through(t, dec, info.parent.node if info.parent is not None else self.tree)
                    self._mark(info, t, decorated=True)
                elif self._is_compact(dec) and info.cls is not None:
                    self._mark_module_method(info)
            if info.cls is not None and info.name == "__call__" and self._is_module_class(info.cls):
                self._mark_module_method(info)
        # `jax.vmap(f)(xs)`: the call right after the transform shows which parameters get arguments
        invoked = {id(c.func): c for _s, c in self.calls if isinstance(c.func, ast.Call)}
        for scope, call in self.calls:
            if call.args and self.names.qualname(call.func) in HOST_CALLBACKS:
                host = self.resolve(call.args[0], scope)
                if host is not None:
                    self.host_functions.add(id(host.node))
            tc = self.names.transform_call(call)
            if tc is None:
                continue
            t, fns = tc
            t = _passed_through(t, call, scope.node if scope is not None else self.tree)
            args = invoked.get(id(call))
            passed = None
            if args is not None and not any(isinstance(a, ast.Starred) for a in args.args) and all(k.arg is not None for k in args.keywords):
                passed = (len(args.args), frozenset(k.arg for k in args.keywords if k.arg is not None))
            for fn in fns:
                self._apply(t, fn, scope, passed=passed if len(fns) == 1 else None)

    def _apply(
        self,
        t: Transform,
        fn: ast.AST,
        scope: FunctionInfo | None,
        bound: int = 0,
        keywords: frozenset[str] = frozenset(),
        passed: tuple[int, frozenset[str]] | None = None,
    ) -> None:
        if isinstance(fn, ast.Call):
            inner = self.names.transform_call(fn)
            if inner is not None:  # jax.jit(jax.grad(f)): f is staged out too
                for g in inner[1]:
                    self._apply(t, g, scope)
                return
            q = self.names.qualname(fn.func)
            if q in ("functools.partial",) and fn.args:
                # `partial(f, n=3)` binds `n` to a Python value; `partial(f, **params)` may bind
                # any keyword-only parameter ("**")
                bound_kw = frozenset(k.arg if k.arg is not None else "**" for k in fn.keywords)
                self._apply(t, fn.args[0], scope, bound=len(fn.args) - 1, keywords=bound_kw)
            return
        info = self.resolve(fn, scope)
        if info is not None:
            self._mark(info, t, bound, keywords=keywords, passed=passed if bound == 0 and not keywords else None)

    def _mark(
        self,
        info: FunctionInfo,
        t: Transform,
        bound: int = 0,
        decorated: bool = False,
        keywords: frozenset[str] = frozenset(),
        passed: tuple[int, frozenset[str]] | None = None,
    ) -> None:
        info.transforms.append(t)
        info.entry = info.entry or t.qualname
        # a decorator wraps the plain function, whose argument 0 is `self` (`static_argnums=0`
        # names it); `jax.jit(self.method)` wraps the bound method
        counted = info.params if decorated else info.params[1:] if info.is_method else info.params
        counted = counted[bound:]
        # a negative index counts from the end of the positional parameters (JAX reads the signature)
        a = info.node.args
        positional = counted[: len(a.posonlyargs) + len(a.args) - (len(info.params) - len(counted))]
        static = {counted[i] if i >= 0 else positional[i] for i in t.static_argnums if -len(positional) <= i < len(counted)}
        params = info.params[1:] if info.is_method else info.params
        params = params[bound:]
        static |= set(t.static_argnames)
        static |= self._static_by_signature(info)
        static |= keywords & set(params)
        if "**" in keywords:
            static |= {a.arg for a in info.node.args.kwonlyargs}
        info.static_params |= static
        traced = {p for p in params if p not in static}
        if passed is not None:
            traced -= _defaults_left(info, params, *passed)
        # a visible transform proves its parameters traced; `eqx.filter_*`/`nnx` keep non-array
        # arguments static, so there only an array annotation proves one
        unsure = self._defaults_unpassed(info, params) if passed is None else set()
        info.proven_params |= {p for p in traced if not t.unsure and (not t.filtered or array_annotated(info, p)) and p not in unsure}
        self._set(info, traced, t.abstract)

    def _defaults_unpassed(self, info: FunctionInfo, params: list[str]) -> set[str]:
        """Parameters with a Python default (`seed=0`, `n=N`) that no visible call of the function
        passes: a caller that leaves one out hands the transform a Python value, which is not
        traced; whether any caller passes it is not shown, so the parameter is not proven traced
        (jax-ml/jax#575's `def sample(factors, N=N_SPINS, seed=0)` under `@jax.jit`)."""
        defaulted = {p for p, d in _defaults(info).items() if p in params and not isinstance(d, ast.Call)}
        if not defaulted:
            return set()
        a = info.node.args
        positional = [x.arg for x in (*a.posonlyargs, *a.args)]
        by_name = self.memo("calls_by_name", self._calls_by_name)
        # the function's own name, and the names bound to a transform of it (`f_jit = jax.jit(f)`)
        aliases = [info.name, *self.memo("transformed_aliases", self._transformed_aliases).get(info.name, ())]
        for call in (c for name in aliases for c in by_name.get(name, ())):
            f = call.func
            if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
                return set()  # `f(*args)`, `f(**kw)`: anything may be passed
            offset = 1 if info.is_method and isinstance(f, ast.Attribute) else 0
            given = set(positional[offset : offset + len(call.args)]) | {k.arg for k in call.keywords if k.arg is not None}
            defaulted -= given
        return defaulted

    def _transformed_aliases(self) -> dict[str, list[str]]:
        """Function name -> the names bound to a transform of it (`f_jit = jax.jit(f)`)."""
        out: dict[str, list[str]] = {}
        for st in self.names.statements:
            if not (isinstance(st, ast.Assign) and isinstance(st.value, ast.Call)):
                continue
            tc = self.names.transform_call(st.value)
            if tc is None:
                continue
            for fn in tc[1]:
                if isinstance(fn, ast.Name):
                    out.setdefault(fn.id, []).extend(t.id for t in st.targets if isinstance(t, ast.Name))
        return out

    def _calls_by_name(self) -> dict[str, list[ast.Call]]:
        """The module's calls by the name they call (`f(...)`, `obj.f(...)`)."""
        out: dict[str, list[ast.Call]] = {}
        for _scope, call in self.calls:
            f = call.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name is not None:
                out.setdefault(name, []).append(call)
        return out

    def _mark_module_method(self, info: FunctionInfo) -> None:
        info.entry = info.entry or f"{info.cls.name if info.cls is not None else 'Module'}.{info.name} (a Module method)"
        static = self._static_by_signature(info)
        info.static_params |= static
        self._set(info, {p for p in info.params[1:] if p not in static}, True)

    def _set(self, info: FunctionInfo, traced: set[str], abstract: bool) -> bool:
        changed = not info.transformed or not traced <= info.traced_params or (abstract and not info.abstract)
        info.transformed = True
        info.traced_params |= traced
        info.abstract = info.abstract or abstract
        return changed

    def _static_by_signature(self, info: FunctionInfo) -> set[str]:
        node = info.node
        args = node.args
        out: set[str] = set()
        positional = [*args.posonlyargs, *args.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
        for a, d in pairs:
            if a.annotation is not None and _static_annotation(a.annotation):
                out.add(a.arg)
            elif isinstance(d, ast.Constant) and d.value is not None and not isinstance(d.value, float):
                out.add(a.arg)
            elif a.annotation is not None and self.types is not None and self.types.param_kind(info.qualname, a.arg) == "static":
                out.add(a.arg)  # `n: Count` with `Count: TypeAlias = int`
        return out

    def _is_compact(self, dec: ast.AST) -> bool:
        q = self.names.qualname(dec)
        return q in ("flax.linen.compact", "flax.linen.module.compact")

    def _is_module_class(self, cls: ast.ClassDef) -> bool:
        for b in cls.bases:
            q = self.names.qualname(b)
            if q in MODULE_BASES:
                return True
        return False

    # -- propagation -----------------------------------------------------------------------
    def _propagate(self) -> None:
        work = [f for f in self.functions.values() if f.transformed]
        seen_rounds = 0
        while work and seen_rounds < 10_000:
            seen_rounds += 1
            info = work.pop()
            info.traced = self._traced_names(info)
            for node in self.own_nodes(info):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not info.node:
                    child = self.functions.get(node)
                    if child is not None and id(node) not in self.host_functions:  # nested defs see the parent's tracers
                        self._set(child, set(), info.abstract)
                        work.append(child)
                elif isinstance(node, ast.Call):
                    callee = self.resolve(node.func, info)
                    if callee is None or callee is info:
                        continue
                    traced = self._traced_args(callee, node, info)
                    if traced and not any(c is info and n is node for c, n in callee.callers):
                        callee.callers.append((info, node))  # for the instability chains
                    if (traced or callee.transformed) and self._set(callee, traced, info.abstract):
                        work.append(callee)

    def _traced_args(self, callee: FunctionInfo, call: ast.Call, scope: FunctionInfo) -> set[str]:
        bound = isinstance(call.func, ast.Attribute) or (callee.name == "__call__" and self.types is not None)
        params = callee.params[1:] if callee.is_method and bound else callee.params
        out = traced_parameters(call, params, lambda e: self.is_traced(e, scope), keywords=callee.params, positional=_positional(callee, callee.is_method and bound))
        return out - callee.static_params

    # -- instability chains ------------------------------------------------------------------
    def chains(self, info: FunctionInfo, line: int, col: int, path: str, *, abstract: bool = False) -> tuple[Chain, ...]:
        """How transformed code reaches `line` of `info` when `info` is not itself transformed
        directly: each chain runs from that line through the calls with traced arguments
        (`callers`, then other files' calls) to a function a transform is applied to. A function
        transformed directly has no chain (the finding's own location says it all). `abstract`:
        only the chains that end in a transform staging the code out (`jit`, not `grad` alone),
        for hazards that exist only there."""
        if not info.transformed or info.entry:
            return ()
        out: list[Chain] = []
        self._extend((Frame(path, line, col, info.qualname),), info, (info,), path, out, abstract)
        return merge_chains(tuple(out))

    def _extend(self, prefix: Chain, info: FunctionInfo, seen: tuple[FunctionInfo, ...], path: str, out: list[Chain], abstract: bool) -> None:
        if len(out) >= 4 * MAX_CHAINS or len(prefix) > 12:
            return
        reached = False
        for caller, call in info.callers:
            if caller in seen:
                continue  # recursion: the chain through it is already there
            reached = True
            self._step((*prefix, Frame(path, call.lineno, call.col_offset + 1, caller.qualname, caller.entry)), caller, seen, path, out, abstract)
        for ext, ext_abstract in info.external:
            reached = True
            if ext_abstract or not abstract:
                out.append((*prefix, *ext))
        parent = info.parent
        if not reached and parent is not None and parent.transformed and parent not in seen:
            # defined inside transformed code and reached from there: the enclosing function,
            # at the nested def
            node = info.node
            self._step((*prefix, Frame(path, node.lineno, node.col_offset + 1, parent.qualname, parent.entry)), parent, seen, path, out, abstract)

    def _step(self, chain: Chain, outer: FunctionInfo, seen: tuple[FunctionInfo, ...], path: str, out: list[Chain], abstract: bool) -> None:
        if not outer.entry:
            self._extend(chain, outer, (*seen, outer), path, out, abstract)
        elif outer.abstract or not abstract:
            out.append(chain)

    @staticmethod
    def own_nodes(info: FunctionInfo) -> list[ast.AST]:
        """The nodes of a function's body in source order, not descending into nested functions
        or classes (their decorators are included); computed once per function."""
        if info.own is None:
            body = info.node.body
            info.own = walk(body if isinstance(body, list) else [body], stop=_SCOPE_TYPES)
        return info.own

    def _traced_names(self, info: FunctionInfo) -> set[str]:
        inherited = set(info.parent.traced) - set(info.params) if info.parent is not None else set()
        traced = set(info.traced_params) | inherited
        assigns = self.bindings(info, fresh=True)
        for _ in range(8):
            before = len(traced)
            for targets, value in assigns:
                if self._eval(value, traced, info):
                    for t in targets:
                        traced.update(_bound_names(t, containers=True))
            if len(traced) == before:
                break
        return traced

    def bindings(self, info: FunctionInfo, *, fresh: bool = False) -> list[tuple[list[ast.AST], ast.AST]]:
        """(targets, value) of every binding in the function's own body; also sets `assigned`
        and `containers`. Computed for transformed functions by the analysis, for others on demand."""
        if info.bindings and not fresh:
            return info.bindings
        assigns: list[tuple[list[ast.AST], ast.AST]] = []
        comps: list[tuple[list[ast.AST], ast.AST]] = []
        for node in self.own_nodes(info):
            if isinstance(node, ast.Assign):
                assigns.append((node.targets, node.value))
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
                assigns.append(([node.target], node.value if isinstance(node, ast.AnnAssign) else ast.BinOp(node.target, node.op, node.value)))
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                assigns.extend(_split_iteration(node.target, node.iter))
            elif isinstance(node, ast.NamedExpr):
                assigns.append(([node.target], node.value))
            elif isinstance(node, ast.comprehension):
                comps.extend(_split_iteration(node.target, node.iter))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        assigns.append(([item.optional_vars], item.context_expr))
        # a comprehension variable is local to its comprehension: where the function binds the same
        # name elsewhere (`for i, s in enumerate(...)` after `all(i.shape == () for i in xs)`),
        # those bindings decide whether the name is traced
        bound = {n for targets, _ in assigns for t in targets for n in _bound_names(t)}
        assigns += [(ts, v) for ts, v in comps if not any(n in bound for n in _bound_names(ts[0]))]
        info.assigned = bound | {n for targets, _ in comps for t in targets for n in _bound_names(t)}
        kinds: dict[str, bool] = {}
        for targets, value in assigns:
            is_container = _is_container(value, self.names)
            for t in targets:
                if isinstance(t, ast.Name):
                    kinds[t.id] = kinds.get(t.id, True) and is_container
                else:
                    for n in _bound_names(t):
                        kinds[n] = False
        info.containers = {k for k, v in kinds.items() if v}
        info.bindings = assigns
        return assigns

    def assigned(self, info: FunctionInfo) -> set[str]:
        """The names the function's own body binds (`FunctionInfo.assigned`), for any function:
        `bindings` fills it, for transformed functions during the analysis, for others here."""
        self.bindings(info)
        return info.assigned

    def _lambdas_of(self, info: FunctionInfo) -> frozenset[str]:
        """The names `info` assigns a lambda to (`f = lambda v: ...`), found once per function."""
        got = self._lambda_names.get(id(info))
        if got is None:
            own = self.own_nodes(info) if not isinstance(info.node, ast.Lambda) else []
            got = self._lambda_names[id(info)] = frozenset(
                t.id for n in own if isinstance(n, ast.Assign) and isinstance(n.value, ast.Lambda) for t in n.targets if isinstance(t, ast.Name)
            )
        return got

    def bound_once(self, name: str, info: FunctionInfo | None) -> ast.AST | None:
        """The value of `name` where the function binds it once, by a plain assignment
        (`name = value`), and it is not a parameter; None otherwise (a lambda binds nothing)."""
        if info is None or isinstance(info.node, ast.Lambda) or name in info.params:
            return None
        found = [(ts, v) for ts, v in self.bindings(info) if any(n == name for t in ts for n in _bound_names(t))]
        if len(found) != 1:
            return None
        ((targets, value),) = found
        return value if len(targets) == 1 and isinstance(targets[0], ast.Name) else None

    # -- traced-value evaluation -------------------------------------------------------------
    def is_traced(self, expr: ast.AST, scope: FunctionInfo | None) -> bool:
        """Is `expr` (possibly a container) built from traced values inside `scope`?"""
        if scope is None or not scope.transformed:
            return False
        return self._eval(expr, scope.traced, scope)

    def is_traced_array(self, expr: ast.AST, scope: FunctionInfo | None) -> bool:
        """Is `expr` a traced array (not a Python container of them, not a static value)?"""
        if isinstance(expr, CONTAINER_NODES):
            return False
        if isinstance(expr, ast.Name) and scope is not None and expr.id in scope.containers:
            return False
        if isinstance(expr, ast.Name) and scope is not None and expr.id not in scope.assigned:
            # a bare parameter may be a pytree (dict, list); only an annotation says it is an array
            owner = self._param_owner(expr.id, scope)
            typed = self.types.param_kind(owner.qualname, expr.id) if owner is not None and self.types is not None else None
            if owner is not None and typed != "array" and not array_annotated(owner, expr.id):
                return False
        kind = self.types.kind(expr) if self.types is not None else None
        if kind is not None and (kind in ("container", "none", "ndarray") or kind.startswith("tuple:") or (isinstance(expr, ast.Call) and kind == "static")):
            return False  # mypy: a tuple, list, dict, None or NumPy value is never a traced array
        return self.is_traced(expr, scope)

    def _param_attribute(self, e: ast.Attribute, traced: set[str], scope: FunctionInfo) -> bool:
        """`e` reads a field of a bare parameter whose type is unknown.

        Such a parameter is as often a config object or pytree node (whose fields are static
        aux data) as an array; only an array annotation (or the typed tier) says otherwise.
        """
        base: ast.AST = e.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in traced:
            return False
        owner = self._param_owner(base.id, scope)
        return owner is not None and not array_annotated(owner, base.id)

    def _param_owner(self, name: str, scope: FunctionInfo) -> FunctionInfo | None:
        s: FunctionInfo | None = scope
        while s is not None:
            if name in s.params:
                return s if name not in s.assigned else None
            if name in s.assigned:
                return None
            s = s.parent
        return None

    def _eval(self, e: ast.AST, traced: set[str], scope: FunctionInfo | None) -> bool:
        memo = self._memo
        if memo is None or scope is None or traced is not scope.traced:
            return self._eval_once(e, traced, scope)
        hit = memo.get(id(e))  # rules ask about every node of a long `a + b + ...` chain
        if hit is None:
            hit = memo[id(e)] = self._eval_once(e, traced, scope)
        return hit

    def _eval_once(self, e: ast.AST, traced: set[str], scope: FunctionInfo | None) -> bool:
        ev = self._eval
        if isinstance(e, ast.Name):
            return e.id in traced
        if isinstance(e, ast.Constant | ast.JoinedStr | ast.Lambda):
            return False
        if isinstance(e, ast.Attribute):
            if e.attr in STATIC_ATTRS:
                return False
            if e.attr not in ARRAY_ATTRS and scope is not None and self._param_attribute(e, traced, scope):
                if not (isinstance(e.value, ast.Name) and self._array_field(e.value.id, e.attr, scope)):
                    return False  # `config.tile_n`, `ctx.params.flag`: fields of an untyped argument
            return ev(e.value, traced, scope)
        if isinstance(e, ast.Subscript):
            return ev(e.value, traced, scope)
        if isinstance(e, ast.BinOp):
            return ev(e.left, traced, scope) or ev(e.right, traced, scope)
        if isinstance(e, ast.UnaryOp):
            return ev(e.operand, traced, scope)
        if isinstance(e, ast.BoolOp):
            return any(ev(v, traced, scope) for v in e.values)
        if isinstance(e, ast.Compare):
            if all(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in e.ops):
                return False
            return ev(e.left, traced, scope) or any(ev(c, traced, scope) for c in e.comparators)
        if isinstance(e, ast.IfExp):
            return ev(e.body, traced, scope) or ev(e.orelse, traced, scope)
        if isinstance(e, (ast.Tuple, ast.List, ast.Set)):
            return any(ev(x, traced, scope) for x in e.elts)
        if isinstance(e, ast.Dict):
            return any(v is not None and ev(v, traced, scope) for v in e.values)
        if isinstance(e, (ast.Starred, ast.NamedExpr, ast.Await)):
            return ev(e.value, traced, scope)
        if isinstance(e, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return ev(e.elt, traced | self._comp_targets(e, traced, scope), scope)
        if isinstance(e, ast.DictComp):
            return ev(e.value, traced | self._comp_targets(e, traced, scope), scope)
        if isinstance(e, ast.Call):
            return self._eval_call(e, traced, scope)
        return False

    def _comp_targets(self, e: ast.AST, traced: set[str], scope: FunctionInfo | None) -> set[str]:
        out: set[str] = set()
        for gen in getattr(e, "generators", ()):
            if self._eval(gen.iter, traced | out, scope):
                out |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        return out

    def _eval_call(self, e: ast.Call, traced: set[str], scope: FunctionInfo | None) -> bool:
        func = e.func
        q = self.names.qualname(func)
        if q is not None and (q in STATIC_BUILTINS or q in STATIC_JAX or q.startswith(("numpy.", "math.", "jax.dtypes.", "jax.numpy.dtypes."))):
            return False
        if self.types is not None and self.types.is_static_call(e):
            return False  # `count(x)` declared and inferred to return a Python int
        if q is not None and q.startswith(_ARRAY_MODULES) and scope is not None and self.staged(scope) and id(e) not in self._compile_time(scope):
            return True  # under jit every array op returns a tracer, even on constants
        if isinstance(func, ast.Attribute):
            if func.attr in STATIC_METHODS:
                return False
            if self._eval(func.value, traced, scope):
                return True
        args = [*e.args, *(k.value for k in e.keywords)]
        return any(self._eval(a, traced, scope) for a in args)

    # -- proofs: which values are traced arrays for certain ------------------------------------
    # `_eval` says what *may* be traced (the propagation needs that). A finding claims more: that
    # this value is a traced array. That holds for a parameter of a visible transform (or one a
    # proven traced argument reaches), for `jnp`/`lax`/`jax.random`/... results and array methods
    # of proven values, for arithmetic on them, and for names bound only to such values. A field of
    # an object (pytree aux data, an `eqx.Module` static field), a value from a container built in
    # the trace, the result of an unknown helper (`is_array(x)`, `not_jax_tracer(x)`), of
    # `eval_shape`: all may be Python values, so none is proven.
    def proves_traced(self, expr: ast.AST, scope: FunctionInfo | None) -> bool:
        """Does the analysis prove `expr` a traced array (or a comparison of one) in `scope`?"""
        if scope is None or not scope.transformed:
            return False
        memo = self._proof_memo
        if memo is None:
            return self._prove(expr, self._proven_names(scope), scope, 0)
        hit = memo.get(id(expr))
        if hit is None:
            hit = memo[id(expr)] = self._prove(expr, self._proven_names(scope), scope, 0)
        return hit

    def proves_traced_at(self, expr: ast.AST, scope: FunctionInfo | None, reaching: Mapping[str, ast.AST]) -> bool:
        """`proves_traced`, where each name of `reaching` holds the value of the one assignment that
        reaches the use (`z = z * z + c` just above `if jnp.abs(z) > 2.0:`), whatever the name's
        other bindings hold (`z = jnp.array([0j])` before the loop)."""
        if scope is None or not scope.transformed or not reaching:
            return False
        proven = self._proven_names(scope)
        extra = {name for name, value in reaching.items() if name not in proven and self._prove(value, proven, scope, 0)}
        return bool(extra) and self._prove(expr, proven | extra, scope, 0)

    def _propagate_proofs(self) -> None:
        """Proven parameters of functions that transformed code calls with proven traced arguments."""
        for _ in range(6):
            changed = False
            self._proven = {}
            for scope, call in self.calls:
                if scope is None or not scope.transformed:
                    continue
                callee = self.resolve(call.func, scope)
                if callee is None or callee is scope or not callee.transformed:
                    continue
                if id(call) in self.static_guarded(scope):
                    continue  # `if validate: check_python(x)`: reached only in some static configuration
                bound = isinstance(call.func, ast.Attribute)
                params = callee.params[1:] if callee.is_method and bound else callee.params
                got = traced_parameters(call, params, lambda e: self.proves_traced(e, scope), keywords=callee.params, positional=_positional(callee, callee.is_method and bound))
                got = got - callee.static_params - callee.proven_params
                if got:
                    callee.proven_params |= got
                    changed = True
            if not changed:
                break
        self._proven = {}

    def static_guarded(self, info: FunctionInfo) -> set[int]:
        """ids of the nodes of the function's body that run only under a test of its static
        parameters (`if validate:`, `if S is None:`, `if loop == "python":`): which branch runs is a static configuration
        the analysis cannot see, so nothing there is proven to run under the transform."""
        got = self._guarded.get(id(info))
        if got is not None:
            return got
        out: set[int] = set()
        body = info.node.body if isinstance(info.node.body, list) else []
        stack: list[ast.AST] = list(body)
        while stack:
            n = stack.pop()
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(n, ast.If) and self._static_test(n.test, info):
                out |= {id(m) for st in (*n.body, *n.orelse) for m in ast.walk(st)}
            stack.extend(ast.iter_child_nodes(n))
        self._guarded[id(info)] = out
        return out

    def _static_test(self, test: ast.AST, info: FunctionInfo) -> bool:
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return self._static_test(test.operand, info)
        if isinstance(test, ast.BoolOp):
            return all(self._static_test(v, info) for v in test.values)
        if isinstance(test, ast.Name):
            return test.id in info.static_params and test.id not in info.assigned
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Is, ast.IsNot)):
            sides = (test.left, test.comparators[0])
            return any(isinstance(s, ast.Constant) and s.value is None for s in sides) and any(isinstance(s, ast.Name) and s.id in info.params for s in sides)
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
            # `if loop == "python":`, `if mode in ("train", "eval"):`: a parameter compared with
            # strings is a Python string (never traced): the caller's mode picks the branch
            sides = (test.left, test.comparators[0])
            return any(_strings(s) for s in sides) and any(isinstance(s, ast.Name) and s.id in info.params and s.id not in info.assigned for s in sides)
        return False

    def _proven_names(self, info: FunctionInfo) -> set[str]:
        got = self._proven.get(id(info))
        if got is not None:
            return got
        self._proven[id(info)] = set()  # a cycle through a parent sees nothing proven
        inherited = self._proven_names(info.parent) - set(info.params) if info.parent is not None else set()
        base = (info.proven_params | inherited) & info.traced
        bound = {n for targets, _ in info.bindings for t in targets for n in _bound_names(t, containers=True)}
        proven = (base - bound) | (info.traced & bound)
        proven -= {n for n in bound if n in info.params and n not in base}
        for _ in range(8):  # the greatest set of names whose every binding is proven
            drop = set()
            for targets, value in info.bindings:
                for t in targets:
                    for name, v in _pairs(t, value):
                        if name in proven and (v is None or not self._prove(v, proven, info, 0)):
                            drop.add(name)
            if not drop:
                break
            proven -= drop
        self._proven[id(info)] = proven
        return proven

    def _prove(self, e: ast.AST, proven: set[str], scope: FunctionInfo, depth: int) -> bool:
        if depth > 40:
            return False
        pr = self._prove
        d = depth + 1
        if isinstance(e, ast.Name):
            return e.id in proven and not self._container_param(e.id, scope)
        if isinstance(e, ast.Attribute):
            if e.attr in ARRAY_ATTRS:
                return pr(e.value, proven, scope, d)
            # a field: pytree aux data and static fields are Python values, unless the parameter's
            # class (in this module) declares the field an array
            return isinstance(e.value, ast.Name) and self._array_field(e.value.id, e.attr, scope)
        if isinstance(e, ast.Subscript):
            picked = self._display_item(e, scope)
            if picked is not None:
                return pr(picked, proven, scope, d)
            if isinstance(e.value, ast.Name) and e.value.id in scope.containers:
                return False
            base: ast.AST = e.value
            if isinstance(base, ast.Name) and self._filtered_param(base.id, scope):
                return False  # a leaf of an `eqx.filter_*` argument may be a static Python value
            if isinstance(base, ast.Name):
                return base.id in proven  # an item of a traced array, or of a container of them
            return pr(base, proven, scope, d)
        if isinstance(e, ast.BinOp):
            return pr(e.left, proven, scope, d) or pr(e.right, proven, scope, d)
        if isinstance(e, ast.UnaryOp):
            return pr(e.operand, proven, scope, d)
        if isinstance(e, ast.BoolOp):
            return any(pr(v, proven, scope, d) for v in e.values)
        if isinstance(e, ast.Compare):
            if any(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in e.ops):
                return False
            sides = [e.left, *e.comparators]
            if any(self._sentinel(x) for x in sides):
                return False  # `x == SENTINEL` with `SENTINEL = object()` or None: a Python bool
            return any(pr(x, proven, scope, d) for x in sides)
        if isinstance(e, ast.IfExp):
            return pr(e.body, proven, scope, d) and pr(e.orelse, proven, scope, d)
        if isinstance(e, (ast.Starred, ast.NamedExpr)):
            return pr(e.value, proven, scope, d)
        if isinstance(e, ast.Call):
            func = e.func
            q = self.names.qualname(func)
            args = [*e.args, *(k.value for k in e.keywords)]
            if q is not None:
                if q in STATIC_JAX or q in STATIC_BUILTINS or not q.startswith(_ARRAY_MODULES):
                    if not (isinstance(func, ast.Attribute) and func.attr in ARRAY_METHODS and self.names.qualname(func.value) is None):
                        return False
                else:
                    # under a staging transform (jit, a lax body) every array op returns a tracer,
                    # even on Python values (`jnp.maximum(span / dt, 1)`, `random.PRNGKey(0)`)
                    return any(pr(a, proven, scope, d) for a in args) or (self.staged(scope) and id(e) not in self._compile_time(scope))
            if isinstance(func, ast.Attribute) and func.attr in ARRAY_METHODS:
                return pr(func.value, proven, scope, d)
            if isinstance(func, ast.Call) and self.names.transform_call(func) is not None:
                return any(pr(a, proven, scope, d) for a in args)  # `jax.vmap(f)(x)`, `jax.grad(f)(x)`
            if self.types is not None and self.types.kind(e) == "array" and any(pr(a, proven, scope, d) for a in args):
                return True  # mypy: a helper in another module returns an array of traced input
            callee = self.resolve(func, scope) if isinstance(func, ast.Name) else None
            if callee is not None and callee is not scope and not isinstance(callee.node, ast.Lambda) and depth < 20:
                return self._returns_proven(callee, d)  # a helper of this module returning traced arrays
            return False
        return False

    def staged(self, info: FunctionInfo) -> bool:
        """Is `info` (or a function it is nested in) staged out by a transform that traces it to a
        jaxpr, where even an array op on constants returns a tracer: `jit`, `remat`, `shard_map`,
        `eval_shape`, a `lax` control-flow body? Not `vmap` or `grad` alone, where an op on Python
        values stays concrete."""
        hit = self._staged.get(id(info))
        if hit is None:
            hit = any(t.family in _STAGING for t in info.transforms) or (info.parent is not None and self.staged(info.parent))
            self._staged[id(info)] = hit
        return hit

    def _compile_time(self, info: FunctionInfo) -> set[int]:
        """The nodes of `info` inside `with jax.ensure_compile_time_eval():`, which run eagerly even
        under `jit`."""

        out = self._compile_time_nodes.get(id(info))
        if out is None:
            out = self._compile_time_nodes[id(info)] = set()
            for n in self.own_nodes(info):
                if isinstance(n, ast.With) and any(
                    self.names.qualname(i.context_expr.func if isinstance(i.context_expr, ast.Call) else i.context_expr) in _COMPILE_TIME
                    for i in n.items
                ):
                    out |= {id(m) for st in n.body for m in ast.walk(st)}
        return out

    def _returns_proven(self, info: FunctionInfo, depth: int) -> bool:
        """Every `return` of the helper hands back a proven traced array (a Python value on any
        path, or no return, leaves it unproven)."""
        if not info.transformed:
            return False
        key = -id(info)  # memoised beside the names, per propagation round
        got = self._proven.get(key)
        if got is not None:
            return bool(got)
        self._proven[key] = set()  # recursion: not proven
        proven = self._proven_names(info)
        rets = [n for n in self.own_nodes(info) if isinstance(n, ast.Return)]
        ok = bool(rets) and all(r.value is not None and self._prove(r.value, proven, info, depth) for r in rets)
        self._proven[key] = {"*"} if ok else set()
        return ok

    def _array_field(self, name: str, attr: str, scope: FunctionInfo) -> bool:
        """`saveat.ts` where `saveat: SaveAt` is a traced parameter of a visible transform (rebound
        at most through `eqx.tree_at`/`replace` of itself) and `SaveAt` (a class of this module,
        or a base of it) declares `ts: jax.Array`, not static."""
        s: FunctionInfo | None = scope
        while s is not None and name not in s.params:
            if name in s.assigned:
                return False
            s = s.parent
        if s is None or not s.transforms or name not in s.traced_params:
            return False
        for targets, value in s.bindings:
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and not _rebuilds(value, name):
                return False
        args = s.node.args
        ann = next((a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg == name), None)
        if ann is None:
            return False
        text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
        cls = self.class_nodes.get(text.rsplit(".", 1)[-1].strip())
        seen: set[str] = set()
        while cls is not None and cls.name not in seen:
            seen.add(cls.name)
            for st in cls.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.target.id == attr:
                    return _array_field_annotation(st)
            base = next((b for b in cls.bases if isinstance(b, (ast.Name, ast.Attribute))), None)
            cls = self.class_nodes.get(ast.unparse(base).rsplit(".", 1)[-1]) if base is not None else None
        return False

    def _container_param(self, name: str, scope: FunctionInfo) -> bool:
        """A parameter annotated as a Python container (`Tuple[jax.Array, jax.Array]`): its
        truth value is the container's, never a tracer's (its items may still be traced)."""
        owner = self._param_owner(name, scope)
        if owner is None:
            return False
        args = owner.node.args
        ann = next((a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg == name), None)
        if ann is None:
            return False
        head = ann.value if isinstance(ann, ast.Subscript) else ann
        word = head.id if isinstance(head, ast.Name) else head.attr if isinstance(head, ast.Attribute) else ""
        return word in ("Tuple", "tuple", "List", "list", "Dict", "dict", "Sequence", "Mapping")

    def _filtered_param(self, name: str, scope: FunctionInfo) -> bool:
        owner = self._param_owner(name, scope)
        return owner is not None and bool(owner.transforms) and all(t.filtered for t in owner.transforms)

    def _display_item(self, e: ast.Subscript, scope: FunctionInfo) -> ast.AST | None:
        """`{"type": "sample", "value": x}["type"]`, also through a name bound only to that display:
        the item the constant key picks, or None when unknown."""
        base, key = e.value, e.slice
        if not isinstance(key, ast.Constant):
            return None
        displays: list[ast.AST] = [base]
        if isinstance(base, ast.Name) and base.id in scope.containers:
            displays = [v for targets, v in scope.bindings if any(isinstance(t, ast.Name) and t.id == base.id for t in targets)]
        items: list[ast.AST] = []
        for disp in displays:
            if isinstance(disp, ast.Dict):
                hit = [v for k, v in zip(disp.keys, disp.values) if isinstance(k, ast.Constant) and k.value == key.value]
                if len(hit) != 1 or any(k is None for k in disp.keys):
                    return None
                items.append(hit[0])
            elif isinstance(disp, (ast.Tuple, ast.List)) and isinstance(key.value, int) and not any(isinstance(x, ast.Starred) for x in disp.elts):
                if not -len(disp.elts) <= key.value < len(disp.elts):
                    return None
                items.append(disp.elts[key.value])
            else:
                return None
        if len(items) == 1:
            return items[0]
        return ast.Constant(None) if items and all(isinstance(i, ast.Constant) for i in items) else None

    def _sentinel(self, e: ast.AST) -> bool:
        """None, or a module name bound only to `object()`."""
        if isinstance(e, ast.Constant) and e.value is None:
            return True
        if not isinstance(e, ast.Name):
            return False
        table = getattr(self, "_sentinels", None)
        if table is None:
            table = self._sentinels = _module_sentinels(self.tree, self.names)
        return e.id in table


_ARRAY_MODULES = ("jax.numpy.", "jax.lax.", "jax.nn.", "jax.scipy.", "jax.random.", "jax.image.", "jax.ops.", "optax.losses.", "optax.softmax", "optax.sigmoid", "optax.l2_loss", "optax.huber_loss")
ARRAY_METHODS = frozenset(
    {
        "sum", "mean", "max", "min", "prod", "std", "var", "astype", "reshape", "transpose", "squeeze", "ravel", "flatten", "clip",
        "round", "any", "all", "argmax", "argmin", "cumsum", "cumprod", "dot", "conj", "conjugate", "take", "repeat", "swapaxes",
        "sort", "argsort", "diagonal", "trace", "set", "add", "multiply", "divide", "power", "apply", "__getitem__", "view", "nonzero",
    }
)


def _pairs(target: ast.AST, value: ast.AST) -> list[tuple[str, ast.AST | None]]:
    """(name, the value it receives) for a binding; `a, b = x, None` pairs element-wise, `x[i] = v`
    binds nothing proven about `x` (None)."""
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    if isinstance(target, (ast.Tuple, ast.List)):
        if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) and not any(isinstance(x, ast.Starred) for x in (*value.elts, *target.elts)):
            return [p for t, v in zip(target.elts, value.elts) for p in _pairs(t, v)]
        return [p for t in target.elts for p in _pairs(t, ast.Subscript(value, ast.Constant(0), ast.Load()) if not isinstance(t, ast.Starred) else value)]
    if isinstance(target, ast.Starred):
        return _pairs(target.value, value)
    return [(n, None) for n in _bound_names(target, containers=True)]


_PASS_THROUGH = {"vmap": (1, "in_axes"), "shard_map": (2, "in_specs")}  # where None means "as it is"


def _defaults_left(info: FunctionInfo, params: list[str], n_args: int, names: frozenset[str]) -> set[str]:
    """The parameters with a default that the transformed function's one visible call leaves out
    (`def convert(i, n=n)`, `jax.vmap(convert)(idx)`): they keep their default, a Python value."""
    defaulted = _defaults(info)
    return {p for i, p in enumerate(params) if p in defaulted and i >= n_args and p not in names}


def _defaults(info: FunctionInfo) -> dict[str, ast.expr]:
    """Parameter -> its default, for the parameters of `info` that have one."""
    a = info.node.args
    positional = [x.arg for x in (*a.posonlyargs, *a.args)]
    out = dict(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
    out.update({k.arg: d for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    return out


def _passed_through(t: Transform, call: ast.Call, scope: ast.AST) -> Transform:
    """`jax.vmap(f, (0, None))(x, n)`, `@partial(jax.vmap, (0, None))`, `@jax.vmap(in_axes=...)`:
    an argument with `in_axes` None is passed through as it is (a Python int stays one), so it is
    not traced by this transform; so is one whose `jax.shard_map` `in_specs` entry is None. Axes
    bound to a name in `scope` are read from its one list (`axes = 6 * [None]`, then `axes[4] =
    0`); axes the source does not spell make the transform `unsure` of what it traces."""
    if t.family not in _PASS_THROUGH:
        return t
    at, kw = _PASS_THROUGH[t.family]
    axes = call.args[at] if len(call.args) > at else next((k.value for k in call.keywords if k.arg == kw), None)
    if axes is None or (isinstance(axes, ast.Constant) and isinstance(axes.value, int)):
        return t  # every argument mapped
    if isinstance(axes, ast.Name):
        entries = _axes_bound(axes.id, scope)
        if entries is None:
            return dataclasses.replace(t, unsure=True)
    elif isinstance(axes, (ast.Tuple, ast.List)):
        entries = [isinstance(e, ast.Constant) and e.value is None for e in axes.elts]
    else:
        return dataclasses.replace(t, unsure=True)
    nones = {i for i, none in enumerate(entries) if none}
    return dataclasses.replace(t, static_argnums=tuple(sorted({*t.static_argnums, *nones}))) if nones else t


def _axes_bound(name: str, scope: ast.AST) -> list[bool] | None:
    """Which entries of the list `name` holds in `scope` are None: one binding to a literal
    (`[0, None]`, `6 * [None]`, `[None] * 6`) and stores of literal indices (`axes[4] = 0`); None
    where anything else touches it (a second binding, `.append`, a computed index)."""
    entries: list[bool] | None = None
    stores: list[tuple[int, bool]] = []
    for n in ast.walk(scope):
        if isinstance(n, ast.Assign) and len(n.targets) == 1:
            target = n.targets[0]
            if isinstance(target, ast.Name) and target.id == name:
                if entries is not None:
                    return None
                entries = _literal_axes(n.value)
                if entries is None:
                    return None
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id == name:
                index = target.slice
                if not (isinstance(index, ast.Constant) and isinstance(index.value, int)):
                    return None
                stores.append((index.value, isinstance(n.value, ast.Constant) and n.value.value is None))
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign)) and isinstance(n.target, ast.Name) and n.target.id == name:
            return None
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == name:
            return None  # axes.append(0), axes.insert(...)
    if entries is None:
        return None
    for i, none in stores:
        if not -len(entries) <= i < len(entries):
            return None
        entries[i] = none
    return entries


def _literal_axes(e: ast.AST) -> list[bool] | None:
    """`[0, None]`, `(0, None)`, `6 * [None]`, `[None] * 6`: which entries are None."""
    if isinstance(e, (ast.List, ast.Tuple)):
        return [isinstance(x, ast.Constant) and x.value is None for x in e.elts]
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult):
        for seq, count in ((e.left, e.right), (e.right, e.left)):
            items = _literal_axes(seq)
            if items is not None and isinstance(count, ast.Constant) and isinstance(count.value, int) and not isinstance(count.value, bool):
                return items * count.value
    return None


def _rebuilds(value: ast.AST, name: str) -> bool:
    """`eqx.tree_at(where, name, ...)`, `dataclasses.replace(name, ...)`, `name._replace(...)`,
    `name.replace(...)`: the same class, other field values."""
    if not isinstance(value, ast.Call):
        return False
    f = value.func
    if isinstance(f, ast.Attribute) and f.attr in ("_replace", "replace") and isinstance(f.value, ast.Name) and f.value.id == name:
        return True
    last = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if last in ("tree_at", "replace"):
        return any(isinstance(a, ast.Name) and a.id == name for a in value.args[:2])
    return False


def _array_field_annotation(st: ast.AnnAssign) -> bool:
    """A dataclass field annotated as an array, and not marked static (`eqx.field(static=True)`,
    `field(pytree_node=False)`, `field(metadata={"static": True})`)."""
    words = [n.id for n in ast.walk(st.annotation) if isinstance(n, ast.Name)] + [n.attr for n in ast.walk(st.annotation) if isinstance(n, ast.Attribute)]
    if isinstance(st.annotation, ast.Constant) and isinstance(st.annotation.value, str):
        words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*", st.annotation.value)
    if not any(_ARRAY_NAME.search(w) for w in words):
        return False
    if isinstance(st.value, ast.Call):
        text = ast.unparse(st.value)
        if "static=True" in text or "pytree_node=False" in text or "'static': True" in text or '"static": True' in text:
            return False
    return True


def _module_sentinels(tree: ast.Module, names: Names) -> set[str]:
    out: dict[str, bool] = {}
    for st in tree.body:
        if isinstance(st, (ast.Assign, ast.AnnAssign)) and st.value is not None:
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            is_obj = isinstance(st.value, ast.Call) and not st.value.args and not st.value.keywords and names.qualname(st.value.func) == "builtins.object"
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = out.get(t.id, True) and is_obj
    return {k for k, v in out.items() if v}


def traced_parameters(call: ast.Call, params: list[str], traced: Callable[[ast.AST], bool], *, keywords: list[str] | None = None, positional: int | None = None) -> set[str]:
    """The parameters (of `params`, in order) that receive a traced argument at `call`;
    a traced `*args` makes every parameter from its position on traced, except, where the callee
    has `positional` positional parameters and no `*args` of its own, the last ones that the
    arguments after it bind (`f(*x, k)`: `k` is the last parameter's)."""
    out: set[str] = set()
    for i, a in enumerate(call.args):
        if isinstance(a, ast.Starred):
            after = call.args[i + 1 :]
            if positional is not None and after and not any(isinstance(b, ast.Starred) for b in after) and i + len(after) <= positional:
                end = positional - len(after)
                if traced(a.value):
                    out |= set(params[i:end])
                out |= {params[end + j] for j, b in enumerate(after) if traced(b)}
            elif traced(a.value):
                out |= set(params[i:])
            break
        if i < len(params) and traced(a):
            out.add(params[i])
    names = params if keywords is None else keywords
    for k in call.keywords:
        if k.arg and k.arg in names and traced(k.value):
            out.add(k.arg)
    return out


def _positional(info: FunctionInfo, bound: bool) -> int | None:
    """How many positional parameters a call of `info` fills (`self` left out where the call is
    bound); None where it takes `*args`."""
    args = info.node.args
    if args.vararg is not None:
        return None
    return len(args.posonlyargs) + len(args.args) - (1 if bound else 0)


def _param_names(args: ast.arguments) -> list[str]:
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg:
        names.append(args.vararg.arg)
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append(args.kwarg.arg)
    return names


CONTAINER_NODES = (ast.Tuple, ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)
_CONTAINER_CALLS = frozenset({"builtins.list", "builtins.tuple", "builtins.dict", "builtins.set", "builtins.zip", "builtins.map", "builtins.filter", "builtins.enumerate", "builtins.sorted", "builtins.reversed"})


def _split_iteration(target: ast.AST, it: ast.AST) -> list[tuple[list[ast.AST], ast.AST]]:
    """`for a, b in zip(xs, ys)` binds a from xs and b from ys; `for i, x in enumerate(xs)`
    binds x from xs (and i to a Python int); `for k, v in d.items()` binds v from d and k (like
    `for k in d.keys()`) to a Python value: a dict key is hashable, so never a tracer."""
    if isinstance(it, ast.Call) and isinstance(target, ast.Tuple) and not it.keywords:
        fname = it.func.id if isinstance(it.func, ast.Name) else it.func.attr if isinstance(it.func, ast.Attribute) else ""
        if fname.endswith("zip") and len(it.args) == len(target.elts) and not any(isinstance(a, ast.Starred) for a in it.args):
            return [([t], ast.Subscript(a, ast.Constant(0), ast.Load())) for t, a in zip(target.elts, it.args)]
        if fname == "enumerate" and len(it.args) == 1 and len(target.elts) == 2:
            return [([target.elts[0]], ast.Constant(0)), ([target.elts[1]], ast.Subscript(it.args[0], ast.Constant(0), ast.Load()))]
        if fname == "items" and isinstance(it.func, ast.Attribute) and not it.args and len(target.elts) == 2:
            # a dict's keys are hashable Python values, never tracers: `for key, val in metrics.items()`
            return [([target.elts[0]], ast.Constant("")), ([target.elts[1]], ast.Subscript(it.func.value, ast.Constant(0), ast.Load()))]
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr == "keys" and not it.args and not it.keywords:
        return [([target], ast.Constant(""))]
    return [([target], it)]


def _bound_names(target: ast.AST, *, containers: bool = False) -> list[str]:
    """Names a binding target rebinds: `a`, `a, (b, *c)`; with `containers`, also the container
    that `x[i] = v` stores into (never the names in the index)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _bound_names(e, containers=containers)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value, containers=containers)
    if containers and isinstance(target, ast.Subscript):
        base = target.value
        while isinstance(base, ast.Subscript):
            base = base.value
        return [base.id] if isinstance(base, ast.Name) else []
    return []


def _is_container(value: ast.AST, names: Names) -> bool:
    if isinstance(value, CONTAINER_NODES):
        return True
    if isinstance(value, ast.Call) and names.qualname(value.func) in _CONTAINER_CALLS:
        return True
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
        return _is_container(value.left, names) or _is_container(value.right, names)
    return False


ARRAY_WORDS = ("Array", "ndarray", "Float", "Int", "Bool", "Num", "Shaped", "Real", "Complex", "Key", "UInt", "Inexact")


_ARRAY_NAME = re.compile(r"^(?:Array|ArrayLike|ndarray|Tensor|Shaped|Num|Real|Inexact|Integer|Key|PRNGKeyArray|(?:Float|Int|UInt|Bool|Complex|BFloat)\d*)$|Array$")


def array_annotated(info: FunctionInfo, name: str) -> bool:
    args = info.node.args
    for a in (*args.posonlyargs, *args.args, *args.kwonlyargs):
        if a.arg == name and a.annotation is not None:
            ann: ast.AST = a.annotation
            if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
                return any(_ARRAY_NAME.search(w) for w in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", ann.value))
            words = [n.id for n in ast.walk(ann) if isinstance(n, ast.Name)] + [n.attr for n in ast.walk(ann) if isinstance(n, ast.Attribute)]
            return any(_ARRAY_NAME.search(w) for w in words)
    return False


def _static_annotation(ann: ast.AST) -> bool:
    """`int`, `bool | None`, `Optional[str]`, `Sequence[int]`, `Callable[..., Any]`: Python values.

    `Any` alone says nothing, and anything naming an array type is not static.
    """
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        try:
            ann = ast.parse(ann.value, mode="eval").body
        except SyntaxError:
            return False
    if isinstance(ann, ast.Name) and ann.id == "Any":
        return False
    words = [n.id for n in ast.walk(ann) if isinstance(n, ast.Name)] + [n.attr for n in ast.walk(ann) if isinstance(n, ast.Attribute)]
    if any(isinstance(n, ast.Constant) and not (n.value is None or n.value is Ellipsis or isinstance(n.value, (str, int))) for n in ast.walk(ann)):
        return False
    return bool(words) and all(w in STATIC_ANNOTATION_WORDS for w in words)


def _strings(e: ast.AST) -> bool:
    """A string literal, or a tuple/list/set display of them."""
    if isinstance(e, ast.Constant):
        return isinstance(e.value, str)
    return isinstance(e, (ast.Tuple, ast.List, ast.Set)) and bool(e.elts) and all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in e.elts)
