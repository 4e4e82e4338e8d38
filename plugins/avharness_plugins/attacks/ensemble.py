"""``ensemble``: a worst-case cascade of any attacks (AutoAttack's idea, for any attack and modality).

Each stage attacks only the samples still classified correctly; a sample broken by one stage keeps
that adversarial input. Samples no stage breaks keep the candidate with the highest loss. The
per-stage counts go into the cell's ``attack_stats``: ``<i>:<name>/attacked`` (samples the stage
ran on), ``<i>:<name>/robust_after`` (samples still robust after it) and the passes it spent.
"""

from __future__ import annotations

import torch

from avharness import AttackOutput, AttackStats, SampleRNG, UserError, get_registry


class Ensemble:
    def __init__(self, stages: list[tuple[str, object]]):
        self.stages = stages
        #: the cascade is iterative if any stage is (read by the validity checks)
        self.iterative = any(getattr(a, "iterative", False) for _, a in stages)

    def held(self, task, logits, target, clean_logits):
        """Per sample: still robust, so later stages attack it (a preset may follow another rule)."""
        return task.correct(logits, target)

    def perturb(self, model, inputs, target, threat, task, rng):
        attacked = [m for m in threat.modalities if threat.budgets[m].eps > 0]
        if not attacked:
            return dict(inputs)
        with torch.no_grad():
            clean_logits = logits = model(inputs)
            robust = self.held(task, logits, target, clean_logits)
            best_loss = task.loss(logits, target)
        out = {m: (x.clone() if m in attacked else x) for m, x in inputs.items()}
        stats = {"forward_samples": float(len(target))}
        for i, (name, attack) in enumerate(self.stages):
            tag = f"{i}:{name}"
            idx = robust.nonzero().flatten()
            stats[f"{tag}/attacked"] = float(idx.numel())
            if idx.numel():
                sub = {m: x[idx] for m, x in inputs.items()}
                ids = [rng.ids[j] for j in idx.tolist()]
                res = attack.perturb(model, sub, target[idx], threat, task, SampleRNG(rng.seed, f"{rng.key}|{tag}", ids))
                if isinstance(res, AttackOutput):
                    for k, v in res.stats.items():
                        stats[f"{tag}/{k}"] = stats.get(f"{tag}/{k}", 0.0) + float(v)
                    res = res.inputs
                with torch.no_grad():
                    logits = model({**sub, **{m: res[m] for m in attacked}})
                    broken = ~self.held(task, logits, target[idx], clean_logits[idx])
                    loss = task.loss(logits, target[idx])
                stats["forward_samples"] += float(idx.numel())
                # broken samples take this stage's input; unbroken ones keep their highest-loss candidate
                take = broken | (loss > best_loss[idx])
                for m in attacked:
                    out[m][idx[take]] = res[m][take]
                best_loss[idx[take]] = loss[take]
                robust[idx[broken]] = False
            stats[AttackStats.stage_robust(tag)] = float(robust.sum())
        return AttackOutput(out, stats)


def build_ensemble(attacks: list) -> Ensemble:
    """attacks: a list of attack entries like a suite's, e.g. [{plugin: fgsm}, {plugin: pgd, steps: 20}]."""
    if not isinstance(attacks, list) or not attacks:
        raise UserError("ensemble: attacks must be a non-empty list of {plugin: NAME, ...parameters}")
    registry = get_registry()
    stages = []
    for i, item in enumerate(attacks):
        if isinstance(item, str):
            item = {"plugin": item}
        if not isinstance(item, dict) or not isinstance(item.get("plugin"), str):
            raise UserError(f"ensemble: attacks[{i}] must be a mapping with a 'plugin' name, got {item!r}")
        if item["plugin"] == "ensemble":
            raise UserError(f"ensemble: attacks[{i}] is itself an ensemble; list its attacks here instead")
        params = {k: v for k, v in item.items() if k != "plugin"}
        factory = registry.get("attack", item["plugin"], where=f"ensemble: attacks[{i}]")
        try:
            stages.append((item["plugin"], factory(**params)))
        except TypeError as exc:
            raise UserError(f"ensemble: attacks[{i}] ({item['plugin']}): {exc}") from None
    return Ensemble(stages)


def register_attacks(register):
    register("ensemble", build_ensemble)
