"""STB501 jit-in-loop: build the jitted function once, and pass what varies as arguments.

Four shapes are rewritten (all unsafe: closed-over values become traced arguments, so a value
that the function uses as a Python constant, in an `if` or as a shape, would now fail to trace):

    for b in batches:                                  step = jax.jit(lambda p, b, *, lr: update(p, b, lr))
        step = jax.jit(lambda p, b: update(p, b, lr))  ...
        params = step(params, b)                 ->    for b in batches:
                                                           params = step(params, b, lr=lr)

    jax.jit(partial(model, temperature=t))(xs)   ->    jax.jit(model)(xs, temperature=t)

    def predict(w, x):                                 @jax.jit
        @jax.jit                                       def forward(v, *, w):
        def forward(v):                                    return jnp.tanh(w @ v)
            return jnp.tanh(w @ v)               ->
        return forward(x)                              def predict(w, x):
                                                           return forward(x, w=w)

`jax.jit(step)(x)` of a nested `def step` is rewritten like the decorated nested def. The lambda
or nested function moves to module level, above the function that built it, and its
closed-over locals become keyword-only parameters passed at every call.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from stabcheck.finding import Finding, byte_col
from stabcheck.fix._rewrite import Rewrite, module_aliases

Range = tuple[int, int, int, int]  # line, col (0-based), end line, end col: ast and libcst agree


def _range(n: ast.AST) -> Range:
    return (n.lineno, n.col_offset, n.end_lineno or n.lineno, n.end_col_offset or 0)  # type: ignore[attr-defined]


@dataclass
class _Plan:
    replace: dict[Range, str] = field(default_factory=dict)  # expression range -> new code
    remove_stmt: Range | None = None  # a small statement (Assign) whose line goes away
    remove_def: tuple[str, int] | None = None  # (name, def line) of a nested def that moves
    insert: str = ""  # module-level code, placed before the top-level statement at `before_line`
    before_line: int = 0


def fix(source: str, finding: Finding) -> Rewrite | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    s = finding.span
    lines = source.splitlines()

    def offset(ln: int, c: int) -> int:  # the finding counts characters, `ast` UTF-8 bytes
        return byte_col(lines[ln - 1], c) - 1 if 0 < ln <= len(lines) else c - 1

    line, col = s.line, offset(s.line, s.col)
    end = (s.end_line, offset(s.end_line, s.end_col)) if s.end_line and s.end_col else None  # `jax.jit(f)(x)` starts where `jax.jit(f)` does
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any((d.lineno, d.col_offset) == (line, col) for d in node.decorator_list):
            plan = _nested_def(tree, node, parents, source)
            return None if plan is None else _apply(source, plan, "move the jitted function to module level")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (node.lineno, node.col_offset) == (line, col) and node.args and (end is None or _range(node)[2:] == end):
            aliases = module_aliases(source)
            fn = node.args[0]
            if isinstance(fn, ast.Lambda):
                plan = _lambda(tree, node, fn, parents, source)
            elif isinstance(fn, ast.Call) and _qual(fn.func, aliases) == "functools.partial":
                plan = _partial(tree, node, fn, parents)
            elif isinstance(fn, ast.Name):
                plan = _jitted_nested_name(tree, node, fn, parents, source)
            else:
                continue
            return None if plan is None else _apply(source, plan, "build the jitted function once")
    return None


# -- analysis (ast) ----------------------------------------------------------------------------------
def _qual(e: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(e, ast.Attribute):
        parts.append(e.attr)
        e = e.value
    if not isinstance(e, ast.Name):
        return None
    head = aliases.get(e.id)
    return None if head is None else ".".join([head, *reversed(parts)])


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _enclosing(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> list[ast.AST]:
    """Enclosing functions, innermost first."""
    out: list[ast.AST] = []
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            out.append(p)
        p = parents.get(p)
    return out


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """Nodes of a function's own scope (not inside nested functions, lambdas or classes)."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        n = stack.pop()
        out.append(n)
        if not isinstance(n, _SCOPES):
            stack.extend(ast.iter_child_nodes(n))
    return out


def _params(fn: ast.AST) -> set[str]:
    a = fn.args  # type: ignore[attr-defined]
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return set(names)


def _locals(fn: ast.AST) -> tuple[set[str], set[str]]:
    """(local names of a function, the ones bound by def/class/import: not values to pass)."""
    names = set(_params(fn))
    defs: set[str] = set()
    declared_global: set[str] = set()
    for n in _own_nodes(fn):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            defs |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared_global |= set(n.names)
    return (names | defs) - declared_global, defs


def _free_locals(inner: ast.AST, chain: list[ast.AST]) -> list[str] | None:
    """Names `inner` reads from the enclosing functions, in first-use order; None if unpassable."""
    own = _params(inner)
    if not isinstance(inner, ast.Lambda):
        own |= _locals(inner)[0]
    for n in ast.walk(inner):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            own.add(n.id)
        elif isinstance(n, ast.Lambda) and n is not inner:
            own |= _params(n)
        elif isinstance(n, (ast.Nonlocal, ast.Global, ast.Yield, ast.YieldFrom, ast.Await)):
            return None
    enclosing: set[str] = set()
    defs: set[str] = set()
    for fn in chain:
        names, d = _locals(fn)
        enclosing |= names
        defs |= d
    loads = sorted((n for n in ast.walk(inner) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)), key=lambda n: (n.lineno, n.col_offset))
    out: list[str] = []
    for n in loads:
        if n.id in own or n.id not in enclosing or n.id in out:
            continue
        if n.id in defs or n.id in ("self", "cls"):
            return None  # a function, class or module: not a value JAX can trace
        out.append(n.id)
    return out


def _module_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for n in _own_nodes(tree):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return names


def _fresh_name(tree: ast.Module, want: str) -> str:
    taken = _module_names(tree) | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    name, i = want, 2
    while name in taken:
        name, i = f"{want}_{i}", i + 1
    return name


def _calls_only(fn: ast.AST, name: str, allowed_store: ast.AST | None) -> list[ast.Call] | None:
    """Every use of `name` in `fn` is a call `name(...)`; its only binding is `allowed_store`."""
    calls: list[ast.Call] = []
    callees = {id(n.func): n for n in ast.walk(fn) if isinstance(n, ast.Call)}
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and n.id == name:
            if isinstance(n.ctx, ast.Load):
                if id(n) not in callees:
                    return None
                calls.append(callees[id(n)])
            elif n is not allowed_store:
                return None
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name and n is not allowed_store:
            return None
        elif isinstance(n, ast.arg) and n.arg == name:
            return None
    return calls


def _with_kwargs(call: ast.Call, source: str, callee: str, extra: list[str], front: list[str] = ()) -> str | None:  # type: ignore[assignment]
    if any(k.arg in extra for k in call.keywords):
        return None
    pos = [*front, *(ast.get_source_segment(source, a) or ast.unparse(a) for a in call.args)]
    kws = [ast.get_source_segment(source, k) or ast.unparse(k) for k in call.keywords]
    return f"{callee}({', '.join([*pos, *kws, *(f'{x}={x}' for x in extra)])})"


def _top_level(node: ast.AST, parents: dict[ast.AST, ast.AST], tree: ast.Module) -> ast.stmt:
    while parents.get(node) is not tree:
        node = parents[node]
    return node  # type: ignore[return-value]


def _first_line(stmt: ast.stmt) -> int:
    """The statement's first line, its decorators included."""
    return min([d.lineno for d in getattr(stmt, "decorator_list", [])] + [stmt.lineno])


def _hoistable(inner: ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef, at: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, list[str]] | None:
    """The function enclosing `at` and the locals `inner` closes over, when `inner` can move to
    module level with those locals as keyword-only arguments; else None."""
    chain = _enclosing(at, parents)
    if not chain or not isinstance(chain[0], (ast.FunctionDef, ast.AsyncFunctionDef)) or inner.args.kwarg is not None:
        return None
    free = _free_locals(inner, chain)
    return None if free is None else (chain[0], free)


def _lambda(tree: ast.Module, jit: ast.Call, lam: ast.Lambda, parents: dict[ast.AST, ast.AST], source: str) -> _Plan | None:
    found = _hoistable(lam, jit, parents)
    if found is None:
        return None
    outer, free = found
    new_lambda = _lambda_with_kwonly(ast.get_source_segment(source, lam) or "", free)
    if new_lambda is None:
        return None
    jit_text = ast.get_source_segment(source, jit) or ""
    lam_text = ast.get_source_segment(source, lam) or ""
    new_jit = jit_text.replace(lam_text, new_lambda, 1)
    plan = _Plan(before_line=_first_line(_top_level(outer, parents, tree)))
    parent = parents.get(jit)
    if isinstance(parent, ast.Call) and parent.func is jit:  # jax.jit(lambda ...)(args)
        name = _fresh_name(tree, f"_{outer.name}_jitted")
        call = _with_kwargs(parent, source, name, free)
        if call is None:
            return None
        plan.replace[_range(parent)] = call
        plan.insert = f"{name} = {new_jit}\n"
        return plan
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name) and parent.value is jit:
        target = parent.targets[0]
        calls = _calls_only(outer, target.id, target)
        if not calls:
            return None
        name = target.id if target.id not in _module_names(tree) else _fresh_name(tree, f"_{outer.name}_{target.id}")
        for c in calls:
            new = _with_kwargs(c, source, name, free)
            if new is None:
                return None
            plan.replace[_range(c)] = new
        plan.remove_stmt = _range(parent)
        plan.insert = f"{name} = {new_jit}\n"
        return plan
    return None


def _lambda_with_kwonly(text: str, extra: list[str]) -> str | None:
    """`lambda p, b: body` + ["lr"] -> `lambda p, b, *, lr: body`."""
    if not extra:
        return text
    try:
        lam = cst.parse_expression(text)
    except cst.ParserSyntaxError:
        return None
    if not isinstance(lam, cst.Lambda):
        return None
    params = _add_kwonly(lam.params, extra)
    return None if params is None else cst.Module([]).code_for_node(lam.with_changes(params=params))


def _add_kwonly(params: cst.Parameters, extra: list[str]) -> cst.Parameters | None:
    if isinstance(params.star_kwarg, cst.Param):
        return None
    star = params.star_arg if isinstance(params.star_arg, (cst.Param, cst.ParamStar)) else cst.ParamStar()
    new = [cst.Param(cst.Name(x)) for x in extra]
    return params.with_changes(star_arg=star, kwonly_params=[*params.kwonly_params, *new])


def _partial(tree: ast.Module, jit: ast.Call, part: ast.Call, parents: dict[ast.AST, ast.AST]) -> _Plan | None:
    """`jax.jit(partial(g, *a, **k))(x)` -> `jax.jit(g)(*a, x, **k)` when `g` is not a fresh function."""
    if not part.args or any(isinstance(a, ast.Starred) for a in part.args) or any(k.arg is None for k in part.keywords):
        return None
    g = part.args[0]
    if not isinstance(g, (ast.Name, ast.Attribute)):
        return None
    chain = _enclosing(jit, parents)
    if isinstance(g, ast.Name) and any(g.id in _locals(fn)[1] for fn in chain):
        return None  # a nested def: jitting it is just as fresh
    front_args, front_kws = part.args[1:], part.keywords
    if front_args and (len(jit.args) > 1 or jit.keywords):
        return None  # static_argnums would shift
    parent = parents.get(jit)
    plan = _Plan()

    def seg(n: ast.AST) -> str:
        return ast.unparse(n)

    new_jit = f"{seg(jit.func)}({', '.join([seg(g), *(seg(a) for a in jit.args[1:]), *(seg(k) for k in jit.keywords)])})"
    extra_kw = [f"{k.arg}={seg(k.value)}" for k in front_kws]

    def rebuilt(call: ast.Call, callee: str) -> str | None:
        if any(k.arg in {fk.arg for fk in front_kws} for k in call.keywords):
            return None
        pos = [*(seg(a) for a in front_args), *(seg(a) for a in call.args)]
        kws = [*(seg(k) for k in call.keywords), *extra_kw]
        return f"{callee}({', '.join([*pos, *kws])})"

    if isinstance(parent, ast.Call) and parent.func is jit:
        new = rebuilt(parent, new_jit)
        if new is None:
            return None
        plan.replace[_range(parent)] = new
        return plan
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name) and chain:
        target = parent.targets[0]
        calls = _calls_only(chain[0], target.id, target)
        if not calls:
            return None
        plan.replace[_range(jit)] = new_jit
        for c in calls:
            new = rebuilt(c, target.id)
            if new is None:
                return None
            plan.replace[_range(c)] = new
        return plan
    return None


def _jitted_nested_name(tree: ast.Module, jit: ast.Call, fn_name: ast.Name, parents: dict[ast.AST, ast.AST], source: str) -> _Plan | None:
    """`jax.jit(step)(args)` where `step` is a def nested in the enclosing function: move the def."""
    chain = _enclosing(jit, parents)
    if not chain or not isinstance(chain[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    outer = chain[0]
    defs = [n for n in _own_nodes(outer) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == fn_name.id]
    if len(defs) != 1 or defs[0].decorator_list or defs[0].args.kwarg is not None:
        return None
    inner = defs[0]
    free = _free_locals(inner, [outer, *chain[1:]])
    if free is None:
        return None
    name = inner.name if inner.name not in _module_names(tree) else _fresh_name(tree, f"_{outer.name}_{inner.name}")
    plan = _Plan(before_line=_first_line(_top_level(outer, parents, tree)))
    callees = {id(n.func): n for n in ast.walk(outer) if isinstance(n, ast.Call)}
    for use in ast.walk(outer):
        if not (isinstance(use, ast.Name) and use.id == inner.name):
            continue
        if not isinstance(use.ctx, ast.Load):
            return None
        if id(use) in callees:  # step(args): a direct call
            site = callees[id(use)]
            new = _with_kwargs(site, source, name, free)
        else:  # jax.jit(step, ...)(args): the name is the jit's first argument, called inline
            j = parents.get(use)
            call = parents.get(j) if j is not None else None
            if not (isinstance(j, ast.Call) and j.args and j.args[0] is use and isinstance(call, ast.Call) and call.func is j):
                return None
            rest = [ast.get_source_segment(source, a) or ast.unparse(a) for a in (*j.args[1:], *j.keywords)]
            callee = f"{ast.get_source_segment(source, j.func) or ast.unparse(j.func)}({', '.join([name, *rest])})"
            site = call
            new = _with_kwargs(call, source, callee, free)
        if new is None:
            return None
        plan.replace[_range(site)] = new
    plan.remove_def = (inner.name, inner.lineno)
    plan.insert = _moved_def(source, inner, free, name) or ""
    return plan if plan.insert else None


def _nested_def(tree: ast.Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, parents: dict[ast.AST, ast.AST], source: str) -> _Plan | None:
    found = _hoistable(fn, fn, parents)
    if found is None:
        return None
    outer, free = found
    calls = _calls_only(outer, fn.name, fn)
    if not calls:
        return None
    name = fn.name if fn.name not in _module_names(tree) else _fresh_name(tree, f"_{outer.name}_{fn.name}")
    plan = _Plan(before_line=_first_line(_top_level(outer, parents, tree)))
    for c in calls:
        new = _with_kwargs(c, source, name, free)
        if new is None:
            return None
        plan.replace[_range(c)] = new
    plan.remove_def = (fn.name, fn.lineno)
    plan.insert = _moved_def(source, fn, free, name) or ""
    return plan if plan.insert else None


def _moved_def(source: str, fn: ast.AST, extra: list[str], name: str) -> str | None:
    """The nested def's code at module level, with `extra` keyword-only parameters."""
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module)
    pos = wrapper.resolve(PositionProvider)
    for node in pos:
        if isinstance(node, cst.FunctionDef) and node.name.value == fn.name and pos[node.name].start.line == fn.lineno:  # type: ignore[attr-defined]
            params = _add_kwonly(node.params, extra) if extra else node.params
            if params is None:
                return None
            moved = node.with_changes(params=params, name=cst.Name(name), leading_lines=())
            return cst.Module([]).code_for_node(moved)
    return None


# -- rewriting (libcst) --------------------------------------------------------------------------------
class _Rewriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, plan: _Plan) -> None:
        super().__init__()
        self.plan = plan
        self.done: set[Range] = set()
        self.removed = False

    def _range(self, node: cst.CSTNode) -> Range:
        r = self.get_metadata(PositionProvider, node)
        return (r.start.line, r.start.column, r.end.line, r.end.column)

    def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode):  # type: ignore[no-untyped-def, override]
        if isinstance(original, cst.BaseExpression):
            key = self._range(original)
            if key in self.plan.replace and key not in self.done:
                self.done.add(key)
                return cst.parse_expression(self.plan.replace[key]).with_changes(lpar=updated.lpar, rpar=updated.rpar)  # type: ignore[attr-defined]
        if isinstance(original, cst.SimpleStatementLine) and self.plan.remove_stmt is not None:
            if len(original.body) == 1 and isinstance(original.body[0], cst.Assign) and self._range(original.body[0]) == self.plan.remove_stmt:
                self.removed = True
                return cst.RemovalSentinel.REMOVE
        if isinstance(original, cst.FunctionDef) and self.plan.remove_def is not None:
            name, line = self.plan.remove_def
            if original.name.value == name and self.get_metadata(PositionProvider, original.name).start.line == line:
                self.removed = True
                return cst.RemovalSentinel.REMOVE
        if isinstance(original, cst.IndentedBlock) and isinstance(updated, cst.IndentedBlock) and updated.body and original.body:
            first = updated.body[0]
            lines = getattr(first, "leading_lines", ())
            if first is not original.body[0] and self.removed and lines and all(line.comment is None for line in lines):
                return updated.with_changes(body=[first.with_changes(leading_lines=()), *updated.body[1:]])
        return updated


def _apply(source: str, plan: _Plan, description: str) -> Rewrite | None:
    wrapper = MetadataWrapper(cst.parse_module(source))
    pos = wrapper.resolve(PositionProvider)
    index = None
    if plan.insert:
        for i, stmt in enumerate(wrapper.module.body):
            r = pos[stmt]
            if r.start.line <= plan.before_line <= r.end.line:  # type: ignore[attr-defined]
                index = i
                break
        if index is None:
            return None
    rw = _Rewriter(plan)
    module = wrapper.visit(rw)
    if len(rw.done) != len(plan.replace) or ((plan.remove_stmt or plan.remove_def) and not rw.removed):
        return None
    if plan.insert and index is not None:
        body = list(module.body)
        new_stmts = list(cst.parse_module(plan.insert).body)
        following = body[index]
        blank = [line for line in following.leading_lines if line.comment is None][-2:] or [cst.EmptyLine()]
        new_stmts[0] = new_stmts[0].with_changes(leading_lines=blank if index else [])
        body[index:index] = new_stmts
        if not following.leading_lines:  # the file's own spacing between top-level statements
            body[index + len(new_stmts)] = following.with_changes(leading_lines=blank)
        module = module.with_changes(body=body)
    return Rewrite(module.code, description=description)
