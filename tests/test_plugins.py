import pytest
from conftest import make_dist

from avharness import UserError
from avharness.plugins import get_registry, load_registry


def test_builtins_are_found_through_entry_points():
    reg = get_registry()
    assert {"audio_cnn", "video_cnn", "early_fusion", "late_fusion"} <= set(reg.names("model"))
    assert {"fgsm", "pgd"} <= set(reg.names("attack"))
    assert "avdigits" in reg.names("dataset")
    assert "standard" in reg.names("defense")
    assert {"accuracy", "attack_success_rate", "perturbation"} <= set(reg.names("metric"))
    assert all(reg.entries["model"][n].dist == "avharness" for n in ("audio_cnn", "late_fusion"))
    assert not reg.failures


def test_third_party_distribution_is_discovered(example):
    reg = get_registry()
    entry = reg.entry("model", "linear_av")
    assert (entry.dist, entry.version) == ("avharness-example", "0.1.0")
    assert reg.entry("dataset", "gaussian_av").dist == "avharness-example"
    assert any(d["dist"] == "avharness-example" for d in reg.distributions())


def test_autoload_can_be_disabled(example, monkeypatch):
    monkeypatch.setenv("AVHARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = load_registry()
    assert "linear_av" not in reg.names("model")
    assert "late_fusion" in reg.names("model")


def test_unknown_name_suggests(example):
    with pytest.raises(UserError, match=r"unknown model 'late_fuson' — did you mean 'late_fusion'\?.*known models:"):
        get_registry().get("model", "late_fuson")


def test_duplicate_names_are_reported_with_both_distributions(with_site, tmp_path):
    code = """
        import avharness
        @avharness.hookimpl
        def register_attacks(register):
            register("pgd", lambda **kw: None)
    """
    make_dist(tmp_path, "mylab-attacks", "mylab_attacks", code)
    with_site(tmp_path)
    reg = get_registry()
    with pytest.raises(UserError, match=r"'pgd' is registered by more than one plugin: avharness .*mylab-attacks"):
        reg.get("attack", "pgd")
    assert reg.get("attack", "fgsm") is not None  # the rest still works


def test_broken_plugin_is_reported_and_others_load(with_site, tmp_path, capsys):
    make_dist(tmp_path, "broken-plugin", "broken_plugin", "raise ImportError('needs libfoo')\n")
    with_site(tmp_path)
    reg = get_registry()
    assert [(d, "needs libfoo" in e) for _, d, e in reg.failures] == [("broken-plugin", True)]
    assert "pgd" in reg.names("attack")
    assert "broken-plugin" in capsys.readouterr().err
