"""Settings added in a later version leave earlier runs, databases and score files valid at their default value."""

from __future__ import annotations

from evoprune.darwinlm import pipeline as darwin
from evoprune.config import RunConfig
from evoprune.obs.database import stamped_settings


def test_run_settings_leave_out_added_fields_at_their_default():
    config = darwin.search_config(RunConfig())
    assert "storage_dtype" not in config["database"] and "train_embeddings" not in config["search"]
    changed = RunConfig()
    changed.database.storage_dtype = "bfloat16"
    changed.search.train_embeddings = True
    config = darwin.search_config(changed)
    assert config["database"]["storage_dtype"] == "bfloat16" and config["search"]["train_embeddings"] is True


def test_database_identity_leaves_out_added_fields_at_their_default():
    assert stamped_settings({"percdamp": 0.01, "storage_dtype": "model"}) == {"percdamp": 0.01}
    assert stamped_settings({"storage_dtype": "bfloat16"}) == {"storage_dtype": "bfloat16"}
