"""Embedding lookups: the recipe's categorical features -> per-field vectors and padded sequences.

Two TorchRec modules, plain submodules so that `DistributedModelParallel` can shard them:

- one `EmbeddingBagCollection` (pooled) for id and multi_id features, and for behaviour sequences
  when the model wants them pooled (every model but DTRN);
- `EmbeddingCollection`s (unpooled; TorchRec needs one per embedding width) for the tables that
  DTRN's target attention reads: every table holding a `sequence` feature. Every feature on such a
  table is looked up there too (e.g. the candidate `creative_id` shares the `creative` table with
  `clicked_items`), because features that name one table must share one set of rows.

Features naming the same `table` share one table config with several `feature_names`.
Both modules receive the whole KeyedJaggedTensor and pick their features by name (unsharded they
read ``to_dict()``; sharded they permute/split by key), so the model makes no assumption about the
key order beyond the names.

How the lookups form the model input: (docs/METHODS.md, "Notation and the common input").
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys_mtl.recipe import FeatureSpec, Recipe


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] float mask, 1 on real positions (lengths beyond max_len clip)."""
    pos = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    return (pos < lengths.unsqueeze(1)).to(torch.float32)


def _padded(jt: JaggedTensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpooled lookups of one feature -> ([B, max_len, D] zero-padded, [B, max_len] mask)."""
    return jt.to_padded_dense(desired_length=max_len, padding_value=0.0), length_mask(jt.lengths(), max_len)


class SparseArch(nn.Module):
    """Looks up every categorical feature of a recipe.

    forward(sparse) -> (fields, sequences, masks):
      fields     one pooled [B, D_f] tensor per entry of ``field_names`` (recipe order): id and
                 multi_id features, plus sequence features when ``unpooled_sequences`` is False
                 (then pooled with the feature's ``pooling``, sum or mean);
      sequences  one [B, max_len, D] zero-padded tensor per entry of ``sequence_names`` (only when
                 ``unpooled_sequences``), newest first as the transform keeps them;
      masks      the matching [B, max_len] float masks (1 = real item).

    Args:
        recipe: the recipe whose sparse features to embed.
        unpooled_sequences: keep sequences unpooled for attention (DTRN).
        device: where to create the tables (``torch.device("meta")`` for DMP to materialise).
    """

    def __init__(self, recipe: Recipe, unpooled_sequences: bool, device: torch.device | None = None) -> None:
        super().__init__()
        feats = recipe.sparse_features
        by_table: dict[str, list[FeatureSpec]] = {}
        for f in feats:
            by_table.setdefault(f.table_name, []).append(f)
        ec_tables = (
            {t for t, fs in by_table.items() if any(f.kind == "sequence" for f in fs)}
            if unpooled_sequences
            else set()
        )

        # ---- pooled tables -----------------------------------------------------------------
        bag_configs: list[EmbeddingBagConfig] = []
        # Features whose wanted pooling differs from their table's: looked up with SUM, divided
        # by their length here (one table has one pooling type in TorchRec).
        self._manual_mean: list[str] = []
        for t, fs in by_table.items():
            if t in ec_tables:
                continue
            # Single-valued id features pool the same under sum and mean: they do not vote.
            wanted = {f.pooling for f in fs if f.kind != "id"}
            pooling = PoolingType.MEAN if wanted == {"mean"} else PoolingType.SUM
            if pooling == PoolingType.SUM:
                self._manual_mean += [f.name for f in fs if f.kind != "id" and f.pooling == "mean"]
            bag_configs.append(
                EmbeddingBagConfig(
                    name=t,
                    embedding_dim=int(fs[0].embedding_dim or 0),
                    num_embeddings=fs[0].num_rows,
                    feature_names=[f.name for f in fs],
                    pooling=pooling,
                )
            )
        self._bag_features: list[str] = [n for c in bag_configs for n in c.feature_names]
        self.ebc: EmbeddingBagCollection | None = (
            EmbeddingBagCollection(tables=bag_configs, device=device) if bag_configs else None
        )

        # ---- unpooled tables, one EmbeddingCollection per width -----------------------------
        ec_by_dim: dict[int, list[EmbeddingConfig]] = {}
        for t, fs in by_table.items():
            if t in ec_tables:
                d = int(fs[0].embedding_dim or 0)
                ec_by_dim.setdefault(d, []).append(
                    EmbeddingConfig(
                        name=t,
                        embedding_dim=d,
                        num_embeddings=fs[0].num_rows,
                        feature_names=[f.name for f in fs],
                    )
                )
        self.ecs = nn.ModuleDict(
            {f"dim{d}": EmbeddingCollection(tables=cfgs, device=device) for d, cfgs in ec_by_dim.items()}
        )
        self._unpooled: dict[str, FeatureSpec] = {
            f.name: f for f in feats if f.table_name in ec_tables
        }  # features served by the ECs

        # ---- output layout -----------------------------------------------------------------
        self.field_names: list[str] = [
            f.name for f in feats if not (unpooled_sequences and f.kind == "sequence")
        ]
        self.field_dims: list[int] = [int(recipe.feature(n).embedding_dim or 0) for n in self.field_names]
        self.sequence_names: list[str] = [
            f.name for f in feats if unpooled_sequences and f.kind == "sequence"
        ]
        self.sequence_dims: list[int] = [
            int(recipe.feature(n).embedding_dim or 0) for n in self.sequence_names
        ]
        self.sequence_lens: list[int] = [int(recipe.feature(n).max_len or 0) for n in self.sequence_names]
        # user/context features (one value per request) vs item features: `MultiTaskModel.forward_grouped`
        self.field_request_level: list[bool] = [recipe.feature(n).request_level for n in self.field_names]
        self.sequence_request_level: list[bool] = [
            recipe.feature(n).request_level for n in self.sequence_names
        ]
        # (name, kind, max_len, mean?) of unpooled-table fields, for the loop in forward
        self._ec_fields: list[tuple[str, str, int, bool]] = [
            (f.name, f.kind, int(f.max_len or 1), f.pooling == "mean")
            for f in (recipe.feature(n) for n in self.field_names)
            if f.name in self._unpooled
        ]

    def forward(
        self, sparse: KeyedJaggedTensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        pooled: dict[str, torch.Tensor] = {}
        if self.ebc is not None:  # build-time constant
            # a plain dict keyed by name (under FX, to_dict() itself is one opaque node)
            kt = self.ebc(sparse).to_dict()
            pooled = {name: kt[name] for name in self._bag_features}
        if len(self._manual_mean) > 0:
            jts = sparse.to_dict()
            for name in self._manual_mean:
                n = jts[name].lengths().clamp(min=1).to(pooled[name].dtype).unsqueeze(1)
                pooled[name] = pooled[name] / n
        unpooled: dict[str, JaggedTensor] = {}
        for ec in self.ecs.values():
            unpooled.update(ec(sparse))
        for name, kind, max_len, mean in self._ec_fields:
            if kind == "id":
                # one value per row by the transform's contract; padding to 1 also covers a
                # missing value (zeros) without data-dependent shapes
                pooled[name] = unpooled[name].to_padded_dense(desired_length=1, padding_value=0.0)[:, 0, :]
            else:
                emb, mask = _padded(unpooled[name], max_len)
                s = (emb * mask.unsqueeze(-1)).sum(dim=1)
                pooled[name] = s / mask.sum(dim=1, keepdim=True).clamp(min=1.0) if mean else s
        fields = [pooled[n] for n in self.field_names]
        sequences: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for name, max_len in zip(self.sequence_names, self.sequence_lens, strict=True):
            emb, mask = _padded(unpooled[name], max_len)
            sequences.append(emb)
            masks.append(mask)
        return fields, sequences, masks
