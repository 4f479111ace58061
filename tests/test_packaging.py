"""Packaging: kernels/ ships as hf_sparse.kernels, never as a top-level `kernels` module; the model card templates
ship as hf_sparse.model_cards."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def test_kernels_live_inside_the_package():
    import hf_sparse.kernels

    assert hf_sparse.kernels.__name__ == "hf_sparse.kernels"


def test_no_top_level_kernels_module_from_a_neutral_directory(tmp_path):
    code = ("import importlib.util; s = importlib.util.find_spec('kernels'); "
            "print('ours' if s and s.origin and 'hf-sparse' in open(s.origin).read() else 'not ours')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "not ours"
    dist = importlib.metadata.distribution("hf-sparse")
    top_level = {str(f).split("/")[0] for f in dist.files or []}
    assert "kernels" not in top_level


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("hf-sparse") == "hf_sparse.cli:main"



def test_model_card_templates_ship_with_the_package():
    from importlib import resources

    assert resources.files("hf_sparse.model_cards").joinpath("model_card.md.jinja").is_file()
    # a regular (wheel) install lists its files in RECORD; an editable install or a stray egg-info does not
    records = [dist.read_text("RECORD") or "" for dist in importlib.metadata.distributions(name="hf-sparse")]
    for record in [r for r in records if "hf_sparse/__init__.py," in r]:
        assert "hf_sparse/model_cards/model_card.md.jinja," in record
        assert "\nmodel_cards/" not in "\n" + record
