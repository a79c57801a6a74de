"""HoME: Hierarchy of Multi-Gate Experts (Kuaishou, "HoME: Hierarchy of Multi-Gate Experts for
Multi-Task Learning at Kuaishou", arXiv 2408.05430).

HoME fixes three faults of MMoE/PLE at scale; each fix is a recipe switch (`HoMEOptions`):

1. Expert collapse -> ``expert_norm``: every expert is E(x) = Swish(Norm(MLP(x))), BatchNorm by
   default, LayerNorm as an option (choice), "none" for plain ReLU experts (the fix off).
2. Expert degradation -> ``hierarchy``: two levels over the tasks' meta-categories
   (`TaskSpec.category`; uncategorised tasks share the category "default", a choice).
   Level 1: global shared experts S1 and per-category experts C1_c, all on x. Category c's gate
   mixes [S1, C1_c] into z_c; a global gate mixes all level-1 experts into z_sh.
   Level 2, per task t in category c, on z_c (+) z_sh (concatenation): t's gate mixes
   [S2 applied to z_sh, C2_c applied to z_c, t's own experts T2_t applied to z_c (+) z_sh].
   Every node is one softmax gate over ALL experts of its level with a fixed 0/1 mask
   (masked logits = -inf), so a task gives exactly zero weight outside its hierarchy.
   With the fix off: one level on x, task t's gate mixes [shared experts, T_t] (CGC-like;
   the category experts are not built) - a choice, so the switch measures the hierarchy alone.
3. Expert underfitting -> ``feature_gate``: each expert reads x * 2 sigmoid(x B A) (rank
   ``feature_gate_rank``, A initialised to zeros: the identity at start, a choice,
   ``feature_gate_zero_init``), for every expert at both levels (each its own view);
   ``self_gate``: each node adds a residual mixture of its own experts (category node: C1_c,
   global node: S1, task node: T_t) weighted by a second gate (sigmoid for one expert, softmax for
   several), so those experts always get gradient.

forward(x) -> (per-task h_t, gates, expert outputs). Gate keys: "L1/cat_<c>", "L1/global",
"L2/task_<t>" (hierarchy off: "L1/task_<t>"), and "<node>/self" for self-gates; each gate spans
all experts of its level in ``gate_experts[key]`` order (masked ones get exactly 0).
Expert names: "L<j>/shared_<i>", "L<j>/cat_<c>_<i>", "L<j>/task_<t>_<i>".

Equations, paper and our choices: (docs/METHODS.md, "HoME").
"""

from __future__ import annotations

import torch
from torch import nn

from recsys_mtl.models.expert_bank import ExpertBank, bank_groups
from recsys_mtl.models.gates import Gate, SelfGate, mix
from recsys_mtl.models.user_once import Input
from recsys_mtl.recipe import HoMEOptions

BackboneOut = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]

DEFAULT_CATEGORY = "default"


class _MaskedLevel(nn.Module):
    """One level of experts and masked gate nodes.

    Experts: (name, input key, input width). Nodes: (name, input key, input width, visible expert
    names, own expert names). forward(inputs by key) -> (node outputs, gates, expert outputs).
    Neighbouring experts that read one input run as one `ExpertBank` (level 1: all of them).
    """

    def __init__(
        self,
        experts: list[tuple[str, str, int]],
        nodes: list[tuple[str, str, int, list[str], list[str]]],
        hidden: list[int],
        norm: str,
        feature_gate_rank: int,
        feature_gate_zero_init: bool,
        self_gate: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.expert_names: list[str] = [e[0] for e in experts]
        self.bank_inputs: list[str] = []
        banks: list[ExpertBank] = []
        for key, start, stop in bank_groups([e[1] for e in experts]):
            bank = ExpertBank(
                stop - start,
                experts[start][2],
                hidden,
                norm,
                dropout,
                feature_gate_rank,
                feature_gate_zero_init,
            )
            bank.set_legacy([f"experts.{i}" for i in range(start, stop)], gated_layout=True, up=2)
            banks.append(bank)
            self.bank_inputs.append(key)
        self.banks = nn.ModuleList(banks)
        self.out_dim: int = hidden[-1]
        idx = {n: i for i, n in enumerate(self.expert_names)}
        self.node_names: list[str] = [n[0] for n in nodes]
        self.node_inputs: list[str] = [n[1] for n in nodes]
        self.gates = nn.ModuleList(
            [Gate(d, len(experts), [e in set(vis) for e in self.expert_names]) for _, _, d, vis, _ in nodes]
        )
        # self-gates exist only for nodes that own experts; node name -> own expert indices
        self.self_gates = nn.ModuleDict()
        self.own: dict[str, list[int]] = {}
        self.own_span: dict[str, tuple[int, int]] = {}
        self.self_keys: dict[str, str] = {}  # node name -> ModuleDict key (names may hold '.')
        for i, (name, _, d, _, own) in enumerate(nodes):
            if self_gate and own:
                self.self_keys[name] = f"node{i}"
                self.self_gates[f"node{i}"] = SelfGate(d, len(own))
                self.own[name] = [idx[o] for o in own]
                # a node's own experts are neighbours in the level (built so): a slice, not a gather
                lo, hi = min(self.own[name]), max(self.own[name]) + 1
                if self.own[name] != list(range(lo, hi)):
                    raise ValueError(f"HoME node {name}: its own experts are not contiguous")
                self.own_span[name] = (lo, hi)
        self.gate_experts: dict[str, list[str]] = {n[0]: list(self.expert_names) for n in nodes}
        for name, i in self.own.items():
            self.gate_experts[name + "/self"] = [self.expert_names[j] for j in i]

    def forward(
        self, inputs: dict[str, Input]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        parts = [bank(inputs[k]) for bank, k in zip(self.banks, self.bank_inputs, strict=True)]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [B, n, d]
        nodes: dict[str, torch.Tensor] = {}
        gates: dict[str, torch.Tensor] = {}
        for name, key, gate in zip(self.node_names, self.node_inputs, self.gates, strict=True):
            g = gate(inputs[key])
            gates[name] = g
            h = mix(g, stacked)
            if name in self.own:  # build-time constant
                sg = self.self_gates[self.self_keys[name]](inputs[key])
                gates[name + "/self"] = sg
                lo, hi = self.own_span[name]
                h = h + mix(sg, stacked[:, lo:hi])
            nodes[name] = h
        experts: dict[str, torch.Tensor] = {n: stacked[:, i] for i, n in enumerate(self.expert_names)}
        return nodes, gates, experts


class HoME(nn.Module):
    """HoME backbone (see the module docstring for the equations and the switches).

    Args:
        in_dim: width of x.
        tasks: head task names.
        categories: task -> meta-category (None -> "default").
        opts: the recipe's `HoMEOptions`.
    """

    def __init__(
        self, in_dim: int, tasks: list[str], categories: dict[str, str | None], opts: HoMEOptions
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.hierarchy: bool = opts.hierarchy
        cat_of = {t: categories.get(t) or DEFAULT_CATEGORY for t in self.tasks}
        self.cat_of: dict[str, str] = cat_of
        self.categories: list[str] = list(dict.fromkeys(cat_of[t] for t in self.tasks))
        hidden = list(opts.expert_hidden)
        de = hidden[-1]
        rank = opts.feature_gate_rank if opts.feature_gate else 0
        common = dict(
            hidden=hidden,
            norm=opts.expert_norm,
            feature_gate_rank=rank,
            feature_gate_zero_init=opts.feature_gate_zero_init,
            self_gate=opts.self_gate,
        )
        n_s, n_c, n_t = opts.shared_experts, opts.category_experts, opts.task_experts

        def names(prefix: str, n: int) -> list[str]:
            return [f"{prefix}_{i}" for i in range(n)]

        if self.hierarchy:
            # ---- level 1: shared + category experts on x; category nodes and a global node ----
            s1 = names("L1/shared", n_s)
            c1 = {c: names(f"L1/cat_{c}", n_c) for c in self.categories}
            ex1 = [(n, "x", in_dim) for n in s1] + [(n, "x", in_dim) for c in self.categories for n in c1[c]]
            nodes1 = [(f"L1/cat_{c}", "x", in_dim, s1 + c1[c], c1[c]) for c in self.categories]
            nodes1.append(("L1/global", "x", in_dim, [e[0] for e in ex1], s1))
            self.level1 = _MaskedLevel(ex1, nodes1, dropout=opts.dropout, **common)
            # ---- level 2: shared on z_sh, category on z_c, task on z_c (+) z_sh ----
            s2 = names("L2/shared", n_s)
            c2 = {c: names(f"L2/cat_{c}", n_c) for c in self.categories}
            t2 = {t: names(f"L2/task_{t}", n_t) for t in self.tasks}
            ex2 = (
                [(n, "sh", de) for n in s2]
                + [(n, f"cat_{c}", de) for c in self.categories for n in c2[c]]
                + [(n, f"task_in_{cat_of[t]}", 2 * de) for t in self.tasks for n in t2[t]]
            )
            nodes2 = [
                (f"L2/task_{t}", f"task_in_{cat_of[t]}", 2 * de, s2 + c2[cat_of[t]] + t2[t], t2[t])
                for t in self.tasks
            ]
            self.level2 = _MaskedLevel(ex2, nodes2, dropout=opts.dropout, **common)
            levels = [self.level1, self.level2]
            self.task_gates: dict[str, str] = {t: f"L2/task_{t}" for t in self.tasks}
        else:
            s1 = names("L1/shared", n_s)
            t1 = {t: names(f"L1/task_{t}", n_t) for t in self.tasks}
            ex1 = [(n, "x", in_dim) for n in s1] + [(n, "x", in_dim) for t in self.tasks for n in t1[t]]
            nodes1 = [(f"L1/task_{t}", "x", in_dim, s1 + t1[t], t1[t]) for t in self.tasks]
            self.level1 = _MaskedLevel(ex1, nodes1, dropout=opts.dropout, **common)
            levels = [self.level1]
            self.task_gates = {t: f"L1/task_{t}" for t in self.tasks}
        self.out_dims: dict[str, int] = {t: de for t in self.tasks}
        self.gate_experts: dict[str, list[str]] = {}
        for lvl in levels:
            self.gate_experts.update(lvl.gate_experts)

    def forward(self, x: Input) -> BackboneOut:
        nodes1, gates, experts = self.level1({"x": x})
        if not self.hierarchy:  # build-time constant
            return {t: nodes1[f"L1/task_{t}"] for t in self.tasks}, gates, experts
        z_sh = nodes1["L1/global"]
        inputs2: dict[str, Input] = {"sh": z_sh}
        for c in self.categories:
            z_c = nodes1[f"L1/cat_{c}"]
            inputs2[f"cat_{c}"] = z_c
            inputs2[f"task_in_{c}"] = torch.cat([z_c, z_sh], dim=1)
        nodes2, gates2, experts2 = self.level2(inputs2)
        gates.update(gates2)
        experts.update(experts2)
        return {t: nodes2[f"L2/task_{t}"] for t in self.tasks}, gates, experts
