"""A CLIPSeg forward pass that lets gradients reach adapters inside its CLIP encoders.

`CLIPSegForImageSegmentation.forward` runs the vision encoder and the text encoder under `torch.no_grad()`: upstream
CLIPSeg only trains its decoder. Adapters placed inside the encoders (dense VLSM adapters, R-AMT masks) would never
receive a gradient. `clipseg_forward` computes the same three steps (vision hidden states of `extract_layers`,
conditional embedding, decoder) with the caller's grad mode, and produces bit-identical outputs (tested). The tuners
of this package install it on the model instance while they are attached and remove it on `unload()`.

It also hands the text hidden states of `extract_layers` (at the end-of-text token) to `clip.text_projection` when
that module asks for them (`wants_text_states`): the shallow VLSM text adapters live there.

    install_grad_forward(model)      # model(**batch) now trains adapters inside the encoders
    uninstall_grad_forward(model)
"""

from __future__ import annotations

import types
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


def end_of_text_positions(text_model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Index of the token CLIPSeg pools per row (first end-of-text token; highest id for legacy eos id 2)."""
    ids = input_ids.to(torch.int)
    if getattr(text_model, "eos_token_id", None) == 2:
        return ids.argmax(dim=-1)
    return (ids == text_model.eos_token_id).int().argmax(dim=-1)


def text_state_layers(model: torch.nn.Module) -> list[int]:
    """Hidden-state indices of the text tower that pair with the vision `extract_layers` (the same layers when both
    towers are equally deep, else the same relative depth)."""
    vision_depth = model.config.vision_config.num_hidden_layers
    text_depth = model.config.text_config.num_hidden_layers
    return [min(text_depth, max(1, round((i + 1) * text_depth / vision_depth))) for i in model.extract_layers]


def text_conditioning(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The projected text embedding CLIPSeg conditions on, with gradients and optional per-layer text states."""
    clip = model.clip
    projection = clip.text_projection
    wants_states = bool(getattr(projection, "wants_text_states", False))
    layers = text_state_layers(model)
    extra = {"output_hidden_states": layers} if wants_states else {}
    out = clip.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          return_dict=True, **extra)
    if not wants_states:
        return projection(out.pooler_output)
    rows = torch.arange(input_ids.shape[0], device=out.pooler_output.device)
    eot = end_of_text_positions(clip.text_model, input_ids).to(rows.device)
    states = [out.hidden_states[i][rows, eot] for i in layers]
    return projection(out.pooler_output, text_states=states)


def clipseg_forward(
    self: torch.nn.Module,
    input_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    conditional_pixel_values: torch.Tensor | None = None,
    conditional_embeddings: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    interpolate_pos_encoding: bool = True,
    return_dict: bool | None = None,
    **kwargs: Any,
):
    """`CLIPSegForImageSegmentation.forward` without its `torch.no_grad()` blocks (same outputs)."""
    from transformers.models.clipseg.modeling_clipseg import CLIPSegImageSegmentationOutput

    if not kwargs.get("output_hidden_states"):
        kwargs["output_hidden_states"] = [i + 1 for i in self.extract_layers]
    vision = self.clip.get_image_features(pixel_values=pixel_values,
                                          interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
    activations = [vision.hidden_states[i + 1] for i in self.extract_layers]
    vision_outputs = BaseModelOutputWithPooling(last_hidden_state=vision.last_hidden_state,
                                                pooler_output=vision.pooler_output,
                                                hidden_states=vision.hidden_states, attentions=vision.attentions)
    batch_size = pixel_values.shape[0]
    if conditional_embeddings is None:
        if input_ids is not None:
            if len(input_ids) != batch_size:
                raise ValueError("Make sure to pass as many prompt texts as there are query images")
            conditional_embeddings = text_conditioning(self, input_ids, attention_mask, position_ids)
        elif conditional_pixel_values is not None:
            if len(conditional_pixel_values) != batch_size:
                raise ValueError("Make sure to pass as many prompt images as there are query images")
            conditional_embeddings = self.clip.get_image_features(conditional_pixel_values).pooler_output
        else:
            raise ValueError("Invalid conditional, should be either provided as `input_ids` or "
                             "`conditional_pixel_values`")
    elif conditional_embeddings.shape[0] != batch_size:
        raise ValueError("Make sure to pass as many conditional embeddings as there are query images in the batch")
    decoder_outputs = self.decoder(activations, conditional_embeddings, **kwargs)
    logits = decoder_outputs.logits
    loss = None
    if labels is not None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.device))
    output = CLIPSegImageSegmentationOutput(
        loss=loss, logits=logits, conditional_embeddings=conditional_embeddings, pooled_output=vision.pooler_output,
        vision_model_output=vision_outputs, decoder_output=decoder_outputs,
    )
    return output.to_tuple() if return_dict is False else output


clipseg_forward._adaptune_grad_forward = True  # type: ignore[attr-defined]


def is_clipseg(model: torch.nn.Module) -> bool:
    return type(model).__name__ == "CLIPSegForImageSegmentation"


def install_grad_forward(model: torch.nn.Module) -> bool:
    """Route `model(...)` through `clipseg_forward` (per instance). True when installed (or already there)."""
    if not is_clipseg(model):
        return False
    current = model.__dict__.get("forward")
    if current is not None:
        return bool(getattr(getattr(current, "__func__", None), "_adaptune_grad_forward", False))
    model.forward = types.MethodType(clipseg_forward, model)
    return True


def uninstall_grad_forward(model: torch.nn.Module) -> None:
    current = model.__dict__.get("forward")
    if current is not None and getattr(getattr(current, "__func__", None), "_adaptune_grad_forward", False):
        del model.__dict__["forward"]
