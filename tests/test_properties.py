"""Property-based tests (hypothesis) for three core pieces every number depends on: projection onto a
budget, ``--set`` overrides, and the YAML loader's line bookkeeping behind every error location."""

from __future__ import annotations

import math

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avharness.suite import apply_overrides
from avharness.threat import Budget
from avharness.yamlload import parse_yaml, plain

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def projection_case(draw):
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.one_of(st.just(0.0), st.floats(min_value=0, max_value=50, allow_nan=False)))
    lo = float(draw(st.integers(min_value=-1000, max_value=990))) / 10
    hi = lo + float(draw(st.integers(min_value=1, max_value=2000))) / 10
    shape = draw(st.sampled_from([(1, 3), (2, 4), (3, 2, 5)]))
    n = math.prod(shape)
    # the clean input lies inside the valid range; the candidate anywhere
    unit = draw(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=n, max_size=n))
    x = (lo + (hi - lo) * torch.tensor(unit, dtype=torch.float64)).reshape(shape).float().clamp(lo, hi)
    cand = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).reshape(shape)
    return Budget(norm, float(eps), (float(lo), float(hi))), x, cand


@SETTINGS
@given(projection_case())
def test_project_stays_inside_ball_and_range(case):
    budget, x, cand = case
    out = budget.project(cand, x)
    lo, hi = budget.bounds
    assert out.shape == x.shape
    assert bool((out >= lo).all()) and bool((out <= hi).all())
    delta = (out - x).flatten(1).double()
    size = delta.abs().amax(1) if budget.norm == "linf" else delta.norm(dim=1)
    # float32 rounding of x + delta: the runner's slack
    assert bool((size <= budget.eps + 1e-5 * max(budget.eps, 1.0, abs(lo), abs(hi))).all()), (size, budget)
    if budget.eps == 0:
        assert torch.equal(out, x)


@SETTINGS
@given(projection_case())
def test_project_is_idempotent_on_points_already_inside(case):
    budget, x, cand = case
    once = budget.project(cand, x)
    twice = budget.project(once, x)
    assert torch.allclose(once, twice, atol=1e-4 * max(1.0, budget.eps))


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalars = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda f: f != int(f)),
    st.booleans(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10).filter(
        lambda s: s not in ("yes", "no", "on", "off", "true", "false", "null", "y", "n")),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))


@SETTINGS
@given(path=st.lists(keys, min_size=1, max_size=4), value=values)
def test_set_override_puts_the_parsed_value_at_its_path(path, value):
    raw = parse_yaml("eval: {split: test}\nmodels: [{name: a, plugin: p}]\n")
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("..."):  # a bare scalar document
        text = text[:-3].strip()
    apply_overrides(raw, [f"{'.'.join(path)}={text}"])
    node = raw
    for part in path:
        node = node[part]
    assert plain(node) == value


@SETTINGS
@given(path=st.lists(keys, min_size=1, max_size=3), value=scalars)
def test_set_override_records_where_the_value_came_from(path, value):
    raw = parse_yaml("seed: 0\n")
    apply_overrides(raw, [f"{'.'.join(path)}={yaml.safe_dump(value).splitlines()[0]}"])
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    assert parent.key_lines[path[-1]] == f"--set {'.'.join(path)}"


@st.composite
def nested_document(draw):
    """A mapping of unique keys to scalars, lists or nested mappings, dumped in block style."""
    doc = draw(st.dictionaries(keys, st.one_of(scalars, st.lists(scalars, min_size=1, max_size=3),
                                               st.dictionaries(keys, scalars, min_size=1, max_size=3)),
                               min_size=1, max_size=6))
    return doc, yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)


@SETTINGS
@given(nested_document())
def test_yaml_lines_point_at_each_key_and_item(case):
    doc, text = case
    lines = text.splitlines()
    loaded = parse_yaml(text, "suite.yaml")
    assert plain(loaded) == doc

    def check(node, indent):
        for key, line in node.key_lines.items():
            assert lines[line - 1].startswith(" " * indent + f"{key}:") or lines[line - 1].startswith(
                " " * indent + f"'{key}':"), (key, line, text)
            child = node[key]
            if isinstance(child, dict):
                check(child, indent + 2)
            elif isinstance(child, list):
                for item_line in child.item_lines:
                    assert lines[item_line - 1].lstrip().startswith("- "), (key, item_line, text)

    check(loaded, 0)
