"""Engine states become the module's outputs: L2-normalised float32 vectors on the model's device.

No vector ever holds NaN: a non-finite state raises, naming its batch rows. The vectors stay on the
model's device; sentence-transformers moves and converts them.
"""

from __future__ import annotations

import torch

from ume_plugins.engine import Rollout


def normalised(states: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``states`` L2-normalised in float32, on ``model``'s device.

    Raises:
        FloatingPointError: A state is not finite; names its batch rows and the model's dtype.
    """
    vectors = torch.nn.functional.normalize(states.float(), p=2, dim=-1)
    bad = (~torch.isfinite(vectors).all(dim=-1)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"non-finite embedding for batch rows {bad} (dtype {model.dtype}); try model_kwargs={{'dtype': 'float32'}}"
        )
    return vectors.to(model.device)


def generative_outputs(result: Rollout, num_samples: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The outputs of generative and ``"both"`` modes, from one batch's rollouts (k = ``num_samples``).

    Returns:
        ``sentence_embedding`` (``[batch, dim]``: the normalised mean of each input's k unit
        vectors), ``sample_embeddings`` (``[batch, k, dim]``), ``generated_ids``, ``gen_emb_forced``
        and ``answer_forced`` (``[batch, steps]``, ``[batch]`` and ``[batch]``; ``[batch, k, steps]``,
        ``[batch, k]`` and ``[batch, k]`` when k > 1), and with discriminative states (``"both"``)
        ``disc_embedding`` (``[batch, dim]``). Vectors are L2-normalised float32 on the model's device.
    """
    samples = normalised(result.states, model)
    single = num_samples == 1
    output = {
        "sentence_embedding": samples[:, 0] if single else normalised(samples.mean(dim=1), model),
        "sample_embeddings": samples,
        "generated_ids": result.generated_ids[:, 0] if single else result.generated_ids,
        "gen_emb_forced": result.forced[:, 0] if single else result.forced,
        "answer_forced": result.answer_forced[:, 0] if single else result.answer_forced,
    }
    if result.disc_states is not None:
        output["disc_embedding"] = normalised(result.disc_states, model)
    return output
