"""Beam search for the Show-Attend-Tell decoder: transformers' beam search (the same candidates, the same rules for
which beams run on and which finished captions are kept, the same stopping and output), with two changes that shrink
the search's own share of a step:

- Each beam's best continuations are found first. An image's top `beams_to_keep` continuations over beams ×
  vocabulary are among the union of each beam's own top `beams_to_keep` (a continuation with that many better ones
  in its own beam has at least that many over all beams), so the running scores are added to, and the image-wide
  top-k ranks, beams × `beams_to_keep` values instead of beams × vocabulary.
- Only the beams of images whose result can still change are decoded. An image whose finished captions no running
  beam can beat any more (transformers' early-stop heuristic) is fixed: its rows keep their state, and its candidates
  are placeholders that can never enter its finished captions (transformers gives such an image's rows candidates
  that its rules then discard in the same way).

The rest is transformers' own code, called in the order its `_beam_search` calls it. `GenerationMixin._beam_search`
still runs whatever this does not cover (logits processors, other stopping criteria, sampling, per-step outputs);
see `ShowAttendTellForConditionalGeneration._beam_search`.
"""

import torch
from transformers import GenerationMixin
from transformers.generation import EosTokenCriteria, MaxLengthCriteria
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

# transformers' score for "never": a candidate that must not be chosen gets this added (its beam search's constant).
_NEVER = -1.0e9

# The output's field for the decoding state: `cache` from transformers 5.24, `past_key_values` before.
_CACHE_FIELD = "cache" if "cache" in GenerateBeamDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"

# The parts of transformers' beam search this one calls.
_TRANSFORMERS_STEPS = ("_get_running_beams_for_next_iteration", "_update_finished_beams", "_check_early_stop_heuristic",
                       "_beam_search_has_unfinished_sequences", "_gather_beams", "_flatten_beam_dim")


def beam_search_handles(model, logits_processor, stopping_criteria, generation_config, synced_gpus: bool, model_kwargs: dict) -> bool:
    """Whether `beam_search` runs this `generate()` call exactly as transformers' `_beam_search` would: deterministic
    beam search, no logits processors, stopping at the end token or the length limit only, no per-step outputs, one
    process, the model's own cache."""
    config = generation_config
    per_step_outputs = config.return_dict_in_generate and any(
        (config.output_scores, config.output_logits, config.output_attentions, config.output_hidden_states))
    return (not config.do_sample and not synced_gpus and len(logits_processor) == 0 and not per_step_outputs
            and all(type(criterion) in (MaxLengthCriteria, EosTokenCriteria) for criterion in stopping_criteria)
            and model_kwargs.get("use_cache", True) and getattr(config, "prefill_chunk_size", None) is None
            and not getattr(config, "low_memory", None)
            and not model.config.is_encoder_decoder and all(hasattr(GenerationMixin, name) for name in _TRANSFORMERS_STEPS))


def fill_value(generation_config) -> int:
    """What transformers' beam search writes after a sequence's end: the padding token unless it is None or 0, then
    the (first) end token; -1 without an end token."""
    pad, eos = generation_config._pad_token_tensor, generation_config._eos_token_tensor
    if eos is None:
        return -1
    return int(pad) if pad is not None and int(pad) != 0 else int(eos.reshape(-1)[0])


def top_k_per_row(values, k: int, chunk: int = 64):
    """`values.topk(k, dim=-1)` for `(rows, n)` values with n much larger than k (a vocabulary), faster on CPU:
    a row's top k lie in the k chunks of `chunk` consecutive values with the largest maxima (any value outside them
    has k chunk maxima above it), so a cheap max per chunk and a top-k over k × chunk values replace the top-k over
    the whole row. The values and their order are torch.topk's; which of two equal values comes first may differ."""
    rows, n = values.shape
    whole = n - n % chunk  # the last n % chunk values are always candidates
    if whole < 4 * k * chunk:
        return values.topk(k, dim=-1)
    best_chunks = values[:, :whole].view(rows, whole // chunk, chunk).amax(dim=-1).topk(k, dim=-1).indices  # (rows, k)
    columns = (best_chunks.unsqueeze(-1) * chunk + torch.arange(chunk, device=values.device)).view(rows, k * chunk)
    if whole < n:
        columns = torch.cat([columns, torch.arange(whole, n, device=values.device).expand(rows, -1)], dim=1)
    top, position = values.gather(1, columns).topk(k, dim=-1)
    return top, columns.gather(1, position)


def best_continuations(log_probs, running_scores, beams_to_keep: int):
    """The top `beams_to_keep` continuations of each image: `log_probs` `(images × beams, vocab)` of the rows of
    images still decoded, `running_scores` `(images, beams)` their beams' scores. Returns their accumulated scores,
    beams and tokens, each `(images, beams_to_keep)`, best first."""
    images, beams = running_scores.shape
    per_beam = min(beams_to_keep, log_probs.shape[-1])
    beam_log_probs, beam_tokens = top_k_per_row(log_probs, per_beam)  # (images × beams, per_beam)
    scores = (beam_log_probs + running_scores.reshape(-1, 1)).view(images, beams * per_beam)
    top_scores, top = scores.topk(beams_to_keep, dim=-1)  # (images, beams_to_keep)
    tokens = beam_tokens.view(images, beams * per_beam).gather(1, top)
    return top_scores, top // per_beam, tokens


def beam_search(model, input_ids, stopping_criteria, generation_config, **model_kwargs):
    """`GenerationMixin._beam_search` for the calls `beam_search_handles` accepts: `input_ids` `(images × beams, prompt)`;
    returns the sequences (or a `GenerateBeamDecoderOnlyOutput` with `return_dict_in_generate`) it returns."""
    config = generation_config
    beams, max_length, early_stopping, length_penalty = config.num_beams, config.max_length, config.early_stopping, config.length_penalty
    rows, prompt_length = input_ids.shape
    images, device = rows // beams, input_ids.device
    eos = config._eos_token_tensor
    beams_to_keep = max(2, 1 + (eos.numel() if eos is not None else 0)) * beams
    # Only the best `beams` of the candidates may become finished captions; the others keep beams running.
    among_best = torch.arange(beams_to_keep, device=device) < beams
    image_offsets = torch.arange(images, device=device).view(-1, 1) * beams

    running_sequences = torch.full((images, beams, max_length), fill_value(config), dtype=torch.long, device=device)
    running_sequences[:, :, :prompt_length] = input_ids.view(images, beams, prompt_length)
    sequences = running_sequences.clone()
    running_scores = torch.zeros(images, beams, device=device)
    running_scores[:, 1:] = _NEVER  # the beams start equal: only the first one's continuations count
    scores = torch.full((images, beams), _NEVER, device=device)
    finished = torch.zeros(images, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(images, 1, dtype=torch.bool, device=device)
    running_beam_indices = torch.full((images, beams, max_length - prompt_length), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    # A fixed image's placeholder candidates: its own beams in turn, continued by the fill value, scored "never".
    placeholder_beams = (torch.arange(beams_to_keep, device=device) % beams).repeat(images, 1)

    outputs = model(**model.prepare_inputs_for_generation(input_ids, **model_kwargs), return_dict=True)
    state, logits = outputs.cache, outputs.logits[:, -1]
    del outputs
    decoded = torch.ones(images, dtype=torch.bool, device=device)  # the images whose rows `logits` holds
    cur_len = prompt_length
    while True:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        top_scores, top_beams, top_tokens = best_continuations(log_probs, running_scores[decoded], beams_to_keep)
        candidate_scores = top_scores.new_full((images, beams_to_keep), _NEVER).index_put_((decoded,), top_scores)
        candidate_beams = placeholder_beams.clone().index_put_((decoded,), top_beams)
        candidate_sequences = model._gather_beams(running_sequences, candidate_beams)
        candidate_sequences[decoded, :, cur_len] = top_tokens
        candidate_beam_indices = model._gather_beams(running_beam_indices, candidate_beams)
        candidate_beam_indices[:, :, cur_len - prompt_length] = (candidate_beams + image_offsets).to(torch.int32)

        ends = stopping_criteria(model._flatten_beam_dim(candidate_sequences[:, :, : cur_len + 1]), None).view(images, beams_to_keep)
        ends &= decoded[:, None]  # a placeholder never ends the search; the length limit does, below
        running_sequences, running_scores, running_beam_indices = model._get_running_beams_for_next_iteration(
            topk_log_probs=candidate_scores, topk_running_sequences=candidate_sequences,
            topk_running_beam_indices=candidate_beam_indices, next_token_hits_stopping_criteria=ends, num_beams=beams)
        sequences, scores, beam_indices, finished = model._update_finished_beams(
            sequences=sequences, topk_running_sequences=candidate_sequences, beam_scores=scores,
            topk_log_probs=candidate_scores, beam_indices=beam_indices, topk_running_beam_indices=candidate_beam_indices,
            is_early_stop_heuristic_unsatisfied=improvable, is_sent_finished=finished,
            next_token_hits_stopping_criteria=ends, top_num_beam_mask=among_best, num_beams=beams, cur_len=cur_len,
            decoder_prompt_len=prompt_length, length_penalty=length_penalty, early_stopping=early_stopping)
        state.reorder_cache(model._flatten_beam_dim(running_beam_indices[..., cur_len - prompt_length]).long())
        cur_len += 1
        improvable = GenerationMixin._check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied=improvable, running_beam_scores=running_scores, beam_scores=scores,
            is_sent_finished=finished, cur_len=cur_len, max_length=max_length, decoder_prompt_len=prompt_length,
            early_stopping=early_stopping, length_penalty=length_penalty)
        searching = GenerationMixin._beam_search_has_unfinished_sequences(improvable, finished, ends, early_stopping)
        if not searching or cur_len >= max_length:
            break
        decoded = improvable.view(-1)
        tokens = model._flatten_beam_dim(running_sequences[:, :, cur_len - 1])
        hidden, _ = model._step_images(tokens, state, decoded)  # (decoded images × beams, hidden)
        logits = model.next_token_logits(hidden)

    # transformers' output: the best `num_return_sequences` finished captions of each image, cut to the longest.
    returned = config.num_return_sequences
    sequences = model._flatten_beam_dim(sequences[:, :returned])
    beam_indices = model._flatten_beam_dim(beam_indices[:, :returned])
    generated_length = int((beam_indices + 1).bool().sum(dim=1).max())
    sequences, beam_indices = sequences[:, : prompt_length + generated_length], beam_indices[:, :generated_length]
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(sequences=sequences, sequences_scores=None, beam_indices=beam_indices, **{_CACHE_FIELD: state})
