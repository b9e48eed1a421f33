"""The towers of an open_clip model run on the positions that can change their pooled output, and no others:
unit-norm embeddings equal (to float rounding) to ``clip.encode_text(tokens, normalize=True)`` and
``clip.encode_image(pixels, normalize=True)``.

Text (``encode_tokens``), for the text towers open_clip builds for CLIP configs (``open_clip.CLIP``, and
``CustomTextCLIP`` with a ``TextTransformer``) with a causal attention mask and pooling at the end-of-text token
(``text_pool_type`` "argmax" or "eos"):
  * a position attends only to itself and the positions before it, and every other step of a block (layer norms,
    projections, MLP, layer scale) is per position, so a row's hidden states up to its end-of-text token do not
    depend on anything after it; the pooled feature is that token's final hidden state.
  * so each row needs only its first ``end + 1`` positions (captions are mostly 5-20 of 77 tokens). The projections
    and MLPs, nearly all of the work, run on those positions packed into one ``(tokens, width)`` matrix; only
    attention runs padded to the batch's longest row (``(rows, heads, L, L)``, small), under the causal mask,
    where no kept position can see a padding one.
  * in the last block only the end-of-text positions are read: their attention queries and the MLP run for one
    position a row, against the keys and values of all of the row's positions.
Images (``encode_pixels``), for a ``VisionTransformer`` that pools its class token (``pool_type`` "tok", no
attentional pooler): every block but the last runs as open_clip runs it; in the last block only the class token is
read, so its query, attention output, MLP and the final layer norm run for that token alone, against the keys and
values of all tokens (ViT-B-32: about 6 % of the tower's work).
Anything else (a Hugging Face or timm tower, a bidirectional or padding-masked text tower, CoCa's class token, a
custom attention block, an attention mask that is not the plain causal one, average pooling, a model in training
mode) runs as open_clip runs it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


class _Tower(NamedTuple):
    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    blocks: list
    ln_final: torch.nn.Module
    projection: Any  # nn.Linear, a (width, dim) matrix, or None
    pool: str
    eos_id: int | None
    cast: torch.dtype


def encode_tokens(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens, normalize=True)``, running only the positions that can change it (module
    docstring); a text tower this cannot prove that for runs through ``encode_text``. ``tokens``: (rows, context)
    on the model's device."""
    tower = None if clip.training else _causal_tower(clip)  # training: dropout, which this does not run
    if tower is None or tokens.shape[0] == 0:
        return clip.encode_text(tokens, normalize=True)
    return F.normalize(_pooled(tower, tokens), dim=-1)


def encode_pixels(clip: Any, pixels: torch.Tensor) -> torch.Tensor:
    """``clip.encode_image(pixels, normalize=True)``, the last block run for the class token only (module
    docstring); an image tower this cannot prove that for runs through ``encode_image``."""
    visual = None if clip.training else _class_token_tower(clip)
    if visual is None or pixels.shape[0] == 0:
        return clip.encode_image(pixels, normalize=True)
    x = visual._embeds(pixels)  # patches, class token, positions, ln_pre: open_clip's own
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    h = last.ln_1(x)
    x = visual.ln_post(_read_block(last, x[:, 0], h[:, 0], _keys_values(last, h), None))
    if visual.proj is not None:
        x = x @ visual.proj
    return F.normalize(x, dim=-1)


def _plain_blocks(transformer: Any) -> bool:
    """``transformer`` is open_clip's ``Transformer`` of default blocks around a plain ``nn.MultiheadAttention``."""
    from open_clip.transformer import ResidualAttentionBlock, Transformer

    if type(transformer) is not Transformer:
        return False
    for block in transformer.resblocks:
        attn = block.attn
        if (type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") or not attn._qkv_same_embed_dim
                or attn.bias_k is not None or attn.add_zero_attn or not attn.batch_first):
            return False
    return True


def _class_token_tower(clip: Any) -> Any:
    """``clip.visual`` when it is a ViT whose pooled output is its class token's, else None."""
    import open_clip
    from open_clip.transformer import VisionTransformer

    visual = getattr(clip, "visual", None)
    if type(clip) not in (open_clip.CLIP, open_clip.CustomTextCLIP) or type(visual) is not VisionTransformer:
        return None
    if (visual.attn_pool is not None or visual.pool_type != "tok" or visual.output_tokens
            or not hasattr(visual, "_embeds") or not _plain_blocks(visual.transformer)):
        return None
    return visual


def _causal_tower(clip: Any) -> _Tower | None:
    """The parts of ``clip``'s text tower, when it is one whose output this module can compute exactly."""
    import open_clip
    from open_clip.transformer import TextTransformer

    if type(clip) is open_clip.CLIP:
        parts, pool, eos = clip, clip.text_pool_type, getattr(clip, "text_eos_id", None)
    elif type(clip) is open_clip.CustomTextCLIP and type(clip.text) is TextTransformer:
        parts, pool, eos = clip.text, clip.text.pool_type, clip.text.eos_id
        if parts.cls_emb is not None or parts.use_pad_mask or parts.output_tokens:
            return None
    else:
        return None
    transformer, mask = parts.transformer, parts.attn_mask
    if pool not in ("argmax", "eos") or (pool == "eos" and eos is None) or not _plain_blocks(transformer):
        return None
    if mask is None or not torch.equal(mask, torch.full_like(mask, float("-inf")).triu_(1)):
        return None  # only the plain causal mask proves that later positions are never seen
    return _Tower(parts.token_embedding, parts.positional_embedding, list(transformer.resblocks), parts.ln_final,
                  parts.text_projection, pool, eos, transformer.get_cast_dtype())


def _pooled(tower: _Tower, tokens: torch.Tensor) -> torch.Tensor:
    """The pooled (projected, not normalised) text features of ``tokens``."""
    ends = tokens.argmax(dim=-1) if tower.pool == "argmax" else (tokens == tower.eos_id).int().argmax(dim=-1)
    rows, length = tokens.shape[0], int(ends.max()) + 1
    keep = torch.arange(length, device=tokens.device) <= ends[:, None]  # (rows, L): each row up to its end
    tokens = tokens[:, :length]
    x = tower.token_embedding(tokens[keep]).to(tower.cast)  # (kept positions, width), row-major
    x = x + tower.positional_embedding[:length].to(tower.cast).expand(rows, -1, -1)[keep]
    for block in tower.blocks[:-1]:
        x = x + block.ls_1(_packed_attention(block, block.ln_1(x), keep))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    ends = torch.cumsum(keep.sum(dim=1), dim=0) - 1  # each row's end-of-text position in the packed matrix
    last = tower.blocks[-1]
    h = last.ln_1(x)
    # the end-of-text query sees every position of its row up to itself: the row's kept ones
    x = _read_block(last, x[ends], h[ends], _padded(_keys_values(last, h), keep), keep[:, None, None, :])
    x = tower.ln_final(x)
    if tower.projection is not None:
        x = tower.projection(x) if isinstance(tower.projection, torch.nn.Linear) else x @ tower.projection
    return x


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, L, width) -> (rows, heads, L, width / heads)."""
    rows, length, width = x.shape
    return x.view(rows, length, heads, width // heads).transpose(1, 2)


def _padded(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(*keep.shape, x.shape[-1])
    out[keep] = x
    return out


def _packed_attention(block: Any, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``block.attn`` (``nn.MultiheadAttention``) under the causal mask, for packed positions ``h``: the
    projections on the packed rows, the attention itself padded to (rows, heads, L, L)."""
    attn = block.attn
    q, k, v = _padded(F.linear(h, attn.in_proj_weight, attn.in_proj_bias), keep).chunk(3, dim=-1)
    out = F.scaled_dot_product_attention(_heads(q, attn.num_heads), _heads(k, attn.num_heads),
                                         _heads(v, attn.num_heads), is_causal=True)
    out = out.transpose(1, 2).reshape(*keep.shape, -1)[keep]
    return attn.out_proj(out)


def _keys_values(block: Any, h: torch.Tensor) -> torch.Tensor:
    """The keys and values of ``block.attn`` for its normalised input ``h``, side by side (..., 2 * width)."""
    width, w, b = h.shape[-1], block.attn.in_proj_weight, block.attn.in_proj_bias
    return F.linear(h, w[width:], None if b is None else b[width:])


def _read_block(block: Any, x: torch.Tensor, h: torch.Tensor, keys_values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """``block``'s output at the one position a row that is read (the last block's): ``x`` its input there
    (rows, width), ``h`` that input normalised (``ln_1``), ``keys_values`` every position's (rows, L, 2 * width),
    ``mask`` the positions it attends to (rows, 1, 1, L; None: all)."""
    attn, (rows, width) = block.attn, x.shape
    b = attn.in_proj_bias
    q = F.linear(h, attn.in_proj_weight[:width], None if b is None else b[:width])[:, None]  # (rows, 1, width)
    k, v = keys_values.chunk(2, dim=-1)
    out = F.scaled_dot_product_attention(_heads(q, attn.num_heads), _heads(k, attn.num_heads),
                                         _heads(v, attn.num_heads), attn_mask=mask)
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(rows, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
