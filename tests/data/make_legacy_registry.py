"""How tests/data/legacy_registry was made: a small MMoE exported by the code before grouped batches
(commit 372c1f2, whose artifacts take forward(sparse, dense)), with its scores on 12 rows.

    git worktree add /tmp/legacy 372c1f2 && cd /tmp/legacy
    PYTHONPATH=/tmp/legacy python /path/to/this/file.py OUT
    # then OUT/registry/legacy -> tests/data/legacy_registry/legacy, OUT/rows.parquet and
    # OUT/scores.json -> tests/data/legacy_registry/

`tests/test_user_once.py::test_a_model_exported_before_grouped_batches_still_serves` reads it.
"""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

from recsys_mtl.devtools.fixtures import make_raw_table
from recsys_mtl.export import export_model
from recsys_mtl.loader import load_model
from recsys_mtl.models import build_model
from recsys_mtl.recipe import load_recipe, recipe_from_dict
from recsys_mtl.transform import FeatureTransform

out = Path(sys.argv[1])
d = load_recipe("configs/ads_ranker.yaml").to_dict()
for f in d["features"]:
    if f.get("hash_size"):
        f["hash_size"] = min(f["hash_size"], 97)
d["model"] = {"type": "mmoe", "num_experts": 2, "expert_hidden": [8], "tower_hidden": [4]}
r = recipe_from_dict(d)
torch.manual_seed(0)
model = build_model(r).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
tf = FeatureTransform.from_recipe(r)
export_model(model, r, tf, out / "registry", "legacy", version=1, uncalibrated_reason="a test fixture")
m = load_model(out / "registry", "legacy", "1")
table = make_raw_table(r, 12, seed=5)
pq.write_table(table, out / "rows.parquet")
scores = m.score(table)
(out / "scores.json").write_text(json.dumps({k: v.tolist() for k, v in scores.items()}))
print("ok", m.manifest["artifact"]["signature"])
