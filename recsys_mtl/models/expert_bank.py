"""The experts of one level as one batched operation.

A mixture-of-experts level runs k experts of the same shape. Written as k modules (`Expert`,
`GatedExpert` in `recsys_mtl.models.experts`), a forward is k x (layers) small kernels one after
another, and the backward as many again. `ExpertBank` holds the k experts' parameters stacked
([k, in, out] per layer) and runs each layer of all k as one kernel:

- a first layer on an input every expert shares is ONE matrix product x [B, in] @ [in, k * out];
- every later layer (and a first layer on per-expert inputs, e.g. after HoME's feature-gates) is one
  batched product [k, B, in] x [k, in, out] (`torch.baddbmm`);
- HoME's feature-gates x * 2 sigmoid(x B_i A_i) (arXiv 2408.05430, fix 3) are one product for all
  B_i and one batched product for all A_i;
- BatchNorm over the k experts' outputs is one BatchNorm over k * d channels (each channel has its
  own statistics, as k separate BatchNorms would); LayerNorm normalises each expert's row and
  applies its own affine.

The same parameters compute the same outputs as the k modules (`copy_from` / `reference_experts`
convert both ways; tests check it to float precision), so the equations stay those of the papers
(docs/METHODS.md, "MMoE", "PLE", "HoME"); only the kernels change. State dicts written before the
bank (keys ``<level>.experts.<i>....``) are converted by `upgrade_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys_mtl.models.experts import Expert, GatedExpert
from recsys_mtl.models.user_once import Input, dense, linear


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's default initialisation (kaiming_uniform with a = sqrt(5) for the weight, and
    the same bound for the bias): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(t, -bound, bound)


class ExpertBank(nn.Module):
    """k experts of one shape, computed together; forward -> [B, k, d] (expert i at [:, i]).

    Each expert is exactly `Expert(in_dim, hidden, norm, dropout)` behind an optional
    `FeatureGate(in_dim, feature_gate_rank)` (`GatedExpert`): ReLU layers, and with ``norm``
    "batch" / "layer" a linear last layer, its normalisation and Swish (HoME's fix 1).

    Args:
        num_experts: k.
        in_dim: input width.
        hidden: layer widths; the last is the output width d.
        norm: "none" | "batch" | "layer".
        dropout: dropout after hidden activations.
        feature_gate_rank: r of each expert's feature-gate (0: none).
        feature_gate_zero_init: A starts at zeros (the gate starts as the identity).
        per_expert_input: forward takes [k, B, in] (expert i reads x[i]) instead of one shared
            [B, in] (a build-time choice: the traced graph has one form).
    """

    def __init__(
        self,
        num_experts: int,
        in_dim: int,
        hidden: Sequence[int],
        norm: str = "none",
        dropout: float = 0.0,
        feature_gate_rank: int = 0,
        feature_gate_zero_init: bool = True,
        per_expert_input: bool = False,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError("an expert bank needs at least one expert")
        if not hidden:
            raise ValueError("an expert needs at least one layer (expert_hidden is empty)")
        if norm not in ("none", "batch", "layer"):
            raise ValueError(f"unknown expert norm {norm!r}")
        k = num_experts
        self.num_experts: int = k
        self.in_dim: int = in_dim
        self.hidden: list[int] = list(hidden)
        self.norm: str = norm
        self.dropout: float = dropout
        self.feature_gate_rank: int = feature_gate_rank
        self.feature_gate_zero_init: bool = feature_gate_zero_init
        self.per_expert_input: bool = per_expert_input
        self.out_dim: int = self.hidden[-1]
        self.gated: bool = feature_gate_rank > 0
        if self.gated:
            r = feature_gate_rank
            self.gate_down = nn.Parameter(torch.empty(k, in_dim, r))  # B_i, x B_i: [B, r]
            self.gate_up = nn.Parameter(torch.empty(k, r, in_dim))  # A_i
            _uniform_(self.gate_down, in_dim)
            if feature_gate_zero_init:
                nn.init.zeros_(self.gate_up)
            else:
                _uniform_(self.gate_up, r)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        d = in_dim
        for h in self.hidden:
            w = nn.Parameter(torch.empty(k, d, h))
            b = nn.Parameter(torch.empty(k, 1, h))
            _uniform_(w, d)
            _uniform_(b, d)
            self.weights.append(w)
            self.biases.append(b)
            d = h
        # layers followed by ReLU (+ dropout): all of them for plain experts, all but the last
        # (which the norm and Swish follow) for HoME's
        self.num_relu: int = len(self.hidden) if norm == "none" else len(self.hidden) - 1
        self.batch_norm: nn.BatchNorm1d | None = nn.BatchNorm1d(k * self.out_dim) if norm == "batch" else None
        if norm == "layer":
            self.ln_weight = nn.Parameter(torch.ones(k, self.out_dim))
            self.ln_bias = nn.Parameter(torch.zeros(k, self.out_dim))
        # where the experts were as separate modules (old state dicts), set by the owner
        self.legacy_paths: list[str] = []
        self.legacy_up: int = 1
        self.legacy_gated_layout: bool = False

    def set_legacy(self, paths: Sequence[str], gated_layout: bool, up: int = 1) -> None:
        """Where the experts were as separate modules, for old state dicts: their prefixes relative
        to the module `up` levels above this bank (1: its owner; 2 when the bank sits in the
        owner's ModuleList), and whether they were `GatedExpert`s (HoME) or plain `Expert`s
        (MMoE, PLE)."""
        if len(paths) != self.num_experts:
            raise ValueError(f"expected {self.num_experts} legacy paths, got {len(paths)}")
        self.legacy_paths = list(paths)
        self.legacy_up = up
        self.legacy_gated_layout = gated_layout

    def forward(self, x: Input) -> torch.Tensor:
        if not self.training:  # FX traces in eval mode: the exported graph is `_inference`
            return self._inference(x)
        return self._batched(dense(x))

    def _inference(self, x: Input) -> torch.Tensor:
        """The same function in the form that is fastest without autograd on a CPU: a first layer on
        a shared input is one product for all experts ([B, in] @ [in, k * h0], F.linear, which
        TorchScript keeps whole), then each expert's later layers on its own [B, h] block. Batched
        products over [k, B, h] would stream k times the activations through the cache at each
        layer; at 2,000 rows (4 MB per layer) that made the exported forward 1.3-1.8x slower
        (docs/BENCHMARKS.md, "Batched experts"). On a grouped batch (`UserOnce`) that first
        product multiplies the user's columns once per user."""
        k, h0 = self.num_experts, self.hidden[0]
        first: torch.Tensor | None = None
        if not self.gated and not self.per_expert_input:
            w0 = self.weights[0].permute(0, 2, 1).reshape(k * h0, self.in_dim)  # [k * h0, in]
            first = linear(x, w0, self.biases[0].reshape(-1))  # [B, k * h0]
        outs: list[torch.Tensor] = []
        for e in range(k):  # k is a build-time constant: FX unrolls the loop
            if first is not None:
                h = first[:, e * h0 : (e + 1) * h0]
            else:
                xe = dense(x)[e] if self.per_expert_input else dense(x)
                if self.gated:
                    xe = xe * (2.0 * torch.sigmoid((xe @ self.gate_down[e]) @ self.gate_up[e]))
                h = F.linear(xe, self.weights[0][e].t(), self.biases[0][e, 0])
            for i in range(len(self.hidden)):
                if i > 0:
                    h = F.linear(h, self.weights[i][e].t(), self.biases[i][e, 0])
                if i < self.num_relu:
                    h = torch.relu(h)
            outs.append(self._norm_one(h, e))
        return torch.stack(outs, dim=1)

    def _norm_one(self, h: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e's normalisation and Swish in eval mode (BatchNorm with its running statistics)."""
        d = self.out_dim
        if self.batch_norm is not None:
            bn = self.batch_norm
            lo, hi = e * d, (e + 1) * d
            assert bn.running_mean is not None and bn.running_var is not None
            h = F.batch_norm(
                h,
                bn.running_mean[lo:hi],
                bn.running_var[lo:hi],
                bn.weight[lo:hi],
                bn.bias[lo:hi],
                False,
                0.0,
                bn.eps,
            )
            return F.silu(h)
        if self.norm == "layer":
            return F.silu(F.layer_norm(h, [d], self.ln_weight[e], self.ln_bias[e]))
        return h

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        """Training: every layer of the k experts as one kernel (and one backward kernel)."""
        k = self.num_experts
        if self.gated:  # build-time flags throughout: FX keeps one path
            if self.per_expert_input:
                g = torch.bmm(x, self.gate_down)  # [k, B, r]
                xs = x
            else:
                n = x.shape[0]
                down = self.gate_down.permute(1, 0, 2).reshape(self.in_dim, -1)  # [in, k * r]
                g = (x @ down).view(n, k, self.feature_gate_rank).transpose(0, 1)
                xs = x.unsqueeze(0)
            h = xs * (2.0 * torch.sigmoid(torch.bmm(g, self.gate_up)))  # [k, B, in]
            h = torch.baddbmm(self.biases[0], h, self.weights[0])
        elif self.per_expert_input:
            h = torch.baddbmm(self.biases[0], x, self.weights[0])
        else:
            n = x.shape[0]
            w0 = self.weights[0].permute(1, 0, 2).reshape(self.in_dim, -1)  # [in, k * h0]
            b0 = self.biases[0].reshape(1, -1)
            h = torch.addmm(b0, x, w0).view(n, k, self.hidden[0]).transpose(0, 1)  # [k, B, h0]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i > 0:
                h = torch.baddbmm(b, h, w)
            if i < self.num_relu:
                h = torch.relu(h)
                if self.dropout > 0:
                    h = F.dropout(h, self.dropout, self.training)
        out = h.transpose(0, 1)  # [B, k, d]
        if self.batch_norm is not None:
            n = out.shape[0]
            out = self.batch_norm(out.reshape(n, -1)).view(n, k, self.out_dim)
            return F.silu(out)
        if self.norm == "layer":
            out = F.layer_norm(out, [self.out_dim]) * self.ln_weight + self.ln_bias
            return F.silu(out)
        return out

    # ---- conversion to and from the one-module-per-expert form --------------------------------

    def reference_experts(self) -> list[GatedExpert]:
        """The k experts as separate modules with this bank's parameters (and BatchNorm statistics):
        the one-at-a-time form the bank replaces, for tests and for old state dicts."""
        experts = [
            GatedExpert(
                self.in_dim,
                self.hidden,
                self.norm,
                self.dropout,
                self.feature_gate_rank,
                self.feature_gate_zero_init,
            )
            for _ in range(self.num_experts)
        ]
        with torch.no_grad():
            for i, e in enumerate(experts):
                for dst, src in zip(_linears(e.expert), self._slices(i), strict=True):
                    dst.weight.copy_(src[0].t())
                    dst.bias.copy_(src[1].reshape(-1))
                self._copy_norm(i, e.expert, to_expert=True)
                if self.gated:
                    fg = e.feature_gate
                    fg.down.weight.copy_(self.gate_down[i].t())
                    fg.up.weight.copy_(self.gate_up[i].t())
        return [e.train(self.training) for e in experts]

    def copy_from(self, experts: Sequence[Expert | GatedExpert]) -> None:
        """Take the parameters (and BatchNorm statistics) of k separate experts of this shape."""
        if len(experts) != self.num_experts:
            raise ValueError(f"expected {self.num_experts} experts, got {len(experts)}")
        with torch.no_grad():
            for i, e in enumerate(experts):
                body = e.expert if isinstance(e, GatedExpert) else e
                for src, dst in zip(_linears(body), self._slices(i), strict=True):
                    dst[0].copy_(src.weight.t())
                    dst[1].copy_(src.bias.reshape(1, -1))
                self._copy_norm(i, body, to_expert=False)
                if self.gated:
                    if not isinstance(e, GatedExpert) or isinstance(e.feature_gate, nn.Identity):
                        raise ValueError("this bank's experts have feature-gates; the given ones do not")
                    fg = e.feature_gate
                    self.gate_down[i].copy_(fg.down.weight.t())
                    self.gate_up[i].copy_(fg.up.weight.t())

    def _slices(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(w[i], b[i]) for w, b in zip(self.weights, self.biases, strict=True)]

    def _copy_norm(self, i: int, body: Expert, to_expert: bool) -> None:
        if self.norm == "none":
            return
        norm = next(m for m in body.modules() if isinstance(m, nn.BatchNorm1d | nn.LayerNorm))
        d = self.out_dim
        if isinstance(norm, nn.BatchNorm1d):
            assert self.batch_norm is not None
            bank = self.batch_norm
            pairs = [(bank.weight, norm.weight), (bank.bias, norm.bias)]
            pairs += [(bank.running_mean, norm.running_mean), (bank.running_var, norm.running_var)]
            for b, e in pairs:
                assert b is not None and e is not None
                if to_expert:
                    e.copy_(b[i * d : (i + 1) * d])
                else:
                    b[i * d : (i + 1) * d].copy_(e)
            if to_expert:
                norm.num_batches_tracked.copy_(bank.num_batches_tracked)  # type: ignore[union-attr]
            else:
                bank.num_batches_tracked.copy_(norm.num_batches_tracked)  # type: ignore[union-attr]
        else:
            for b, e in ((self.ln_weight, norm.weight), (self.ln_bias, norm.bias)):
                if to_expert:
                    e.copy_(b[i])
                else:
                    b[i].copy_(e)


def _linears(body: Expert) -> list[nn.Linear]:
    return [m for m in body.modules() if isinstance(m, nn.Linear)]


def bank_groups(inputs: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of experts that read one input: (input key, start, stop) per run. A level's
    experts keep their order (gates index them by position), so only neighbours share a bank."""
    runs: list[tuple[str, int, int]] = []
    for i, key in enumerate(inputs):
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1], i + 1)
        else:
            runs.append((key, i, i + 1))
    return runs


# ---- state dicts written before the banks ------------------------------------------------------


def _legacy_banks(model: nn.Module) -> list[tuple[str, ExpertBank, list[str]]]:
    """(bank path, bank, the state-dict prefixes its experts had as separate modules)."""
    out: list[tuple[str, ExpertBank, list[str]]] = []
    for name, mod in model.named_modules():
        # TorchRec's DistributedModelParallel (and DDP inside it) prefix module names, not the
        # state dict's keys
        for wrapper in ("_dmp_wrapped_module.", "module."):
            name = name.removeprefix(wrapper)
        if isinstance(mod, ExpertBank) and mod.legacy_paths:
            parts = name.split(".")[: -mod.legacy_up]
            owner = ".".join(parts) + "." if parts else ""
            out.append((name, mod, [owner + p for p in mod.legacy_paths]))
    return out


def has_legacy_experts(model: nn.Module, keys: Iterable[str]) -> bool:
    """Whether a state dict's keys hold experts as separate modules where `model` has banks."""
    prefixes = tuple(paths[0] + "." for _, _, paths in _legacy_banks(model))
    return bool(prefixes) and any(k.startswith(prefixes) for k in keys)


def _legacy_state(bank: ExpertBank, expert: GatedExpert) -> dict[str, torch.Tensor]:
    return expert.state_dict() if bank.legacy_gated_layout else expert.expert.state_dict()


def upgrade_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every expert written as a separate module (the layout before `ExpertBank`,
    ``...experts.<i>.<Expert or GatedExpert keys>``) converted to `model`'s banks; other keys
    unchanged. A state dict already in the bank layout comes back as it is."""
    out = dict(state)
    for name, bank, paths in _legacy_banks(model):
        if not any(k.startswith(paths[0] + ".") for k in out):
            continue
        refs = bank.reference_experts()
        for ref, path in zip(refs, paths, strict=True):
            sub = {k[len(path) + 1 :]: out.pop(k) for k in list(out) if k.startswith(path + ".")}
            (ref if bank.legacy_gated_layout else ref.expert).load_state_dict(sub)
        converted = _fresh_like(bank)
        converted.copy_from(refs)
        for k, v in converted.state_dict().items():
            out[f"{name}.{k}"] = v
    return out


def legacy_state_template(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (the model's own state dict) with each bank's keys replaced by the keys and shapes
    its experts had as separate modules: what an old checkpoint holds, to be read into and then
    converted with `upgrade_state_dict`."""
    out = dict(state)
    for name, bank, paths in _legacy_banks(model):
        for k in [k for k in out if k.startswith(name + ".")]:
            del out[k]
        for ref, path in zip(bank.reference_experts(), paths, strict=True):
            for k, v in _legacy_state(bank, ref).items():
                out[f"{path}.{k}"] = v
    return out


def _fresh_like(bank: ExpertBank) -> ExpertBank:
    return ExpertBank(
        bank.num_experts,
        bank.in_dim,
        bank.hidden,
        bank.norm,
        bank.dropout,
        bank.feature_gate_rank,
        bank.feature_gate_zero_init,
        bank.per_expert_input,
    )
