"""`avharness plugin new`: every kind's generated distribution installs, is listed and passes `plugin check`
and its own conformance test."""

import importlib
import os
import subprocess
import sys
import venv

import pytest
from conftest import ROOT, make_dist

from avharness.cli import main
from avharness.plugins import get_registry
from avharness.scaffold import KINDS, new_plugin
from avharness.testing import assert_passes


@pytest.mark.parametrize("kind", KINDS)
def test_generated_plugin_passes_plugin_check_and_its_own_test(kind, tmp_path, with_site, capsys):
    name = f"my_{kind}"
    root = new_plugin(name, kind, tmp_path / "dist")
    assert {"pyproject.toml", "README.md"} <= {p.name for p in root.iterdir()}
    assert f'avharness_{name} = "avharness_{name}"' in (root / "pyproject.toml").read_text()
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, f"avharness-my-{kind}", f"avharness_{name}", root / f"avharness_{name}", entry=f"avharness_{name}")
    with_site(site)
    entry = get_registry().entry(kind, name)
    assert entry.dist == f"avharness-my-{kind}" and not get_registry().failures
    assert main(["plugin", "check", name, "--kind", kind]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out
    # the generated test, as its author would run it
    test_mod = root / "tests" / f"test_avharness_{name}.py"
    ns: dict = {}
    exec(compile(test_mod.read_text(), str(test_mod), "exec"), ns)
    ns["test_conforms"]()
    importlib.invalidate_caches()


def test_plugin_new_refuses_bad_names_and_full_folders(tmp_path, capsys):
    assert main(["plugin", "new", "My-Attack", "--kind", "attack", "-o", str(tmp_path / "x")]) == 2
    assert "Python identifier" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert main(["plugin", "new", "ok", "--kind", "attack", "-o", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_kit_is_importable_for_third_party_tests():
    from avharness.testing import check_attack
    from avharness_plugins.attacks.pgd import build_pgd

    assert_passes(check_attack(build_pgd, steps=5))


@pytest.mark.slow
def test_generated_plugin_installs_with_pip_in_a_fresh_venv(tmp_path):
    """The real thing: a fresh venv (seeing this environment's packages), `pip install -e` of avharness's
    generated attack, `avharness list`, `plugin check` and the plugin's own pytest."""
    root = new_plugin("noisy_step", "attack", tmp_path / "avharness-noisy-step")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # avharness itself comes from this checkout's environment (system site = the test's venv)
    pth = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "parent.pth"
    parents = [p for p in sys.path if p.endswith("site-packages")]
    pth.write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(root)],
                   check=True, env=env, cwd=tmp_path)
    cli = [str(py), "-m", "avharness.cli"]
    listed = subprocess.run([*cli, "list", "attack"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "noisy_step" in listed.stdout and "avharness-noisy-step" in listed.stdout, listed.stderr
    check = subprocess.run([*cli, "plugin", "check", "noisy_step"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0 and "0 failed" in check.stdout, check.stdout + check.stderr
    tests = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                           capture_output=True, text=True, env=env, cwd=root)
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert ROOT.exists()
