"""The model: teacher-forced == step-by-step, exact beam search, frozen encoder, input validation."""

import itertools

import pytest
import torch

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration

from conftest import tiny_config, tiny_model, tiny_processor

PAD, BOS, EOS = 0, 101, 102


def ragged_batch(vocab_size=30522, seed=0):
    """Three right-padded captions of different lengths, with labels = input_ids, padding -100."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        words = torch.randint(1000, vocab_size, (length - 2,), generator=generator)
        ids[row, :length] = torch.cat([torch.tensor([BOS]), words, torch.tensor([EOS])])
    mask = (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
    return ids, mask, ids.masked_fill(mask == 0, -100)


def test_config_round_trips_through_config_json(tmp_path):
    config = ShowAttendTellConfig(hidden_size=256, attention_regularization=0.5, freeze_encoder=False)
    config.save_pretrained(tmp_path)
    loaded = ShowAttendTellConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.encoder_config.depths == [3, 8, 36, 3]
    assert loaded.encoder_config.layer_type == "bottleneck"
    assert loaded.encoder_hidden_size == 2048
    default = ShowAttendTellConfig()
    assert (default.embedding_size, default.attention_size, default.hidden_size, default.dropout) == (512, 512, 512, 0.5)
    assert (default.pad_token_id, default.bos_token_id, default.eos_token_id) == (0, 101, 102)
    assert default.freeze_encoder and default.attention_regularization == 1.0


def test_default_model_is_resnet152():
    with torch.device("meta"):
        model = ShowAttendTellForConditionalGeneration(ShowAttendTellConfig())
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    assert 58.0e6 < encoder_params < 58.2e6  # ResNet-152 without the classifier: 58.1 M


def test_teacher_forced_logits_equal_step_by_step_decoding():
    model = tiny_model()
    ids, mask, labels = ragged_batch()
    pixels = torch.randn(3, 3, 64, 64)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)

    features = model.get_image_features(pixels)
    state, step_logits, step_alphas = None, [], []
    for position in range(ids.shape[1]):
        step = model(
            input_ids=ids[:, position : position + 1],
            encoder_hidden_states=features if state is None else None,
            past_key_values=state,
            use_cache=True,
            output_attentions=True,
        )
        state = step.past_key_values
        step_logits.append(step.logits[:, 0])
        step_alphas.append(step.attentions[:, 0])
    step_logits, step_alphas = torch.stack(step_logits, 1), torch.stack(step_alphas, 1)

    real = mask.bool()
    torch.testing.assert_close(out.logits[real], step_logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.attentions[real], step_alphas[real], rtol=1e-5, atol=1e-6)
    assert (out.logits[~real] == 0).all()  # padding is never computed

    # The loss is cross-entropy of the real next tokens, from the step-by-step logits.
    expected_ce = torch.nn.functional.cross_entropy(step_logits[:, :-1][real[:, 1:]], ids[:, 1:][real[:, 1:]])
    torch.testing.assert_close(out.caption_loss, expected_ce, rtol=1e-5, atol=1e-6)
    # Doubly stochastic term: per caption, attention summed over the positions that predict a real token.
    scored = torch.zeros_like(real)
    scored[:, :-1] = real[:, 1:]
    per_region = (step_alphas * scored[..., None]).sum(1)
    torch.testing.assert_close(out.attention_loss, ((1 - per_region) ** 2).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.caption_loss + out.attention_loss)


def step_by_step_loss(model, features, ids, mask):
    """The training loss computed the slow, obviously right way: the cached forward (`step`) at every position."""
    state, logits, alphas = None, [], []
    for position in range(ids.shape[1]):
        step = model(input_ids=ids[:, position : position + 1], encoder_hidden_states=features if state is None else None,
                     past_key_values=state, use_cache=True, output_attentions=True)
        state = step.past_key_values
        logits.append(step.logits[:, 0])
        alphas.append(step.attentions[:, 0])
    logits, alphas = torch.stack(logits, 1), torch.stack(alphas, 1)
    scored = torch.zeros_like(mask, dtype=torch.bool)
    scored[:, :-1] = mask[:, 1:].bool()
    caption_loss = torch.nn.functional.cross_entropy(logits[scored], ids[:, 1:][mask[:, 1:].bool()])
    attention_loss = ((1 - (alphas * scored[..., None]).sum(1)) ** 2).mean()
    return caption_loss + model.config.attention_regularization * attention_loss


def assert_training_forward_matches_step_by_step(model, return_logits=False) -> dict:
    """Loss and every trainable parameter's gradient of the training forward equal those of `step_by_step_loss`.
    Returns the training forward's gradients by parameter name."""
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64)
    fast = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, return_logits=return_logits)
    fast.loss.backward()
    fast_grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(grad is not None for name, grad in fast_grads.items() if not name.startswith("encoder.")), fast_grads.keys()
    model.zero_grad()
    reference = step_by_step_loss(model, features, ids, mask)
    torch.testing.assert_close(fast.loss, reference, rtol=1e-5, atol=1e-6)
    reference.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(fast_grads[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
        else:
            assert parameter.grad is None, name
    return fast_grads


@pytest.mark.parametrize("frozen", [(), ("attention.encoder_proj",), ("lstm",), ("context_gate", "attention.decoder_proj"),
                                    ("embed_tokens", "lm_head")], ids=lambda frozen: "+".join(frozen) or "nothing")
def test_fast_training_path_has_the_gradients_of_step_by_step_decoding(frozen):
    """The training forward (fused projections, shrinking batch, deferred weight gradients) must give the same
    gradient as the plain reference step, for every trainable parameter, whichever decoder layers a user freezes."""
    model = tiny_model(dropout=0.0).train()
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    assert_training_forward_matches_step_by_step(model)


@pytest.mark.parametrize("through_blas", [True, False], ids=["blas input grads", "onednn input grads"])
def test_either_kernel_for_the_recurrences_input_gradients_gives_the_step_by_step_gradients(monkeypatch, through_blas):
    """The kernel picks BLAS or oneDNN for the per-step input gradients by CPU; both must give the same gradients,
    whichever machine runs the tests."""
    from hf_imgcap.models.show_attend_tell import fused_teacher_forcing

    monkeypatch.setattr(fused_teacher_forcing, "_mkl_fast_paths", lambda: through_blas)
    assert_training_forward_matches_step_by_step(tiny_model(dropout=0.0).train())


class LowRankAdapter(torch.nn.Module):
    """A frozen layer plus a trainable low-rank update, as a PEFT LoRA adapter wraps a linear layer."""

    def __init__(self, base, rank=2):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.up.weight, std=0.5)  # LoRA starts at zero; non-zero here, so that it shows

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def halve_hidden_state(module, args, output):
    hidden, cell = output
    return hidden * 0.5, cell


@pytest.mark.parametrize("change", ["adapter on attention.decoder_proj", "adapter on context_gate", "adapter on lm_head",
                                    "hook on lstm", "hook on attention", "backward hook on context_gate",
                                    "global hook on context_gate", "global pre-hook on lm_head",
                                    "patched forward on attention.decoder_proj"])
@pytest.mark.parametrize("return_logits", [False, True])
def test_wrapped_or_hooked_decoder_layers_train_as_themselves(change, return_logits):
    """A user's adapters (e.g. PEFT's LoRA) and hooks on the decoder's layers (the layer's own or torch's global
    module hooks, forward or backward) are part of the model that trains: the training forward must run them, not
    read the wrapped weights by name, and give their gradients."""
    model = tiny_model(dropout=0.0).train()
    torch.manual_seed(0)  # the same features in both calls
    unchanged = assert_training_forward_matches_step_by_step(model, return_logits=return_logits)
    model.zero_grad()
    what, name = change.split(" on ")
    layer = model.get_submodule(name)
    handles = []
    if what == "adapter":
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, LowRankAdapter(layer))
    elif what == "hook" and name == "lstm":
        handles.append(layer.register_forward_hook(halve_hidden_state))
    elif what == "hook":
        handles.append(layer.register_forward_hook(lambda module, args, output: (output[0] * 2.0, output[1])))
    elif what == "backward hook":
        handles.append(layer.register_full_backward_hook(lambda module, grad_input, grad_output: (grad_input[0] * 0.5,)))
    elif what == "patched forward":  # as accelerate's add_hook_to_module does
        original_forward = layer.forward
        layer.forward = lambda x: original_forward(x) * 0.5
    elif what == "global hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: output * 0.5 if module is layer else None))
    else:
        handles.append(torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: (args[0] * 3.0,) if module is layer else None))
    try:
        torch.manual_seed(0)
        changed = assert_training_forward_matches_step_by_step(model, return_logits=return_logits)
        assert any(not torch.allclose(changed[name], grad) for name, grad in unchanged.items() if name in changed)
    finally:
        for handle in handles:
            handle.remove()


def test_loss_does_not_depend_on_padding_and_skipping_logits_changes_nothing():
    model = tiny_model()
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64)
    base = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels)
    pad = torch.zeros(3, 4, dtype=torch.long)
    padded = model(
        encoder_hidden_states=features,
        input_ids=torch.cat([ids, pad], 1),
        attention_mask=torch.cat([mask, pad], 1),
        labels=torch.cat([labels, pad - 100], 1),
    )
    lean = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, return_logits=False)
    torch.testing.assert_close(padded.loss, base.loss)
    torch.testing.assert_close(lean.loss, base.loss)
    assert lean.logits is None


def test_the_cached_path_computes_the_training_loss():
    """One loss for every path: the cached path has the attention regulariser and the global counts too (same loss,
    caption_loss and attention_loss with and without the cache, with and without global counts)."""
    model = tiny_model(attention_regularization=0.7)
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64)
    for counts in ({}, {"num_items_in_batch": 23, "num_captions_in_batch": 5}):
        paths = [
            model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, **counts),
            model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, return_logits=False, **counts),
            model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, use_cache=True, **counts),
        ]
        for out in paths[1:]:
            for name in ("loss", "caption_loss", "attention_loss"):
                torch.testing.assert_close(out[name], paths[0][name], rtol=1e-5, atol=1e-6, msg=f"{name} {counts}")
        torch.testing.assert_close(paths[2].loss, paths[2].caption_loss + 0.7 * paths[2].attention_loss)
    with pytest.raises(ValueError, match="whole caption"):
        model(input_ids=ids[:, 1:], labels=labels[:, 1:], past_key_values=paths[2].past_key_values, use_cache=True)


@pytest.mark.parametrize("use_cache", [False, True])
def test_micro_batches_add_up_to_the_full_batch_loss_and_gradients(use_cache):
    """Gradient accumulation or N processes: each part divides by the global counts (tokens for the caption loss,
    captions for the attention regulariser), so the parts' losses and gradients add up to the full batch's."""
    model = tiny_model(attention_regularization=1.0, dropout=0.0).train()
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64)

    def loss_and_grads(rows, **counts):
        model.zero_grad()
        loss = model(encoder_hidden_states=features[rows], input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows],
                     return_logits=False, use_cache=use_cache, **counts).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full_loss, full_grads = loss_and_grads(slice(None))
    counts = {"num_items_in_batch": int((labels[:, 1:] != -100).sum()), "num_captions_in_batch": 3}
    parts = [loss_and_grads(slice(0, 2), **counts), loss_and_grads(slice(2, 3), **counts)]  # unequal micro-batches
    torch.testing.assert_close(parts[0][0] + parts[1][0], full_loss, rtol=1e-5, atol=1e-6)
    for name, grad in full_grads.items():
        torch.testing.assert_close(parts[0][1][name] + parts[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_features_of_any_scale_give_the_same_outputs():
    """Random-init ResNet-152 features are ~1e7 times larger than pretrained ones: the decoder must not care."""
    model = tiny_model()
    ids, mask, labels = ragged_batch()
    features = torch.rand(3, 4, 64)
    small = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels)
    huge = model(encoder_hidden_states=features * 6e7, input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(huge.logits, small.logits, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(huge.loss)


@pytest.mark.slow
def test_learns_from_random_resnet152_features():
    """The real ResNet-152 architecture with random weights (features ~1e7): a decoder still fits captions to images."""
    torch.manual_seed(0)
    config = ShowAttendTellConfig(vocab_size=40, embedding_size=32, attention_size=32, hidden_size=32, dropout=0.0,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, image_size=64)
    model = ShowAttendTellForConditionalGeneration(config)
    pixels = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        raw = model.encoder(pixels).last_hidden_state
        features = model.get_image_features(pixels)
    assert raw.abs().mean() > 1e4  # the scale problem is real...
    assert torch.isfinite(features).all() and features.abs().max() < 100
    flat = features.flatten(1)
    assert torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0) > 0.99  # ...and so is the shared part
    centered = features - features.mean(0)
    model.set_feature_statistics(features.mean(0), centered.pow(2).mean().sqrt())
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 10, 2], [1, 11, 12, 13, 2], [1, 14, 15, 16, 2]])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(300):
        loss = model(encoder_hidden_states=features, input_ids=ids, labels=ids).caption_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    model.eval()
    generated = model.generate(encoder_hidden_states=features, max_new_tokens=5)
    assert torch.equal(generated, ids)  # each image gets its own caption back


def test_frozen_encoder_stays_frozen_through_training():
    model = tiny_model()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = model.lm_head.weight.clone()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.lstm.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    ids, mask, labels = ragged_batch()
    for _ in range(5):
        loss = model(pixel_values=torch.randn(3, 3, 64, 64) * 3 + 1, input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key  # weights and BatchNorm running stats
    assert not torch.equal(model.lm_head.weight, decoder_before)


def test_unfrozen_encoder_trains():
    model = tiny_model(freeze_encoder=False)
    model.train()
    assert model.encoder.training
    ids, mask, labels = ragged_batch()
    loss = model(pixel_values=torch.randn(3, 3, 64, 64), input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert model.encoder.embedder.embedder.convolution.weight.grad is not None


@pytest.mark.parametrize("whiten", [False, True])
def test_image_embeds_from_standardize_features_give_what_the_features_give(whiten):
    """Standardising (and whitening) each image once, then passing `image_embeds`, is the same model as passing the
    features: same loss, logits, attentions and gradients, also with several captions per image."""
    model = tiny_model(whiten_features=whiten, dropout=0.0).train()
    ids, mask, labels = ragged_batch()
    for features in (torch.rand(3, 4, 64), torch.rand(1, 4, 64)):  # one image per caption / three captions of one image
        outputs = []
        for images in ({"encoder_hidden_states": features}, {"image_embeds": model.standardize_features(features)}):
            model.zero_grad()
            out = model(**images, input_ids=ids, attention_mask=mask, labels=labels, output_attentions=True)
            out.loss.backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
            outputs.append((out, grads))
        (by_features, grads_by_features), (by_embeds, grads_by_embeds) = outputs
        for name in ("loss", "caption_loss", "attention_loss", "logits", "attentions"):
            torch.testing.assert_close(by_embeds[name], by_features[name], rtol=1e-6, atol=1e-7, msg=name)
        for name, grad in grads_by_features.items():
            torch.testing.assert_close(grads_by_embeds[name], grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("whiten", [False, True])
def test_generate_from_image_embeds_equals_generate_from_the_features(whiten):
    model = tiny_model(whiten_features=whiten)
    features = torch.rand(2, 4, 64)
    for options in ({}, {"num_beams": 3, "num_return_sequences": 2}):
        by_features = model.generate(encoder_hidden_states=features, max_new_tokens=6, output_attentions=True,
                                     return_dict_in_generate=True, **options)
        by_embeds = model.generate(image_embeds=model.standardize_features(features), max_new_tokens=6,
                                   output_attentions=True, return_dict_in_generate=True, **options)
        assert torch.equal(by_embeds.sequences, by_features.sequences)
        torch.testing.assert_close(by_embeds.attentions, by_features.attentions, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("given", [("pixel_values", "encoder_hidden_states"), ("pixel_values", "image_embeds"),
                                   ("encoder_hidden_states", "image_embeds")])
def test_images_given_two_ways_are_refused_naming_both(given):
    model = tiny_model()
    images = {"pixel_values": torch.randn(1, 3, 64, 64), "encoder_hidden_states": torch.rand(1, 4, 64),
              "image_embeds": torch.rand(1, 4, 64)}
    inputs = {name: images[name] for name in given}
    message = f"{given[0]} and {given[1]} were both given"
    with pytest.raises(ValueError, match=message):
        model(**inputs, input_ids=torch.tensor([[BOS, 5]]))
    with pytest.raises(ValueError, match=message):
        model.generate(**inputs, max_new_tokens=2)


@pytest.mark.parametrize("image_embeds, message", [
    (torch.rand(1, 5, 64), "image_embeds has 5 regions; this model expects 4"),
    (torch.rand(1, 4, 32), r"image_embeds \(1, 4, 32\): last dimension must be the encoder's 64 channels"),
    (torch.rand(1, 64, 2, 2), r"image_embeds must be \(batch, regions, 64\) features, got \(1, 64, 2, 2\)"),
])
def test_image_embeds_of_the_wrong_shape_are_refused_naming_them(image_embeds, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(image_embeds=image_embeds, input_ids=torch.tensor([[BOS, 5]]))
    with pytest.raises(ValueError, match=message.replace("image_embeds", "features")):
        tiny_model().standardize_features(image_embeds)


# ---------------------------------------------------------------------------------------------- generation
def tiny_vocab_model(seed=3):
    """Vocabulary of 5 (pad, start, end, two words): small enough to enumerate every caption."""
    return tiny_model(seed=seed, vocab_size=5, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def brute_force_captions(model, features, max_new_tokens, length_penalty):
    """Every caption of up to max_new_tokens tokens (ended by the end token or by the length limit), with
    beam search's score: sum of log-probabilities / length ** length_penalty."""
    vocab, eos = model.config.vocab_size, model.config.eos_token_id
    results = []
    for length in range(1, max_new_tokens + 1):
        for words in itertools.product(range(vocab), repeat=length):
            if eos in words[:-1] or (length < max_new_tokens and words[-1] != eos):
                continue
            ids = torch.tensor([[1, *words]])
            prefix = ids[:, :-1]
            logits = model(encoder_hidden_states=features, input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits
            logprob = torch.log_softmax(logits[0], -1).gather(1, ids[0, 1:, None]).sum().item()
            results.append((logprob / length**length_penalty, words))
    return sorted(results, reverse=True)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_equals_brute_force_enumeration(length_penalty):
    model = tiny_vocab_model()
    features = torch.randn(1, 4, 64)
    steps, vocab = 3, 5
    out = model.generate(
        encoder_hidden_states=features,
        max_new_tokens=steps,
        num_beams=vocab ** (steps - 1),
        num_return_sequences=6,
        length_penalty=length_penalty,
        early_stopping="never",
        output_scores=True,
        return_dict_in_generate=True,
    )
    expected = brute_force_captions(model, features, steps, length_penalty)[:6]
    for row, (score, words) in enumerate(expected):
        got = out.sequences[row, 1 : 1 + len(words)].tolist()
        assert got == list(words), (row, got, words)
        assert out.sequences_scores[row].item() == pytest.approx(score, abs=1e-5)


def test_greedy_generation_follows_the_teacher_forced_argmax():
    model = tiny_model()
    features = torch.randn(3, 4, 64)
    generated = model.generate(encoder_hidden_states=features, max_new_tokens=6, do_sample=False)
    for row in range(3):
        ids = torch.tensor([[BOS]])
        while ids.shape[1] < generated.shape[1] and ids[0, -1] != EOS:
            logits = model(encoder_hidden_states=features[row : row + 1], input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert generated[row, : ids.shape[1]].tolist() == ids[0].tolist()


def test_greedy_equals_one_beam_and_shapes():
    model = tiny_model()
    pixels = torch.randn(3, 3, 64, 64)
    greedy = model.generate(pixel_values=pixels, max_new_tokens=6, do_sample=False)
    one_beam = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=1)
    assert torch.equal(greedy, one_beam)
    assert greedy.shape[0] == 3 and greedy.shape[1] <= 7 and (greedy[:, 0] == BOS).all()
    beams = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=4, num_return_sequences=3)
    assert beams.shape[0] == 9
    torch.manual_seed(0)
    sampled = model.generate(pixel_values=pixels, max_new_tokens=6, do_sample=True, top_k=50, num_return_sequences=2)
    torch.manual_seed(0)
    again = model.generate(pixel_values=pixels, max_new_tokens=6, do_sample=True, top_k=50, num_return_sequences=2)
    assert sampled.shape[0] == 6 and torch.equal(sampled, again)


def test_generate_encodes_each_image_once_and_features_give_the_same_captions():
    model = tiny_model()
    pixels = torch.randn(2, 3, 64, 64)
    encoded = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    from_pixels = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=5, num_return_sequences=2)
    hook.remove()
    assert encoded == [2]  # once per image, not once per beam or per step
    from_features = model.generate(
        encoder_hidden_states=model.get_image_features(pixels), max_new_tokens=6, num_beams=5, num_return_sequences=2
    )
    assert torch.equal(from_pixels, from_features)


def prompt_images(count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 255, (70, 80, 3), dtype=torch.uint8, generator=generator).numpy() for _ in range(count)]


def generated_part(sequences, prompt_length):
    """Each row's tokens after the prompt, without trailing padding."""
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        while row and row[-1] == PAD:
            row.pop()
        rows.append(row)
    return rows


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}])
def test_a_prompt_from_the_processor_is_continued(options):
    """The processor ends a text with [SEP]; generation continues the prompt instead of starting after a caption
    that has ended: the same as generating from [CLS] + the prompt's words."""
    model, processor = tiny_model(), tiny_processor()
    inputs = processor(images=prompt_images(1), text="a dog")
    words = processor.tokenizer("a dog", add_special_tokens=False).input_ids
    assert inputs.input_ids[0].tolist() == [BOS, *words, EOS]  # what the processor gives
    out = model.generate(**inputs, max_new_tokens=5, **options)
    expected = model.generate(pixel_values=inputs.pixel_values, input_ids=torch.tensor([[BOS, *words]]), max_new_tokens=5, **options)
    assert out.tolist() == expected.tolist()
    assert out[0, : len(words) + 1].tolist() == [BOS, *words] and out.shape[1] > len(words) + 1
    assert processor.batch_decode(out)[0].startswith("a dog")


@pytest.mark.parametrize("options", [{}, {"num_beams": 3, "num_return_sequences": 2}])
def test_a_batch_of_prompts_equals_each_prompt_alone(options):
    """In a batch, prompts of different lengths are padded; each row's output equals generating that prompt alone
    (generation never continues after [PAD])."""
    model, processor = tiny_model(), tiny_processor()
    images, texts = prompt_images(3), ["a dog", "two men in a red boat", "a"]
    batch = processor(images=images, text=texts)
    out = model.generate(**batch, max_new_tokens=6, **options)
    per_image = out.shape[0] // len(texts)
    batch_prompt_length = max(len(processor.tokenizer(t).input_ids) for t in texts) - 1  # without [SEP]
    for index, (image, text) in enumerate(zip(images, texts)):
        alone = model.generate(**processor(images=[image], text=[text]), max_new_tokens=6, **options)
        rows = out[index * per_image : (index + 1) * per_image]
        assert processor.batch_decode(rows) == processor.batch_decode(alone), text
        prompt_length = len(processor.tokenizer(text).input_ids) - 1
        assert generated_part(rows, batch_prompt_length) == generated_part(alone, prompt_length), text


def test_generate_returns_attention_of_the_chosen_tokens():
    model = tiny_model()
    features = torch.randn(2, 4, 64)
    for options in ({}, {"num_beams": 3, "num_return_sequences": 2}):
        out = model.generate(
            encoder_hidden_states=features, max_new_tokens=5, output_attentions=True, return_dict_in_generate=True, **options
        )
        sequences, attentions = out.sequences, out.attentions
        assert attentions.shape == (sequences.shape[0], sequences.shape[1] - 1, 4)
        # Replay each chosen sequence step by step: the attention behind every generated token must match.
        per_image = sequences.shape[0] // 2
        for row in range(sequences.shape[0]):
            state = None
            for position in range(sequences.shape[1] - 1):
                step = model(
                    input_ids=sequences[row : row + 1, position : position + 1],
                    encoder_hidden_states=features[row // per_image : row // per_image + 1] if state is None else None,
                    past_key_values=state,
                    use_cache=True,
                    output_attentions=True,
                )
                state = step.past_key_values
                if sequences[row, 1 : position + 1].eq(EOS).any():
                    assert attentions[row, position].abs().sum() == 0  # after the end
                else:
                    torch.testing.assert_close(attentions[row, position], step.attentions[0, 0], rtol=1e-5, atol=1e-6)
                    assert attentions[row, position].sum().item() == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.tensor([[BOS, 5]])), "No image given"),
        (dict(pixel_values=torch.randn(1, 1, 64, 64), input_ids=torch.tensor([[BOS, 5]])), "1 channels"),
        (dict(pixel_values=torch.randn(3, 64, 64), input_ids=torch.tensor([[BOS, 5]])), "pixel_values must be"),
        (dict(pixel_values=torch.randn(0, 3, 64, 64), input_ids=torch.zeros(0, 2, dtype=torch.long)), "non-empty"),
        (dict(encoder_hidden_states=torch.randn(0, 4, 64), input_ids=torch.tensor([[BOS]])), "empty batch"),
        (dict(encoder_hidden_states=torch.randn(1, 4, 64), input_ids=torch.tensor([[BOS, 40000]])), "40000 outside the vocabulary"),
        (dict(encoder_hidden_states=torch.randn(1, 4, 64), input_ids=torch.tensor([[BOS, -3]])), "-3 outside the vocabulary"),
        (dict(encoder_hidden_states=torch.randn(1, 4, 32), input_ids=torch.tensor([[BOS]])), "64 channels"),
        (dict(encoder_hidden_states=torch.randn(2, 4, 64), input_ids=torch.tensor([[BOS]])), "2 images but 1 captions"),
        (
            dict(encoder_hidden_states=torch.randn(1, 4, 64), input_ids=torch.tensor([[BOS, 5, 6]]), attention_mask=torch.tensor([[1, 0, 1]])),
            "right-padded",
        ),
    ],
)
def test_wrong_inputs_raise_a_clear_value_error(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "No image given"),
        (dict(pixel_values=torch.randn(0, 3, 64, 64)), "empty batch"),
        (dict(pixel_values=torch.randn(2, 4, 64, 64)), "4 channels"),
        (dict(encoder_hidden_states=torch.randn(1, 4, 64), input_ids=torch.tensor([[99999]])), "outside the vocabulary"),
    ],
)
def test_generate_rejects_wrong_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(max_new_tokens=3, **kwargs)


def test_added_tokens_resize_the_input_and_output_embeddings(tmp_path):
    """A user adding words to the vocabulary (tokenizer.add_tokens + model.resize_token_embeddings, the usual
    transformers recipe) gets an embedding and an output layer of the new size that train, generate, save and load."""
    model = tiny_model()
    old_vocab = model.config.vocab_size
    model.resize_token_embeddings(old_vocab + 3, mean_resizing=False)
    assert model.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0] == model.config.vocab_size == old_vocab + 3
    features = torch.randn(2, model.config.num_regions, model.config.encoder_hidden_size)
    ids = torch.tensor([[101, old_vocab + 2, 102], [101, old_vocab, 102]])  # the new tokens as targets
    outputs = model(encoder_hidden_states=features, input_ids=ids, labels=ids)
    assert outputs.logits.shape[-1] == old_vocab + 3 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert model.lm_head.weight.grad[old_vocab:].abs().sum() > 0  # the new rows learn
    model.save_pretrained(tmp_path)
    reloaded = ShowAttendTellForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.generate(encoder_hidden_states=features, max_new_tokens=4),
                               model.eval().generate(encoder_hidden_states=features, max_new_tokens=4))


def test_per_channel_standardisation_gives_every_channel_unit_spread_and_floors_dead_channels():
    """`set_feature_statistics(mean, std)` with a per-channel std: the decoder's input has mean 0 and spread 1 in
    every channel that varies; a channel that never varies stays 0 and one that hardly varies is not blown up."""
    from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import normalize_features, standard_deviation

    model = tiny_model()
    regions, channels = model.feature_mean.shape
    torch.manual_seed(0)
    spread = torch.logspace(0, 1, channels)  # channels 10x apart in spread...
    features = 5 + torch.randn(400, regions, channels) * spread
    features[..., 0] = 0.0  # ...one that is never active (a dead ReLU)
    features[..., 1] = 1e-6 * torch.randn(400, regions)  # and one that varies by rounding noise only
    normalized = normalize_features(features)  # what the feature cache holds
    mean = normalized.mean(0)
    variance = normalized.var(0, unbiased=False)
    model.set_feature_statistics(mean, standard_deviation(variance, per="channel"))
    standardized = model.standardize_features(normalized)
    per_channel_std = standardized.std(dim=(0, 1))
    torch.testing.assert_close(per_channel_std[2:], torch.ones(channels - 2), rtol=0.1, atol=0)
    assert standardized[..., 0].abs().max() == 0
    assert standardized[..., 1].abs().max() < 1e-3  # floored: noise stays noise
    assert torch.isfinite(standardized).all()
    # With one global scale (the earlier standardisation) the channels keep their 10x differences.
    model.set_feature_statistics(mean, standard_deviation(variance, per="global"))
    globally = model.standardize_features(normalized).std(dim=(0, 1))
    assert globally[-1] / globally[2] > 8


def test_whitened_features_are_the_standardised_ones_times_the_matrix_and_survive_save_and_load(tmp_path):
    from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import normalize_features, whitening_matrix

    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(tiny_config(whiten_features=True)).eval()
    regions, channels = model.feature_mean.shape
    torch.manual_seed(1)
    mixing = torch.randn(channels, channels) / channels**0.5  # correlated channels
    features = torch.randn(50, regions, channels) @ mixing
    normalized = normalize_features(features)
    mean = normalized.mean(0)
    centered = (normalized - mean).flatten(0, 1).double()
    std = torch.full((channels,), 0.7)
    whitening = whitening_matrix(centered.T @ centered / len(centered), std)
    model.set_feature_statistics(mean, std, whitening)
    expected = ((normalized - mean) / 0.7) @ whitening
    torch.testing.assert_close(model.standardize_features(features), expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = ShowAttendTellForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.whiten_features and torch.equal(reloaded.feature_whitening, model.feature_whitening)
    torch.testing.assert_close(reloaded.generate(encoder_hidden_states=features[:2], max_new_tokens=4),
                               model.eval().generate(encoder_hidden_states=features[:2], max_new_tokens=4))


@pytest.mark.parametrize("whiten, whitening, message", [
    (True, None, "whiten_features is on: pass the whitening matrix"),
    (False, "identity", "whiten_features is off"),
    (True, "wrong shape", r"feature whitening must have shape"),
    (True, "nan", "feature whitening must be finite"),
])
def test_a_whitening_matrix_is_required_exactly_when_the_config_whitens(whiten, whitening, message):
    model = ShowAttendTellForConditionalGeneration(tiny_config(whiten_features=whiten))
    channels = model.feature_mean.shape[1]
    matrix = {None: None, "identity": torch.eye(channels), "wrong shape": torch.eye(channels + 1),
              "nan": torch.full((channels, channels), float("nan"))}[whitening]
    with pytest.raises(ValueError, match=message):
        model.set_feature_statistics(torch.zeros_like(model.feature_mean), 1.0, matrix)


@pytest.mark.parametrize("std, message", [
    (torch.ones(3), r"feature std must be a number or have shape \(channels,\)"),
    (0.0, "positive std"),
    (torch.tensor(float("nan")), "finite"),
])
def test_bad_feature_statistics_are_refused_naming_the_problem(std, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.set_feature_statistics(torch.zeros_like(model.feature_mean), std)


def test_pixel_values_of_another_size_than_the_models_images_are_refused_naming_both():
    """A 64-pixel model (a 2×2 region map) given 224-pixel images (7×7) gets a ValueError before encoding, from
    forward, generate and get_image_features alike, not a shape error from deep inside torch."""
    model = tiny_model()
    ids = torch.tensor([[101, 1037, 3899]])
    for call in (lambda px: model(pixel_values=px, input_ids=ids), lambda px: model.generate(pixel_values=px, max_new_tokens=2),
                 model.get_image_features):
        with pytest.raises(ValueError, match=r"224×224.*7×7 region map.*64×64.*2×2.*processor"):
            call(torch.randn(1, 3, 224, 224))
        with pytest.raises(ValueError, match=r"64×128.*2×4 region map"):
            call(torch.randn(1, 3, 64, 128))
    # Any size that gives the model's region map is what the encoder computes the same way: accepted.
    assert model.generate(pixel_values=torch.randn(1, 3, 60, 60), max_new_tokens=2).shape[0] == 1


def test_bf16_autocast_training_gives_the_fp32_gradients_to_bf16_precision():
    """The training kernel's hand-written backward passes follow autocast's dtypes (bf16 products, fp32 softmax)."""
    model = tiny_model(dropout=0.0).train()
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    gradients = {}
    for autocast in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, return_logits=False)
        out.loss.backward()
        gradients[autocast] = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    for name, exact in gradients[False].items():
        bf16 = gradients[True][name]
        assert bf16.dtype == exact.dtype == torch.float32, name
        assert (bf16 - exact).norm() <= 0.05 * exact.norm() + 1e-6, name


@pytest.mark.slow
def test_torch_compile_of_the_model_trains_with_the_eager_loss_and_gradients():
    """A user's `torch.compile(model)`: the training forward compiles (the CPU fast paths step aside while tracing)
    and gives the eager model's loss and gradients."""
    model = tiny_model(dropout=0.0).train()
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for run in (model, torch.compile(model)):
        model.zero_grad()
        loss = run(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_backpropagating_twice_through_a_retained_graph_doubles_the_gradients_or_says_why_not():
    model = tiny_model(dropout=0.0).train()
    ids, mask, labels = ragged_batch()
    features = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    inputs = dict(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=labels)
    model(**inputs).loss.backward()
    once = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    loss = model(**inputs).loss  # logits kept: the plain cross-entropy, any number of backward passes
    loss.backward(retain_graph=True)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, 2 * once[name], rtol=1e-5, atol=1e-7, msg=name)
    fused = model(**inputs, return_logits=False).loss
    fused.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagate once per forward.*return_logits=True"):
        fused.backward()
