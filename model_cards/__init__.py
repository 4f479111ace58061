"""Jinja templates of the model cards ``hf_sparse.create_model_card`` renders (shipped as package data).

``model_card.md.jinja`` receives the YAML header as ``card_data`` plus the values ``hf_sparse.hub`` prepares:
the methods and their settings, the per-module summary, evaluation results and the usage snippet.
"""
