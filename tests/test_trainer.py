"""transformers' Trainer / Seq2SeqTrainer recipes: labels-only batches, generation from the image only, activation
checkpointing, tuple outputs and hidden states, and a tiny model trained by `Trainer` as a user would write it."""

import pytest
import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.data.tokenizer_training import train_caption_tokenizer
from hf_imgcap import ShowAttendTellProcessor
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor
from hf_imgcap.evaluation.caption_metrics import compute_caption_metrics

from conftest import TINY_IMAGE_SIZE, tiny_model, tiny_processor


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = write_synthetic_flickr8k(tmp_path_factory.mktemp("trainer") / "ds", num_train=12, num_val=3, num_test=3, image_size=64, seed=5)
    dataset = load_caption_dataset(str(root))

    def to_pairs(batch):  # one row per (image, caption), the usual layout of a Trainer dataset
        return {"image": [image for image, captions in zip(batch["image"], batch["captions"]) for _ in captions],
                "caption": [caption for captions in batch["captions"] for caption in captions]}

    return {name: dataset[name].map(to_pairs, batched=True, remove_columns=dataset[name].column_names) for name in ("train", "validation")}


def small_vocabulary_captioner(splits):
    """A tiny model and a processor with a WordPiece vocabulary of the training captions (quick to learn)."""
    tokenizer = train_caption_tokenizer(splits["train"]["caption"], vocab_size=60)
    processor = ShowAttendTellProcessor(image_processor=default_image_processor(TINY_IMAGE_SIZE), tokenizer=tokenizer)
    # No attention regulariser: with the tiny encoder's 2×2 regions its floor, (1 - length/4)², would hide the caption loss.
    model = tiny_model(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                       eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.cls_token_id, attention_regularization=0.0)
    return model, processor


def collator(processor, labels_only=False):
    """A data collator built from the processor: pixel values and labels (input_ids with padding set to -100)."""
    def collate(examples):
        batch = processor(images=[example["image"] for example in examples], text=[example["caption"] for example in examples])
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        if labels_only:  # what a Seq2SeqTrainer recipe collates: the model builds its input from the labels
            del batch["input_ids"], batch["attention_mask"]
        return dict(batch)
    return collate


def a_batch(splits, processor, rows=4, labels_only=False):
    return collator(processor, labels_only)([splits["train"][i] for i in range(0, 5 * rows, 5)])


def test_a_labels_only_batch_builds_input_ids_from_the_labels(splits):
    model, processor = tiny_model(), tiny_processor()
    full, labels_only = a_batch(splits, processor), a_batch(splits, processor, labels_only=True)
    expected = model(**full)
    got = model(**labels_only)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    # Labels in the seq2seq convention (first word first, no start token): the start token is prepended, so every
    # word (and [SEP]) is scored after the same prefix as above: the same loss.
    seq2seq_labels = labels_only["labels"][:, 1:]
    assert (seq2seq_labels[:, 0] != model.config.bos_token_id).all()
    torch.testing.assert_close(model(pixel_values=labels_only["pixel_values"], labels=seq2seq_labels).loss, expected.loss)
    mixed = labels_only["labels"].clone()
    mixed[0, :-1] = seq2seq_labels[0]
    with pytest.raises(ValueError, match="rows \\[1, 2, 3\\] start with the start token"):
        model(pixel_values=labels_only["pixel_values"], labels=mixed)


def test_with_only_the_steps_token_count_as_trainer_passes_it_the_parts_of_a_step_add_up_to_its_loss(splits):
    """Trainer's gradient accumulation passes `num_items_in_batch` (the step's scored tokens) and sums the
    micro-batches' losses: both parts of the loss (the attention regulariser too) must then count once."""
    model, processor = tiny_model(attention_regularization=1.0), tiny_processor()
    batch = a_batch(splits, processor)
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    whole = model(**batch)
    half = model(**batch, num_items_in_batch=torch.tensor(2 * tokens))  # as if this were one of two equal micro-batches
    torch.testing.assert_close(2 * half.loss, whole.loss)
    torch.testing.assert_close(model(**batch, num_items_in_batch=tokens).loss, whole.loss)


def test_return_dict_false_gives_a_tuple_and_output_hidden_states_the_decoder_states(splits):
    model, processor = tiny_model(), tiny_processor()
    batch = a_batch(splits, processor)
    as_dict = model(**batch, output_hidden_states=True)
    as_tuple = model(**batch, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)  # loss first, as in transformers
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    (hidden,) = as_dict.hidden_states
    batch_size, seq_len = batch["input_ids"].shape
    assert hidden.shape == (batch_size, seq_len, model.config.hidden_size)
    real = batch["attention_mask"].bool()
    # The logits are the output layer on these states; the step-by-step path (generate's) gives the same states.
    torch.testing.assert_close(model.lm_head(hidden)[real], as_dict.logits[real], rtol=1e-5, atol=1e-5)
    stepwise = model(**batch, use_cache=True, output_hidden_states=True)
    torch.testing.assert_close(stepwise.hidden_states[0][real], hidden[real], rtol=1e-5, atol=1e-5)
    assert (hidden[~real] == 0).all()
    assert model(**batch).hidden_states is None and model(**batch, use_cache=True).hidden_states is None


def test_generate_with_a_training_batch_starts_from_the_image_not_after_the_reference(splits):
    """Seq2SeqTrainer(predict_with_generate=True) calls generate(**batch) with the labels (and the collator's
    input_ids, the reference captions) still in it."""
    model, processor = tiny_model(), tiny_processor()
    model.generation_config.max_new_tokens = 6
    batch = a_batch(splits, processor)
    from_image = model.generate(pixel_values=batch["pixel_values"])
    torch.testing.assert_close(model.generate(**batch), from_image, rtol=0, atol=0)
    torch.testing.assert_close(model.generate(**a_batch(splits, processor, labels_only=True)), from_image, rtol=0, atol=0)
    # A prompt without labels is still a prompt to continue.
    prompted = model.generate(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert prompted.shape[1] > from_image.shape[1]


def test_gradient_checkpointing_recomputes_the_trained_encoder_with_equal_gradients(splits):
    processor = tiny_processor()
    batch = a_batch(splits, processor, rows=2)

    def gradients(checkpointing):
        model = tiny_model(freeze_encoder=False).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # what TrainingArguments(gradient_checkpointing=True) calls
            assert model.is_activation_checkpointing
        calls = []
        model.encoder.encoder.stages[-1].register_forward_pre_hook(lambda *args: calls.append(1))
        model(**batch).loss.backward()
        return calls, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_calls, plain = gradients(False)
    checkpointed_calls, checkpointed = gradients(True)
    assert len(plain_calls) == 1 and len(checkpointed_calls) == 2  # the stage ran again in the backward pass
    assert any(name.startswith("encoder.") for name in checkpointed) and plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    # A frozen encoder: enabling it (as TrainingArguments(gradient_checkpointing=True) does) works and changes nothing.
    frozen = tiny_model().train()
    frozen.activation_checkpointing_enable()
    loss = frozen(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, tiny_model().train()(**batch).loss)


def test_trainer_trains_a_tiny_model_and_the_loss_goes_down(splits, tmp_path):
    model, processor = small_vocabulary_captioner(splits)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=10, learning_rate=3e-2, logging_steps=3,
        lr_scheduler_type="constant",
        remove_unused_columns=False, report_to="none", save_strategy="no", use_cpu=True, gradient_checkpointing=True,
        dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], data_collator=collator(processor))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses  # from about ln(60), a uniform guess
    captions = model.caption(splits["validation"][0]["image"], processor=processor, max_new_tokens=8)
    assert isinstance(captions, str) and captions.strip()


@pytest.mark.parametrize("labels_only", [True, False], ids=["labels-only batches", "input_ids and labels"])
def test_seq2seq_trainer_predicts_with_generate_from_the_image_and_scores_with_our_metrics(splits, tmp_path, labels_only):
    model, processor = small_vocabulary_captioner(splits)
    model.generation_config.max_new_tokens = 8

    def compute_metrics(prediction):
        predictions = processor.batch_decode(torch.as_tensor(prediction.predictions).clamp(min=0))
        references = processor.batch_decode(torch.as_tensor(prediction.label_ids).clamp(min=0))
        return compute_caption_metrics(predictions, [[reference] for reference in references], meteor=False)

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=10, per_device_eval_batch_size=8,
        learning_rate=2e-2, remove_unused_columns=False, report_to="none", save_strategy="no", use_cpu=True,
        predict_with_generate=True, seed=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["validation"],
                             data_collator=collator(processor, labels_only=labels_only), compute_metrics=compute_metrics)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    result = trainer.predict(splits["validation"])
    assert result.metrics["test_loss"] < before
    assert {"test_bleu_4", "test_cider", "test_rouge_l"} <= set(result.metrics)
    predictions = processor.batch_decode(torch.as_tensor(result.predictions).clamp(min=0))
    assert len(predictions) == len(splits["validation"]) and all(isinstance(text, str) for text in predictions)
    # What generate() writes from the images alone, not a continuation of the reference captions.
    pixel_values = processor(images=splits["validation"]["image"]).pixel_values
    assert predictions == processor.batch_decode(model.generate(pixel_values=pixel_values))
