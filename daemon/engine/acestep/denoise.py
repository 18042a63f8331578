"""The denoising loop of one ACE-Step call: diffusers' `AceStepPipeline.__call__` flow-matching
steps (its schedule, scheduler, adaptive projected guidance and cover blend), with the DiT a
caller-given callable (the transformer itself, or the compiled one of `compiled`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepInputs:
    """What every denoising step of one call reads."""

    dit: Callable[..., Any]
    conditioning: torch.Tensor  # the rows', then (guided) as many null conditions
    context: torch.Tensor  # source latents and chunk mask, as many rows as `conditioning`
    guidance: float | None  # classifier-free guidance's scale; None: unguided
    momentum: Any = None  # the guider's momentum buffer, carried from step to step
    text_only: torch.Tensor | None = None  # a cover's text2music conditioning
    strength: float = 1.0  # a cover's share of its own velocity against `text_only`'s


def step_inputs(
    pipe: Any,
    guidance: float,
    dit: Callable[..., Any],
    conditioning: torch.Tensor,
    context: torch.Tensor,
    text_only: torch.Tensor | None = None,
    strength: float = 1.0,
) -> StepInputs:
    """The call's step inputs; guided (`guidance` above 1 on a base checkpoint): the rows'
    conditioning and the null condition side by side."""
    if not (guidance > 1.0 and not pipe.is_turbo):
        return StepInputs(dit, conditioning, context, None, text_only=text_only, strength=strength)
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    null = pipe.condition_encoder.null_condition_emb.to(device=conditioning.device, dtype=conditioning.dtype)
    return StepInputs(
        dit,
        torch.cat([conditioning, null.expand_as(conditioning)], dim=0),
        torch.cat([context, context], dim=0),
        guidance - 1.0,
        momentum=MomentumBuffer(momentum=-0.75),
        text_only=text_only,
        strength=strength,
    )


def denoise(
    pipe: Any,
    steps: int,
    shift: float,
    inputs: StepInputs,
    latents: torch.Tensor,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The latents after `steps` steps of the pipeline's flow-matching schedule (`on_step(done)`
    after each)."""
    device = latents.device
    schedule = pipe._get_timestep_schedule(
        num_inference_steps=steps, shift=shift, device=device, dtype=torch.float32
    )
    pipe.scheduler.set_timesteps(sigmas=schedule.tolist(), device=device)
    xt = latents
    for i, t_sched in enumerate(pipe.scheduler.timesteps):
        t = float(t_sched) * torch.ones((xt.shape[0],), device=device, dtype=xt.dtype)
        xt = pipe.scheduler.step(velocity(inputs, xt, t), t_sched, xt, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1)
    return xt


def velocity(s: StepInputs, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The DiT's velocity for one step, guided and blended as the pipeline does."""
    if s.guidance is None:
        vt = _dit(s.dit, xt, t, s.conditioning, s.context)
    else:
        from diffusers.guiders.adaptive_projected_guidance import normalized_guidance

        cond, uncond = _dit(s.dit, torch.cat([xt, xt]), torch.cat([t, t]), s.conditioning, s.context).chunk(2)
        vt = normalized_guidance(
            pred_cond=cond,
            pred_uncond=uncond,
            guidance_scale=s.guidance,
            momentum_buffer=s.momentum,
            eta=0.0,
            norm_threshold=2.5,
            use_original_formulation=True,
            norm_dim=(1,),
        )
    if s.text_only is not None:
        vt_text = _dit(s.dit, xt, t, s.text_only, s.context[: xt.shape[0]])
        vt = s.strength * vt + (1.0 - s.strength) * vt_text
    return vt


def _dit(
    dit: Callable[..., Any], xt: torch.Tensor, t: torch.Tensor, states: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    return dit(
        hidden_states=xt,
        timestep=t,
        timestep_r=t,
        encoder_hidden_states=states,
        context_latents=context,
        return_dict=False,
    )[0]
